"""Loading finished run folders for ``compare``, ``report`` and ``baseline``, with one-line errors for bad input.

A ``Run`` is a run folder's ``run.json`` (``meta``) and its rows. Loading
checks what the readers need: a folder written by ``dstbench run``, of a
known suite, with at least one row, whose rows carry the fields of their
suite. Every problem is a UserError naming the folder and what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dstbench import env as envinfo
from dstbench import records, registry
from dstbench.errors import UserError



@dataclass(frozen=True)
class Run:
    """One loaded run folder.

    Attributes:
        path: the folder.
        meta: its run.json (suite, config, env, started_at, finished_at).
        rows: its rows (one dict per recorded case), in recorded order.
    """

    path: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def suite(self) -> str:
        return self.meta["suite"]

    @property
    def env(self) -> dict[str, Any]:
        return self.meta.get("env") or {}

    @property
    def devices(self) -> set[str]:
        """The devices the rows ran on ("cpu", "cuda"); empty for suites that do not record it."""
        return {str(row["device"]) for row in self.rows if row.get("device")}


def load_run(path: Path | str) -> Run:
    """Read and check a finished run folder; UserError for a missing, foreign, empty or corrupt one."""
    path = Path(path)
    meta = records.read_meta(path)
    suite = meta["suite"]
    if suite not in registry.list_suites():
        raise UserError(f"{path} holds a run of unknown suite {suite!r}; dstbench reads "
                        f"{', '.join(registry.list_suites())} runs")
    required = registry.get_suite(suite).required
    rows = records.read_rows(path)
    if not rows:
        raise UserError(f"{path} has no recorded cases (empty {records.ROWS_FILE}); rerun 'dstbench run' into it to finish it")
    for lineno, row in enumerate(rows, start=1):
        missing = [key for key in required if key not in row]
        if missing:
            raise UserError(
                f"{path / records.ROWS_FILE} line {lineno} lacks {', '.join(missing)} for a {suite} row; "
                "it was not written by this dstbench version: rerun the suite into a new folder"
            )
    return Run(path, meta, rows)


def machine_class(run: Run) -> str:
    """What must match for two runs' speedups to be comparable (``dstbench.env.machine_class``).

    A run whose rows all ran on the CPU is classed by its CPU model even on a
    machine with a GPU, since the GPU played no part in its timings.
    """
    env = dict(run.env)
    if run.devices == {"cpu"}:
        env["gpu_name"] = None
    return envinfo.machine_class(env)


def short_machine(name: str) -> str:
    """A CPU/GPU model name without trademarks, 'CPU', clock or core-count noise.

    'Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz' -> 'Intel Xeon Platinum 8481C';
    'AMD EPYC 7B13 64-Core Processor' -> 'AMD EPYC 7B13'; 'NVIDIA H100 80GB HBM3' is kept.
    """
    text = re.sub(r"\((R|TM|tm|r)\)", "", name)
    text = re.sub(r"@.*$", "", text)
    text = re.sub(r"\b\d+-Core\b|\bProcessor\b|\bCPU\b", "", text)
    return re.sub(r"\s+", " ", text).strip() or name


def machine_label(run: Run) -> str:
    """A short label of where a run was measured, e.g. 'Intel Xeon Platinum 8481C, 2 threads' or 'NVIDIA H100'."""
    cls = machine_class(run)
    label = short_machine(cls)
    if cls != run.env.get("gpu_name") and run.env.get("threads"):  # a CPU class
        label += f", {run.env['threads']} threads"
    return label
