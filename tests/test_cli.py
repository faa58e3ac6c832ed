"""The dstbench command: bad input is one stderr line, exit code 2, and no run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dstbench import records
from dstbench.cli import main

SMALL = ["--cases", "16x24", "--sparsity", "0.5", "--batch", "2", "--rounds", "2", "--min-time", "0.001", "--no-e2e"]
TINY = [*SMALL, "--threads", "1"]


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("dstbench: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--methods", "rigl,magic"], "unknown method 'magic'"),
        (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
        (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
        (["--sparsity", "ninety"], "--sparsity takes a comma-separated list"),
        (["--batch", "0"], "--batch must be positive"),
        (["--batch", "-4"], "--batch must be positive"),
        (["--cases", "b16-fc9"], "unknown case 'b16-fc9'"),
        (["--rounds", "1"], "--rounds must be >= 2"),
        (["--min-time", "0"], "--min-time must be a positive"),
        (["--dtype", "float64"], "--dtype must be one of"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
        (["--impl", "fast"], "--impl must be"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--cases", "", "--no-e2e"], "nothing to run"),
        (["--rounds", "many"], "argument --rounds: invalid int value"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_option_is_one_line_exit_2_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture, options: list[str],
                                                 message: str) -> None:
    out = tmp_path / "out"
    assert main(["run", "--suite", "inference", *TINY, *options, "--out", str(out)]) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_gpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--suite", "inference", *TINY, "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "needs a CUDA GPU" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_unknown_suite_and_missing_suite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--suite", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown suite 'nope'" in one_error_line(capsys)
    assert main(["run", "--quick"]) == 2
    assert "needs --suite" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_unknown_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["fly"]) == 2
    assert capsys.readouterr().err.startswith("dstbench: error: unknown command 'fly'")


def test_list(capsys: pytest.CaptureFixture) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "inference" in out and "dynadiag" in out


def test_folder_of_another_suite_is_refused_untouched(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    records.RunStore(tmp_path, "training", {})
    before = (tmp_path / records.RUN_FILE).read_text()
    assert main(["run", "--suite", "inference", *TINY, "--out", str(tmp_path)]) == 2
    assert "holds a run of the 'training' suite" in one_error_line(capsys)
    assert (tmp_path / records.RUN_FILE).read_text() == before
    assert not (tmp_path / records.ROWS_FILE).exists()


def test_corrupt_rows_file_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    records.RunStore(tmp_path, "inference", {})
    rows_file = tmp_path / records.ROWS_FILE
    rows_file.write_text(json.dumps({"case_id": "a"}) + "\n{not json\n")
    before = (tmp_path / records.RUN_FILE).read_text()
    assert main(["run", "--suite", "inference", *TINY, "--out", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert str(rows_file) in line and "line 2" in line
    assert (tmp_path / records.RUN_FILE).read_text() == before


def test_more_threads_than_cores_warns_and_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    threads = (os.cpu_count() or 1) + 1
    assert main(["run", "--suite", "inference", *SMALL, "--threads", str(threads), "--out", str(tmp_path / "o")]) == 0
    assert f"--threads {threads} is more than" in capsys.readouterr().err
    assert set(records.load(tmp_path / "o")["threads"]) == {threads}
