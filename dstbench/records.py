"""Run records: a folder with ``run.json`` (what, where, when) and ``rows.jsonl`` (one row per case).

Every write goes to a temporary file in the same folder and is moved into
place with ``os.replace``, so a run killed at any point leaves the last
complete state. Reopening a run folder with the same suite resumes it:
``RunStore.done`` holds the case ids already recorded.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from dstbench import env as envinfo
from dstbench.errors import UserError

RUN_FILE = "run.json"
ROWS_FILE = "rows.jsonl"
SCHEMA = 1


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_meta(path: Path) -> dict[str, Any]:
    """The parsed run.json of a run folder; UserError if missing or corrupt."""
    path = Path(path)
    meta_path = path / RUN_FILE
    if not path.is_dir():
        raise UserError(f"{path} is not a run folder (it does not exist); pass a folder written by 'dstbench run --out'")
    if not meta_path.is_file():
        raise UserError(f"{path} is not a dstbench run folder: it has no {RUN_FILE}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{meta_path} is corrupt (line {exc.lineno}: {exc.msg}); delete the folder and rerun") from None
    if not isinstance(meta, dict) or "suite" not in meta:
        raise UserError(f"{meta_path} is not a dstbench run record (no 'suite' field)")
    return meta


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a run folder; UserError naming the file and line of a corrupt row."""
    rows_path = Path(path) / ROWS_FILE
    if not rows_path.exists():
        return []
    rows = []
    for lineno, line in enumerate(rows_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{rows_path} line {lineno} is corrupt ({exc.msg}); delete that line to rerun the case, or the folder to start over"
            ) from None
        if not isinstance(row, dict) or "case_id" not in row:
            raise UserError(f"{rows_path} line {lineno} is not a dstbench row (no 'case_id')")
        rows.append(row)
    return rows


def check_folder(path: Path, suite: str) -> list[dict[str, Any]]:
    """Check, without writing anything, that ``path`` can take a ``suite`` run; returns its recorded rows.

    A missing folder is fine (no rows). UserError for a file, a folder holding
    another suite's run, or a corrupt run.json / rows.jsonl.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a folder")
    if not (path / RUN_FILE).exists():
        return []
    meta = read_meta(path)
    if meta["suite"] != suite:
        raise UserError(f"{path} holds a '{meta['suite']}' run, not '{suite}'; choose another --out folder")
    return read_rows(path)


class RunStore:
    """One run folder, opened for writing; resumes what is already there.

    Args:
        path: the run folder (created if needed).
        suite: the suite writing it; a folder holding another suite's run is refused.
        config: the suite options, stored in run.json.
        threads: the thread count, stored in the environment.
    """

    def __init__(self, path: Path, suite: str, config: dict[str, Any], threads: int | None = None) -> None:
        self.path = Path(path)
        self.rows = check_folder(self.path, suite)
        if (self.path / RUN_FILE).exists():
            self.meta = read_meta(self.path)
            self.meta.setdefault("resumed_at", []).append(_now())
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.meta = {
                "schema": SCHEMA,
                "suite": suite,
                "config": config,
                "env": envinfo.capture(threads),
                "started_at": _now(),
                "finished_at": None,
            }
        self.done = {row["case_id"] for row in self.rows}
        self._write_meta()

    def _write_meta(self) -> None:
        atomic_write_text(self.path / RUN_FILE, json.dumps(self.meta, indent=2, default=str) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        """Record one finished case (``row['case_id']`` must be new)."""
        self.append_many([row])

    def append_many(self, rows: Iterable[dict[str, Any]]) -> None:
        """Record several finished cases in one atomic write; ValueError if a case id is already recorded."""
        rows = list(rows)
        ids = [row["case_id"] for row in rows]
        repeated = sorted(set(ids) & self.done) or sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"case {repeated[0]!r} is already recorded in {self.path}")
        self.rows.extend(rows)
        self.done.update(row["case_id"] for row in rows)
        text = "".join(json.dumps(row, default=float) + "\n" for row in self.rows)
        atomic_write_text(self.path / ROWS_FILE, text)

    def finish(self) -> None:
        """Stamp the end time in run.json."""
        self.meta["finished_at"] = _now()
        self._write_meta()


def load(path: Path | str) -> pd.DataFrame:
    """The rows of a run folder as a DataFrame, with ``suite`` and ``run`` columns."""
    meta = read_meta(Path(path))
    frame = pd.DataFrame(read_rows(Path(path)))
    frame["run"] = str(path)
    if "suite" not in frame:
        frame["suite"] = meta["suite"]
    return frame
