"""The one exception type the CLI turns into a one-line message and exit code 2, and an argument parser that raises it."""

from __future__ import annotations

import argparse


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do.

    The CLI prints ``dstbench: error: <message>`` and exits with code 2,
    without a traceback and without writing a partial record.
    """


def check_sparsity(sparsity: float) -> float:
    """Return ``sparsity`` as a float, or raise UserError if it is outside [0, 1)."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise UserError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= value < 1.0:
        raise UserError(
            f"sparsity must be in [0, 1) (the fraction of weights removed), got {value}; "
            "for example 0.9 keeps 10% of the weights"
        )
    return value


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UserErrors (one line, exit code 2) instead of usage + exit.

    Every ``dstbench`` command parses with it; its sub-parsers are OneLineParsers too.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")
