"""dstbench.records: run folders, atomic writes, resume, corrupt-file errors, load to pandas."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from dstbench import records
from dstbench.errors import UserError


def _rows(*ids: str) -> list[dict]:
    return [{"case_id": i, "method": "dense", "p50_s": 1e-3 * (k + 1)} for k, i in enumerate(ids)]


def _leftovers(path: Path) -> list[str]:
    return [p.name for p in path.iterdir() if p.name.endswith(".tmp")]


def test_new_store_writes_meta_and_rows(tmp_path: Path) -> None:
    run = tmp_path / "run"
    store = records.RunStore(run, "inference", {"rounds": 3}, threads=1)
    meta = json.loads((run / records.RUN_FILE).read_text())
    assert meta["suite"] == "inference" and meta["config"] == {"rounds": 3}
    assert meta["env"]["threads"] == 1 and "torch" in meta["env"] and meta["finished_at"] is None
    store.append_many(_rows("a", "b"))
    store.append(_rows("c")[0])
    store.finish()
    lines = (run / records.ROWS_FILE).read_text().splitlines()
    assert [json.loads(line)["case_id"] for line in lines] == ["a", "b", "c"]
    assert json.loads((run / records.RUN_FILE).read_text())["finished_at"] is not None
    assert _leftovers(run) == []
    assert oct(os.stat(run / records.ROWS_FILE).st_mode & 0o777) == oct(0o644)


def test_reopening_resumes_recorded_cases(tmp_path: Path) -> None:
    records.RunStore(tmp_path, "inference", {}).append_many(_rows("a", "b"))
    store = records.RunStore(tmp_path, "inference", {})
    assert store.done == {"a", "b"} and len(store.rows) == 2
    assert len(json.loads((tmp_path / records.RUN_FILE).read_text())["resumed_at"]) == 1
    with pytest.raises(ValueError, match="already recorded"):
        store.append_many(_rows("b"))
    with pytest.raises(ValueError, match="already recorded"):
        store.append_many(_rows("z", "z"))
    assert len(records.read_rows(tmp_path)) == 2


def test_another_suites_folder_is_refused_untouched(tmp_path: Path) -> None:
    records.RunStore(tmp_path, "training", {}).append_many(_rows("a"))
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    with pytest.raises(UserError, match="holds a 'training' run"):
        records.RunStore(tmp_path, "inference", {})
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_corrupt_rows_name_file_and_line(tmp_path: Path) -> None:
    records.RunStore(tmp_path, "inference", {}).append_many(_rows("a", "b"))
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
    store = records.RunStore(tmp_path, "inference", {})
    store.append_many(_rows("a", "b"))
    frame = records.load(tmp_path)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["case_id"]) == ["a", "b"]
    assert set(frame["run"]) == {str(tmp_path)} and set(frame["suite"]) == {"inference"}
    assert frame["p50_s"].tolist() == pytest.approx([1e-3, 2e-3])
