"""Plain-text tables for terminal summaries, shared by the suites.

A table is a list of row dicts and a list of ``Column``s that say how to
turn a row into a cell string::

    print(format_table(rows, [Column("method", "method"), Column("p50 µs", lambda r: f"{r['p50_s'] * 1e6:.1f}")]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    """One column: its header, and a row key or a function row -> cell text.

    ``align`` is ">" (right, for numbers) or "<" (left, for names).
    """

    header: str
    value: str | Callable[[Row], str]
    align: str = "<"

    def cell(self, row: Row) -> str:
        if callable(self.value):
            return self.value(row)
        item = row.get(self.value)
        return "-" if item is None else str(item)


def fmt_ratio_ci(ratio: float | None, lo: float | None, hi: float | None) -> str:
    """A ratio with its interval, e.g. ``2.31x [2.20,2.45]``; "-" if the ratio is missing."""
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return "-"
    return f"{ratio:.2f}x [{lo:.2f},{hi:.2f}]"


def format_table(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    """The rows as aligned text: a header line, a rule, one line per row."""
    cells = [[col.cell(row) for col in columns] for row in rows]
    widths = [max([len(col.header)] + [len(line[i]) for line in cells]) for i, col in enumerate(columns)]

    def line(items: Sequence[str]) -> str:
        return "  ".join(f"{item:{col.align}{width}}" for item, col, width in zip(items, columns, widths)).rstrip()

    out = [line([col.header for col in columns]), line(["-" * w for w in widths])]
    out += [line(items) for items in cells]
    return "\n".join(out)
