"""Run records: a folder with ``run.json`` (what, where, when) and ``rows.jsonl`` (one row per case).

One process writes a run folder at a time: ``RunStore`` holds an exclusive
``fcntl.flock`` on ``writer.lock`` in the folder from opening to closing
(``WriterLock``); a second writer gets a UserError naming the holder. The
kernel drops the lock when its holder exits or is killed, so a lock file
left behind blocks nobody.

``run.json`` is rewritten atomically (temporary file + ``os.replace``).
Rows are only ever appended: each write is whole lines, flushed and
fsynced; a last line without its newline (a run killed mid-write) is
dropped with a warning when the folder is read or resumed.

A run is a list of *segments*. Each segment records the suite options
(``config``), the environment (``env``) and their ``fingerprint``: the
options that define the cases, the commit (git sha, dirty flag) and the
machine (CPU and GPU model, threads, torch version). Reopening a folder
resumes its last segment when the fingerprint matches (``RunStore.done``
holds the case ids recorded by every segment, which a rerun skips), is
refused with a UserError naming what differs otherwise, and opens a new
segment on request (``new_segment=True``). Every row carries the
``segment`` it was recorded in; folders written before segments existed
read as one segment 0.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Collection, Iterable

import pandas as pd

from dstbench import env as envinfo
from dstbench.errors import UserError

RUN_FILE = "run.json"
ROWS_FILE = "rows.jsonl"
LOCK_FILE = "writer.lock"
SCHEMA = 2
#: env fields that must match for a rerun to continue a segment
COMMIT_FIELDS = ("git_sha", "git_dirty")
ENV_FIELDS = ("cpu_model", "cpu_id", "gpu_name", "threads", "torch")
#: how long a second writer waits for the lock holder to name itself in the lock file
_HOLDER_WAIT_S = 1.0
#: labels of the batches at which the accuracy suite times each trained model: one sample, the evaluation batch
TIMED_BATCHES = ("b1", "beval")


def timed_column(name: str, label: str) -> str:
    """The row column of ``name`` at the timed batch ``label``: ('speedup_vs_dense', 'b1') -> 'speedup_vs_dense_b1'."""
    return f"{name}_{label}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + fsync + os.replace)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
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


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The rows of a run folder and the byte length of its complete lines.

    A last line without its newline is a row whose write was cut short: it
    is left out, with a warning. Rows without a ``segment`` (written before
    segments existed) get segment 0.
    """
    rows_path = Path(path) / ROWS_FILE
    if not rows_path.exists():
        return [], 0
    data = rows_path.read_bytes()
    complete = data.rfind(b"\n") + 1
    lines = data[:complete].decode("utf-8", errors="replace").splitlines()
    if complete < len(data):
        warnings.warn(f"{rows_path} line {len(lines) + 1} is incomplete (a run stopped while writing it); "
                      "it is ignored, and resuming the run drops it and measures its case again", stacklevel=3)
    rows = []
    for lineno, line in enumerate(lines, start=1):
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
        row.setdefault("segment", 0)
        rows.append(row)
    return rows, complete


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a run folder; UserError naming the file and line of a corrupt row (an incomplete last row is warned about and left out)."""
    return _read_rows(path)[0]


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, default=str))


def _without(options: dict[str, Any], names: Collection[str]) -> dict[str, Any]:
    """``options`` less the keys in ``names``, at every level of nested dicts."""
    return {key: _without(value, names) if isinstance(value, dict) else value
            for key, value in options.items() if key not in names}


def fingerprint(config: dict[str, Any], env: dict[str, Any], may_change: Collection[str] = ()) -> dict[str, Any]:
    """What must match for a rerun to continue a segment: {"options", "commit", "env"}.

    Args:
        config: the suite options as stored in run.json.
        env: an ``dstbench.env.capture()`` dict.
        may_change: option (or env field) names a resumed run may change, such
            as ``out``; they are left out at every level of ``config``.
    """
    return _plain({
        "options": _without(config, may_change),
        "commit": {name: env.get(name) for name in COMMIT_FIELDS},
        "env": {name: env.get(name) for name in ENV_FIELDS if name not in may_change},
    })


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(stored: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """Each field where two fingerprints differ, as 'options.rounds 5 -> 9' (nested dicts as dotted names)."""
    out = []
    for key in dict.fromkeys([*stored, *wanted]):
        old, new = stored.get(key, "(absent)"), wanted.get(key, "(absent)")
        if isinstance(old, dict) and isinstance(new, dict):
            out += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key} {_show(old)} -> {_show(new)}")
    return out


def segments(meta: dict[str, Any], may_change: Collection[str] = ()) -> list[dict[str, Any]]:
    """The segments of a run.json; a run.json written before segments existed reads as one segment 0."""
    if "segments" in meta:
        return meta["segments"]
    config, env = meta.get("config") or {}, meta.get("env") or {}
    return [{"segment": 0, "config": config, "env": env, "fingerprint": fingerprint(config, env, may_change),
             "started_at": meta.get("started_at"), "finished_at": meta.get("finished_at"),
             "resumed_at": meta.get("resumed_at", [])}]


def _new_segment(number: int, config: dict[str, Any], env: dict[str, Any], may_change: Collection[str]) -> dict[str, Any]:
    return {"segment": number, "config": config, "env": env, "fingerprint": fingerprint(config, env, may_change),
            "started_at": _now(), "finished_at": None, "resumed_at": []}


def _suite_meta(path: Path, suite: str) -> dict[str, Any]:
    meta = read_meta(path)
    if meta["suite"] != suite:
        raise UserError(f"{path} holds a run of the '{meta['suite']}' suite, not '{suite}'; choose another --out folder")
    return meta


def _check_fingerprint(path: Path, meta: dict[str, Any], wanted: dict[str, Any], may_change: Collection[str]) -> None:
    """UserError naming what differs if ``wanted`` does not match the fingerprint of the folder's last segment."""
    last = segments(meta, may_change)[-1]
    changed = differences(last["fingerprint"], wanted)
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise UserError(
            f"{path} holds a run of the '{meta['suite']}' suite (segment {last['segment']}) recorded with another "
            f"fingerprint ({shown}); to resume it, rerun with its options on its commit and machine, pass "
            "--new-segment to record this run as a new segment of it, or choose another --out")


def check_folder(path: Path, suite: str, config: dict[str, Any] | None = None, threads: int | None = None, *,
                 may_change: Collection[str] = (), new_segment: bool = False) -> list[dict[str, Any]]:
    """Check, without writing anything, that ``path`` can take a ``suite`` run; returns its recorded rows.

    A missing folder is fine (no rows). UserError for a file, a folder holding
    another suite's run, a corrupt run.json / rows.jsonl, or, given the run's
    ``config`` (and ``threads``), a last segment with another fingerprint
    unless ``new_segment``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a folder")
    if not (path / RUN_FILE).exists():
        return []
    meta = _suite_meta(path, suite)
    if config is not None and not new_segment:
        _check_fingerprint(path, meta, fingerprint(config, envinfo.capture(threads), may_change), may_change)
    return read_rows(path)


class WriterLock:
    """An exclusive ``fcntl.flock`` on ``writer.lock`` in a run folder, which names its holder.

    The lock file holds the holder's pid, host, command and start time, for
    the UserError a second writer gets. The kernel releases the lock when
    the holder exits or dies, so a file left behind by a killed process
    blocks nobody; ``release`` deletes it.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._file: BinaryIO | None = self._acquire()

    def _acquire(self) -> BinaryIO:
        while True:
            # a file object, so that a lock whose owner is garbage-collected unclosed is released too
            handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), "r+b", buffering=0)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise UserError(f"{self.path.parent} is being written by {self._holder()}; wait until it has "
                                "finished (or stop it) and rerun to resume, or choose another --out") from None
            except BaseException:
                handle.close()
                raise
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()  # the previous holder deleted the file after we opened it: lock the new one
        holder = {"pid": os.getpid(), "host": platform.node(), "command": " ".join(sys.argv), "started_at": _now()}
        handle.truncate(0)
        handle.write(json.dumps(holder).encode())
        return handle

    def _holder(self) -> str:
        """'process 123 on host h (started ..., running: ...)', read from the lock file."""
        deadline = time.monotonic() + _HOLDER_WAIT_S
        while True:
            try:
                holder = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                holder = None
            if isinstance(holder, dict) or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the holder has locked the file and is about to write its name
        if not isinstance(holder, dict):
            return "another process (it has not named itself in writer.lock)"
        command = " ".join(str(holder.get("command", "?")).split())
        return (f"another process: pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}, "
                f"running '{command}'")

    def release(self) -> None:
        """Delete the lock file and unlock (idempotent)."""
        if self._file is None:
            return
        self.path.unlink(missing_ok=True)
        self._file.close()
        self._file = None


class RunStore:
    """One run folder, locked and opened for writing; resumes what is already there.

    Use it as a context manager (or call ``close``) so that the lock is
    released when the run ends, also by an exception. Everything is checked
    before anything is written: a folder holding another suite's run, corrupt
    records, or a last segment with another fingerprint (unless
    ``new_segment``) is refused with a UserError.

    Args:
        path: the run folder (created if needed).
        suite: the suite writing it.
        config: the suite options, stored in run.json.
        threads: the thread count, stored in the environment.
        may_change: option names a resumed run may change (see ``fingerprint``).
        new_segment: record this run as a new segment even if the fingerprint differs.
    """

    def __init__(self, path: Path, suite: str, config: dict[str, Any], threads: int | None = None, *,
                 may_change: Collection[str] = (), new_segment: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(self.path)
        try:
            self._open(suite, config, envinfo.capture(threads), may_change, new_segment)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, suite: str, config: dict[str, Any], env: dict[str, Any], may_change: Collection[str],
              new_segment: bool) -> None:
        if not (self.path / RUN_FILE).exists():
            first = _new_segment(0, config, env, may_change)
            self.meta = {"schema": SCHEMA, "suite": suite, "config": config, "env": env,
                         "started_at": first["started_at"], "finished_at": None, "segments": [first]}
            self.rows: list[dict[str, Any]] = []
        else:
            self.meta = _suite_meta(self.path, suite)
            self.meta["segments"] = segments(self.meta, may_change)
            self.meta.pop("resumed_at", None)
            if not new_segment:
                _check_fingerprint(self.path, self.meta, fingerprint(config, env, may_change), may_change)
            self.rows, complete = _read_rows(self.path)
            rows_path = self.path / ROWS_FILE
            if rows_path.exists() and complete < rows_path.stat().st_size:
                os.truncate(rows_path, complete)
            if new_segment:
                self.meta["segments"].append(_new_segment(len(self.meta["segments"]), config, env, may_change))
            else:
                self.meta["segments"][-1]["resumed_at"].append(_now())
            self.meta["schema"] = SCHEMA
        self.segment: int = self.meta["segments"][-1]["segment"]
        self.done = {row["case_id"] for row in self.rows}
        self._write_meta()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _write_meta(self) -> None:
        atomic_write_text(self.path / RUN_FILE, json.dumps(self.meta, indent=2, default=str) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        """Record one finished case (``row['case_id']`` must be new)."""
        self.append_many([row])

    def append_many(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append finished cases, labelled with this segment, in one write of whole lines, then fsync.

        ValueError if a case id is already recorded.
        """
        rows = [{**row, "segment": self.segment} for row in rows]
        ids = [row["case_id"] for row in rows]
        repeated = sorted(set(ids) & self.done) or sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"case {repeated[0]!r} is already recorded in {self.path}")
        data = memoryview("".join(json.dumps(row, default=float) + "\n" for row in rows).encode())
        fd = os.open(self.path / ROWS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.rows.extend(rows)
        self.done.update(ids)

    def finish(self) -> None:
        """Stamp the end time of the run and of its segment in run.json."""
        self.meta["finished_at"] = self.meta["segments"][-1]["finished_at"] = _now()
        self._write_meta()

    def close(self) -> None:
        """Release the folder's lock (idempotent)."""
        self._lock.release()


def load(path: Path | str) -> pd.DataFrame:
    """The rows of a run folder as a DataFrame, with ``suite``, ``run`` and ``segment`` columns."""
    meta = read_meta(Path(path))
    frame = pd.DataFrame(read_rows(Path(path)))
    frame["run"] = str(path)
    if "suite" not in frame:
        frame["suite"] = meta["suite"]
    return frame


def default_out(name: str) -> Path:
    """results/<name>-<timestamp> under the current folder: where a run goes without --out."""
    return Path("results") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
