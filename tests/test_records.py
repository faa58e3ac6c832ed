"""dstbench.records: run folders, one locked writer, append-only rows, fingerprints and segments, resume,
corrupt-file errors, load to pandas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from dstbench import env as envinfo
from dstbench import records
from dstbench.errors import UserError


def _rows(*ids: str) -> list[dict]:
    return [{"case_id": i, "method": "dense", "p50_s": 1e-3 * (k + 1)} for k, i in enumerate(ids)]


def _leftovers(path: Path) -> list[str]:
    return [p.name for p in path.iterdir() if p.name.endswith(".tmp")]


def test_new_store_writes_meta_and_rows(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with records.RunStore(run, "inference", {"rounds": 3}, threads=1) as store:
        meta = json.loads((run / records.RUN_FILE).read_text())
        assert meta["suite"] == "inference" and meta["config"] == {"rounds": 3}
        assert meta["env"]["threads"] == 1 and "torch" in meta["env"] and meta["finished_at"] is None
        [segment] = meta["segments"]
        assert segment["segment"] == 0 and segment["config"] == {"rounds": 3}
        assert segment["fingerprint"] == {
            "options": {"rounds": 3},
            "commit": {"git_sha": meta["env"]["git_sha"], "git_dirty": meta["env"]["git_dirty"]},
            "env": {"cpu_model": envinfo.cpu_model(), "cpu_id": envinfo.cpu_id(), "gpu_name": envinfo.gpu_name(), "threads": 1,
                    "torch": meta["env"]["torch"]}}
        store.append_many(_rows("a", "b"))
        store.append(_rows("c")[0])
        store.finish()
    lines = (run / records.ROWS_FILE).read_text().splitlines()
    assert [(json.loads(line)["case_id"], json.loads(line)["segment"]) for line in lines] == [("a", 0), ("b", 0), ("c", 0)]
    meta = json.loads((run / records.RUN_FILE).read_text())
    assert meta["finished_at"] is not None and meta["segments"][0]["finished_at"] == meta["finished_at"]
    assert _leftovers(run) == [] and not (run / records.LOCK_FILE).exists()
    assert oct(os.stat(run / records.ROWS_FILE).st_mode & 0o777) == oct(0o644)


def test_reopening_resumes_recorded_cases(tmp_path: Path) -> None:
    with records.RunStore(tmp_path, "inference", {}) as store:
        store.append_many(_rows("a", "b"))
    with records.RunStore(tmp_path, "inference", {}) as store:
        assert store.done == {"a", "b"} and len(store.rows) == 2
        assert len(json.loads((tmp_path / records.RUN_FILE).read_text())["segments"][0]["resumed_at"]) == 1
        with pytest.raises(ValueError, match="already recorded"):
            store.append_many(_rows("b"))
        with pytest.raises(ValueError, match="already recorded"):
            store.append_many(_rows("z", "z"))
    assert len(records.read_rows(tmp_path)) == 2


def test_rows_are_appended_in_place_never_rewritten(tmp_path: Path) -> None:
    with records.RunStore(tmp_path, "inference", {}) as store:
        store.append_many(_rows("a", "b"))
        rows_file = tmp_path / records.ROWS_FILE
        inode, first = rows_file.stat().st_ino, rows_file.read_bytes()
        store.append_many(_rows("c"))
        assert rows_file.stat().st_ino == inode and rows_file.read_bytes().startswith(first)
    with records.RunStore(tmp_path, "inference", {}) as store:
        store.append_many(_rows("d"))
    assert rows_file.stat().st_ino == inode
    assert [row["case_id"] for row in records.read_rows(tmp_path)] == ["a", "b", "c", "d"]


def test_a_torn_last_row_is_dropped_with_a_warning(tmp_path: Path) -> None:
    with records.RunStore(tmp_path, "inference", {}) as store:
        store.append_many(_rows("a", "b"))
    rows_file = tmp_path / records.ROWS_FILE
    complete = rows_file.read_bytes()
    with open(rows_file, "ab") as handle:  # a run killed in the middle of writing row c
        handle.write(b'{"case_id": "c", "method": "den')
    with pytest.warns(UserWarning, match="line 3 is incomplete"):
        assert [row["case_id"] for row in records.read_rows(tmp_path)] == ["a", "b"]
    assert rows_file.read_bytes().startswith(complete)  # reading changes nothing
    with pytest.warns(UserWarning, match="line 3 is incomplete"), records.RunStore(tmp_path, "inference", {}) as store:
        assert store.done == {"a", "b"}
        assert rows_file.read_bytes() == complete  # resuming drops the torn tail before appending
        store.append_many(_rows("c"))
    assert [row["case_id"] for row in records.read_rows(tmp_path)] == ["a", "b", "c"]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with records.RunStore(tmp_path, "inference", {}) as store:
        store.append_many(_rows("a"))
        with pytest.raises(UserError) as err:
            records.RunStore(tmp_path, "inference", {})
        message = str(err.value)
        assert "\n" not in message and f"pid {os.getpid()} on " in message and "started 20" in message
        assert "--out" in message
        store.append_many(_rows("b"))
    with records.RunStore(tmp_path, "inference", {}) as store:  # free again once the first has closed
        assert store.done == {"a", "b"}


#: the commit the writer processes record
COMMIT = {"git_sha": "0" * 40, "git_dirty": False}
#: a writer process: waits for GO, opens the run folder, appends one row per 0.2 s, exits 0 (2 on a UserError)
WRITER = f"COMMIT = {COMMIT!r}\n" + textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dstbench import env, records
    from dstbench.errors import UserError
    env.commit = lambda: COMMIT  # one commit for all writers, whatever is committed meanwhile
    folder, name, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    Path(f"{go}.{name}").touch()
    while not go.exists():
        time.sleep(0.01)
    try:
        with records.RunStore(folder, "accuracy", {"methods": "x"}) as store:
            for i in range(5):
                store.append({"case_id": f"{name}/{i}"})
                time.sleep(0.2)
            if name == "dies":
                import os, signal
                os.kill(os.getpid(), signal.SIGKILL)
            store.finish()
    except UserError as exc:
        print(f"dstbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
""")


def _writers(folder: Path, go: Path, *names: str) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), name, str(go)], stderr=subprocess.PIPE,
                              text=True) for name in names]
    while not all(Path(f"{go}.{name}").exists() for name in names):
        time.sleep(0.01)
    go.touch()
    return procs


def test_two_writer_processes_at_once_one_is_refused_and_no_row_is_lost(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    procs = _writers(folder, tmp_path / "go", "first", "second")
    codes, errors = zip(*((proc.wait(timeout=120), proc.stderr.read()) for proc in procs))
    assert sorted(codes) == [0, 2], errors
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    error = errors[loser].strip()
    assert len(error.splitlines()) == 1 and f"pid {procs[winner].pid} on " in error and "running '-c " in error
    names = ("first", "second")
    assert [row["case_id"] for row in records.read_rows(folder)] == [f"{names[winner]}/{i}" for i in range(5)]
    # the refused writer, rerun after the first has finished, resumes the same run: both writers' rows are kept
    procs = _writers(folder, tmp_path / "go2", names[loser])
    assert procs[0].wait(timeout=120) == 0, procs[0].stderr.read()
    assert {row["case_id"] for row in records.read_rows(folder)} == {f"{n}/{i}" for n in names for i in range(5)}
    assert not (folder / records.LOCK_FILE).exists()


def test_the_lock_of_a_killed_writer_blocks_nobody(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envinfo, "commit", lambda: COMMIT)
    folder = tmp_path / "run"
    [proc] = _writers(folder, tmp_path / "go", "dies")
    assert proc.wait(timeout=120) == -signal.SIGKILL
    holder = json.loads((folder / records.LOCK_FILE).read_text())
    assert holder["pid"] == proc.pid  # the dead writer's lock file is still there
    with records.RunStore(folder, "accuracy", {"methods": "x"}) as store:
        assert store.done == {f"dies/{i}" for i in range(5)}
    assert not (folder / records.LOCK_FILE).exists()


def test_a_resume_with_another_fingerprint_is_refused_naming_what_differs(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"rounds": 5, "sparsities": [0.9], "hyper": {"lr": 0.1, "workers": 0}, "out": "a"}
    with records.RunStore(tmp_path, "inference", config, threads=2, may_change=("out", "workers")) as store:
        store.append_many(_rows("a"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def refused(config: dict, threads: int = 2) -> str:
        for attempt in (records.check_folder, records.RunStore):
            with pytest.raises(UserError) as err:
                attempt(tmp_path, "inference", config, threads, may_change=("out", "workers"))
            assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written
        assert "--new-segment" in str(err.value) and "\n" not in str(err.value)
        return str(err.value)

    assert "options.rounds 5 -> 9, options.sparsities [0.9] -> [0.9, 0.95]" in refused(
        {**config, "rounds": 9, "sparsities": [0.9, 0.95]})
    assert "options.hyper.lr 0.1 -> 0.2" in refused({**config, "hyper": {"lr": 0.2, "workers": 0}})
    assert "env.threads 2 -> 1" in refused(config, threads=1)
    real = envinfo.commit()
    monkeypatch.setattr(envinfo, "commit", lambda: {**real, "git_sha": "f" * 40})
    assert f"commit.git_sha {real['git_sha']} -> {'f' * 40}" in refused(config)
    monkeypatch.undo()
    # options that may change, may change
    with records.RunStore(tmp_path, "inference", {**config, "out": "b", "hyper": {"lr": 0.1, "workers": 4}}, 2,
                          may_change=("out", "workers")) as store:
        assert store.done == {"a"} and store.segment == 0


def test_a_new_segment_records_its_own_options_and_environment(tmp_path: Path) -> None:
    with records.RunStore(tmp_path, "training", {"rounds": 5}, threads=2) as store:
        store.append_many(_rows("a"))
    with records.RunStore(tmp_path, "training", {"rounds": 9}, threads=1, new_segment=True) as store:
        assert store.segment == 1 and store.done == {"a"}  # cases of earlier segments are not measured again
        store.append_many(_rows("b"))
    meta = records.read_meta(tmp_path)
    assert [(s["segment"], s["config"], s["env"]["threads"]) for s in meta["segments"]] == [(0, {"rounds": 5}, 2),
                                                                                          (1, {"rounds": 9}, 1)]
    assert meta["config"] == {"rounds": 5}  # the run as it started
    assert [(row["case_id"], row["segment"]) for row in records.read_rows(tmp_path)] == [("a", 0), ("b", 1)]
    assert list(records.load(tmp_path)["segment"]) == [0, 1]
    with pytest.raises(UserError, match=r"segment 1\) recorded with another fingerprint \(options.rounds 9 -> 5"):
        records.RunStore(tmp_path, "training", {"rounds": 5}, threads=2)
    with records.RunStore(tmp_path, "training", {"rounds": 9}, threads=1) as store:  # resumes segment 1
        assert store.segment == 1


def test_a_folder_written_before_segments_reads_as_segment_0(tmp_path: Path) -> None:
    env = envinfo.capture(2)
    (tmp_path / records.RUN_FILE).write_text(json.dumps({
        "schema": 1, "suite": "inference", "config": {"rounds": 5}, "env": env, "started_at": "2025-01-01T00:00:00",
        "finished_at": None, "resumed_at": ["2025-01-02T00:00:00"]}))
    (tmp_path / records.ROWS_FILE).write_text("".join(json.dumps(row) + "\n" for row in _rows("a", "b")))
    assert [row["segment"] for row in records.read_rows(tmp_path)] == [0, 0]
    with pytest.raises(UserError, match="options.rounds 5 -> 9"):
        records.check_folder(tmp_path, "inference", {"rounds": 9}, 2)
    with records.RunStore(tmp_path, "inference", {"rounds": 5}, 2) as store:
        assert store.segment == 0 and store.done == {"a", "b"}
    [segment] = records.read_meta(tmp_path)["segments"]
    assert segment["config"] == {"rounds": 5} and len(segment["resumed_at"]) == 2
    assert segment["started_at"] == "2025-01-01T00:00:00"


def test_another_suites_folder_is_refused_untouched(tmp_path: Path) -> None:
    with records.RunStore(tmp_path, "training", {}) as store:
        store.append_many(_rows("a"))
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    with pytest.raises(UserError, match="holds a run of the 'training' suite"):
        records.RunStore(tmp_path, "inference", {})
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_corrupt_rows_name_file_and_line(tmp_path: Path) -> None:
    with records.RunStore(tmp_path, "inference", {}) as store:
        store.append_many(_rows("a", "b"))
    rows_file = tmp_path / records.ROWS_FILE
    rows_file.write_text(rows_file.read_text() + '{"case_id": "c", "p50\n')
    with pytest.raises(UserError) as err:
        records.RunStore(tmp_path, "inference", {})
    assert str(rows_file) in str(err.value) and "line 3" in str(err.value)
    rows_file.write_text('{"case_id": "a"}\n[1, 2]\n')
    with pytest.raises(UserError, match="line 2 is not a dstbench row"):
        records.read_rows(tmp_path)


def test_check_folder_writes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "new"
    assert records.check_folder(missing, "inference") == []
    assert not missing.exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        records.check_folder(a_file, "inference")


def test_read_meta_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        records.read_meta(tmp_path / "nope")
    with pytest.raises(UserError, match="no run.json"):
        records.read_meta(tmp_path)
    (tmp_path / records.RUN_FILE).write_text("{bad")
    with pytest.raises(UserError, match="corrupt"):
        records.read_meta(tmp_path)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.txt"
    records.atomic_write_text(target, "old")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        records.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_load_returns_dataframe(tmp_path: Path) -> None:
    with records.RunStore(tmp_path, "inference", {}) as store:
        store.append_many(_rows("a", "b"))
    frame = records.load(tmp_path)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["case_id"]) == ["a", "b"]
    assert set(frame["run"]) == {str(tmp_path)} and set(frame["suite"]) == {"inference"}
    assert frame["p50_s"].tolist() == pytest.approx([1e-3, 2e-3])
