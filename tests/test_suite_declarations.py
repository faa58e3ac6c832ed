"""The harness reads what a suite declares (row fields, compared speedups) and names no suite itself."""

from __future__ import annotations

import json

import pytest

import synthetic_runs as syn
from dstbench import registry
from dstbench import report as reporting
from dstbench.cli import main
from dstbench.compare import Ratio, SuiteSpec
from dstbench.registry import _SUITES
from dstbench.suites.base import Reference, Suite


@pytest.fixture
def toy_suite():
    """A suite registered by a test alone: training-shaped rows, one ratio it names its own way."""
    registry.list_suites()
    spec = SuiteSpec(key=("model", "sparsity", "batch", "dtype", "device"), setup=("threads",),
                     ratios={"speedup_vs_rigl": Ratio("rigl", None, "vs the toy baseline")})
    reported = []
    suite = Suite("toy", "a suite of a test", lambda parser: None, lambda args: 0,
                  required=("method", "model", "speedup_vs_rigl", "toy_field"), compare=spec,
                  report=lambda report, frame, refs: reported.append((report.section("Toy"), len(frame), refs)),
                  references=(Reference("dense", "dense"), Reference("rigl", "the toy baseline", same_sparsity=True)))
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
    assert [(count, refs) for _, count, refs in reported] == [(len(toy_rows(seed=1)), toy_suite[0].references)]
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


def test_a_report_section_measures_against_the_declared_references(tmp_path):
    """The accuracy section, registered for a suite whose references are SRigL and DynaDiag: its significance
    table and figures are against those, and name neither dense nor RigL as references."""
    refs = (Reference("srigl", "SRigL (the toy baseline)"), Reference("dynadiag", "DynaDiag", same_sparsity=True))
    srigl = [row for row in syn.accuracy_rows() if row["method"] == "srigl" and row["sparsity"] == 0.9]
    rows = [row for row in syn.accuracy_rows() if row["method"] != "srigl"] + [{**row, "sparsity": 0.0} for row in srigl]
    registry.list_suites()
    _SUITES["toy"] = Suite("toy", "a suite of a test", lambda parser: None, lambda args: 0,
                           required=("method", "sparsity", "seed", "top1"), report=reporting.accuracy_sections,
                           references=refs)
    try:
        run = syn.write_run(tmp_path / "run", "toy", [{**row, "suite": "toy"} for row in rows])
        assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    finally:
        _SUITES.pop("toy")
    table = (tmp_path / "report" / "tables" / "accuracy-significance.md").read_text()
    assert "Δ vs SRigL (the toy baseline) (pp) [95% CI]" in table and "Δ vs DynaDiag (pp) [95% CI]" in table
    assert "vs RigL" not in table
    rigl_at_90 = [line for line in table.splitlines() if "| rigl | 90% |" in line]
    assert len(rigl_at_90) == 1 and rigl_at_90[0].count("–") == 0  # compared with both references


def test_a_report_section_needs_a_reference():
    with pytest.raises(ValueError, match="no references"):
        Suite("toy", "a suite of a test", lambda parser: None, lambda args: 0, report=lambda *args: None)
