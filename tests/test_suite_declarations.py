"""The harness reads what a suite declares (row fields, compared speedups) and names no suite itself."""

from __future__ import annotations

import json

import pytest

import synthetic_runs as syn
from dstbench import registry
from dstbench.cli import main
from dstbench.compare import Ratio, SuiteSpec
from dstbench.registry import _SUITES
from dstbench.suites.base import Suite


@pytest.fixture
def toy_suite():
    """A suite registered by a test alone: training-shaped rows, one ratio it names its own way."""
    registry.list_suites()
    spec = SuiteSpec(key=("model", "sparsity", "batch", "dtype", "device"), setup=("threads",),
                     ratios={"speedup_vs_rigl": Ratio("rigl", None, "vs the toy baseline")}, reference="dense")
    reported = []
    suite = Suite("toy", "a suite of a test", lambda parser: None, lambda args: 0,
                  required=("method", "model", "speedup_vs_rigl", "toy_field"), compare=spec,
                  report=lambda report, frame: reported.append((report.section("Toy"), len(frame))))
    _SUITES["toy"] = suite
    yield suite, reported
    _SUITES.pop("toy")


def toy_rows(seed: int, slower: float = 1.0) -> list[dict]:
    """Training-shaped rows with a toy field; DynaDiag's steps ``slower`` times slower."""
    rows = []
    for row in syn.training_rows(seed=seed):
        if row["method"] == "dynadiag":
            row["samples_s"] = [t * slower for t in row["samples_s"]]
            for key in ("speedup_vs_rigl", "speedup_vs_rigl_lo", "speedup_vs_rigl_hi"):
                row[key] /= slower
        rows.append({**row, "toy_field": 1})
    return rows


def test_report_writes_the_section_the_suite_declares(toy_suite, tmp_path):
    _, reported = toy_suite
    run = syn.write_run(tmp_path / "run", "toy", toy_rows(seed=1))
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert [count for _, count in reported] == [len(toy_rows(seed=1))]
    assert "## Toy" in (tmp_path / "report" / "index.md").read_text()


def test_compare_uses_the_suites_own_declaration(toy_suite, tmp_path, capsys):
    base = syn.write_run(tmp_path / "base", "toy", toy_rows(seed=1))
    new = syn.write_run(tmp_path / "new", "toy", toy_rows(seed=2, slower=2.0))
    assert main(["compare", str(base), str(new), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert {c["metric"] for c in data["comparisons"]} == {"vs the toy baseline"}
    assert {c["method"] for c in data["comparisons"] if c["status"] == "regressed"} == {"dynadiag"}


def test_required_fields_come_from_the_suite(toy_suite, tmp_path, capsys):
    rows = [{k: v for k, v in row.items() if k != "toy_field"} for row in toy_rows(seed=1)]
    run = syn.write_run(tmp_path / "run", "toy", rows)
    assert main(["compare", str(run), str(run)]) == 2
    assert "lacks toy_field for a toy row" in capsys.readouterr().err


def test_a_suite_without_speedups_is_not_compared(tmp_path, capsys):
    run = syn.write_run(tmp_path / "acc", "accuracy", syn.accuracy_rows())
    assert main(["compare", str(run), str(run)]) == 2
    assert "compare checks speedups of inference and training runs" in capsys.readouterr().err
