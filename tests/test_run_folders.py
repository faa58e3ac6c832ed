"""Every suite writes its run folder through one mechanism: one locked writer, a refused resume with another
fingerprint, and --new-segment, through ``dstbench run`` (tiny cases, correctness only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dstbench import records
from dstbench.cli import main
from dstbench.suites import models, training

#: suite -> (tiny options, a changed option that adds cases, the fingerprint difference it makes)
SUITES = {
    "inference": (["--cases", "32x48", "--sparsity", "0.5", "--batch", "2", "--rounds", "3", "--min-time", "0.001",
                   "--no-e2e", "--threads", "1", "--methods", "dense"],
                  ["--sparsity", "0.5,0.75"], "options.sparsities [0.5] -> [0.5, 0.75]"),
    "training": (["--models", "mlp", "--sparsity", "0.5", "--batch-size", "4", "--rounds", "2", "--min-time", "0.001",
                  "--delta-t", "6", "--threads", "1", "--methods", "dense", "--dense", "eager"],
                 ["--sparsity", "0.5,0.75"], "options.sparsities [0.5] -> [0.5, 0.75]"),
    "accuracy": (["--methods", "dense", "--epochs", "1", "--seeds", "0", "--threads", "1"],
                 ["--seeds", "0,1"], "options.seeds [0] -> [0, 1]"),
}


@pytest.fixture(autouse=True)
def _tiny_training_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(training.MODELS, "mlp", lambda: models.mlp(3072, 10, hidden=(16,)))


def run(suite: str, out: Path, *extra: str) -> int:
    options = SUITES[suite][0]
    return main(["run", "--suite", suite, *options, *extra, "--out", str(out)])


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dstbench: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("suite", SUITES)
def test_a_second_writer_is_refused_while_the_first_holds_the_folder(suite: str, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    assert run(suite, tmp_path) == 0
    holder = records.WriterLock(tmp_path)  # what a writer of the folder holds
    before = snapshot(tmp_path)
    assert run(suite, tmp_path) == 2
    line = one_error_line(capsys)
    assert f"{tmp_path} is being written by another process: pid " in line and "choose another --out" in line
    assert snapshot(tmp_path) == before
    holder.release()
    assert run(suite, tmp_path) == 0 and not (tmp_path / records.LOCK_FILE).exists()


@pytest.mark.parametrize("suite", SUITES)
def test_other_options_are_refused_and_a_new_segment_records_them(suite: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    _, more, difference = SUITES[suite]
    assert run(suite, tmp_path) == 0
    first = records.read_rows(tmp_path)
    before = snapshot(tmp_path)
    assert run(suite, tmp_path, *more) == 2
    line = one_error_line(capsys)
    assert difference in line and "--new-segment" in line
    assert snapshot(tmp_path) == before  # nothing measured, nothing written
    assert run(suite, tmp_path, *more, "--new-segment") == 0
    rows = records.read_rows(tmp_path)
    assert rows[:len(first)] == first and len(rows) > len(first)  # recorded cases kept, not measured again
    assert {row["segment"] for row in rows[len(first):]} == {1}
    meta = json.loads((tmp_path / records.RUN_FILE).read_text())
    first_segment, second_segment = meta["segments"]
    assert records.differences(first_segment["fingerprint"], second_segment["fingerprint"]) == [difference]
    assert run(suite, tmp_path, *more) == 0  # resumes segment 1
    assert "resuming" in capsys.readouterr().err
