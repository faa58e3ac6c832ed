"""The GPU check's CPU-side logic, dry-run without a GPU: plan, budgets, commands, statuses, summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from dstbench import gpu_check, registry
from dstbench.suites import inference


def suite_args(step: gpu_check.Step) -> argparse.Namespace:
    """The step's options as its suite's own parser reads them (``dstbench run --suite NAME ...``)."""
    argv = list(step.argv[step.argv.index("run") + 1:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", required=True)
    name = argv[argv.index("--suite") + 1]
    registry.get_suite(name).add_arguments(parser)
    return parser.parse_args(argv)


def test_plan_steps_budgets_and_commands(tmp_path: Path) -> None:
    steps = gpu_check.plan(tmp_path)
    assert [s.name for s in steps] == ["gpu-tests", "sanitizer-memcheck", "sanitizer-racecheck", "inference-layers",
                                       "kernel-sweep", "inference-e2e", "training"]
    assert gpu_check.TOTAL_BUDGET_S == sum(s.budget_s for s in steps) <= 9 * 60  # one device call: 10 min at most
    tests, memcheck, racecheck, layers, sweep, e2e, training = steps
    assert sweep.argv[1:4] == ("-m", "dstbench.kernels.cuda.kernel_sweep", "--out")
    assert tests.argv[-2:] == ("gpu", f"--junitxml={tmp_path / 'gpu-tests.xml'}")
    for sanitizer, tool in ((memcheck, "memcheck"), (racecheck, "racecheck")):
        assert sanitizer.sanitizer and sanitizer.argv[:3] == ("compute-sanitizer", "--tool", tool)
        assert sanitizer.argv[-2:] == ("-m", "gpu and small")
    assert memcheck.env == {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}

    args = suite_args(layers)
    assert (args.suite, args.device, args.sparsity, args.batch, args.no_e2e) == ("inference", "cuda", "0.9", "1,197,256", True)
    assert set(inference.parse_cases(args.cases)) == {"b16-qkv", "b16-proj", "b16-fc1", "b16-fc2"}
    assert args.rounds == args.cold_rounds == 5  # its budget holds 5 rounds of the flushed groups, not 15
    args = suite_args(e2e)
    assert inference.parse_cases(args.cases) == {} and not args.no_e2e  # the end-to-end case only
    args = suite_args(training)
    assert (args.suite, args.device, args.sparsity) == ("training", "cuda", "0.9")
    assert {Path(suite_args(s).out) for s in (layers, e2e, training)} == {
        tmp_path / "inference-layers", tmp_path / "inference-e2e", tmp_path / "training"}


def test_no_gpu_stops_at_once_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "check")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dstbench gpu_check: no CUDA device")
    assert not (tmp_path / "check").exists()


def test_dry_run_needs_no_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[1/7] gpu-tests (budget 100 s)" in out and f"total budget {gpu_check.TOTAL_BUDGET_S} s" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sanitizer, returncode, output, status", [
    (False, 0, "=== 118 passed, 3 skipped in 80.1s ===\n", "passed"),
    (False, 1, "=== 1 failed, 117 passed in 80.1s ===\n", "failed"),
    (False, None, "", "timeout"),
    (True, 0, "=== 2 passed in 9.0s ===\n========= ERROR SUMMARY: 0 errors\n", "passed"),
    (True, 1, "========= ERROR SUMMARY: 3 errors\n", "failed"),
    (True, 1, "========= Error: Device not supported\n", "refused"),
    # racecheck's own summary line, after pytest's bare -q summary (as on the H200)
    (True, 0, "2 passed, 1226 deselected in 17.5s\n========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, "
              "0 warnings)\n", "passed"),
    (True, 1, "========= RACECHECK SUMMARY: 4 hazards displayed (4 errors, 0 warnings)\n", "failed"),
])
def test_classify(sanitizer: bool, returncode: int | None, output: str, status: str) -> None:
    step = gpu_check.Step("s", ("x",), 5, sanitizer=sanitizer)
    assert gpu_check.classify(step, returncode, output)[0] == status


def test_runs_steps_within_budget_and_writes_at_most_8_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The executor with stand-in steps: a pass, a step stopped at its budget, a sanitizer that is not installed."""
    py = sys.executable
    steps = [gpu_check.Step("ok", (py, "-c", "print('=== 2 passed in 0.1s ===')"), 20),
             gpu_check.Step("slow", (py, "-c", "import time; time.sleep(30)"), 1),
             gpu_check.Step("sanitizer-memcheck", ("no-such-compute-sanitizer",), 5, sanitizer=True)]
    monkeypatch.setattr(gpu_check, "plan", lambda out: steps)
    monkeypatch.setattr(gpu_check, "no_gpu_reason", lambda: None)
    (tmp_path / "inference-e2e").mkdir()
    rows = [{"method": "dynadiag", "e2e": True, "case": "vit_b16", "l2": "warm", "launch": "graph",
             "speedup_vs_csr": 3.5, "speedup_vs_csr_lo": 3.2, "speedup_vs_csr_hi": 3.9, "speedup_vs_dense": 1.2}]
    (tmp_path / "inference-e2e" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    assert gpu_check.main(["--out", str(tmp_path)]) == 1  # the timeout fails the check
    printed = capsys.readouterr().out
    assert "[2/3] slow: timeout" in printed and "[3/3] sanitizer-memcheck: refused" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["passed", "timeout", "refused"]
    assert summary["steps"][0]["detail"] == "2 passed in 0.1s"
    met = {(h["what"], h["met"]) for h in summary["headline"]}
    assert met == {("DynaDiag end to end, batch 1, vs CSR", True), ("DynaDiag end to end, batch 1, vs dense", False)}
    assert "| vit_b16 l2=warm graph | 3.13x | 3.50x [3.20, 3.90] | yes |" in (tmp_path / "summary.md").read_text()
    files = [p for p in tmp_path.iterdir() if p.is_file()]
    assert sorted(p.name for p in files) == ["check.log", "summary.json", "summary.md"] and len(files) <= 8
    assert "===== slow:" in (tmp_path / "check.log").read_text()


def test_steps_option_runs_only_the_named_steps(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert gpu_check.main(["--out", str(tmp_path), "--dry-run", "--steps", "gpu-tests,training"]) == 0
    out = capsys.readouterr().out
    assert "[1/2] gpu-tests" in out and "[2/2] training" in out and "total budget 180 s" in out
    assert gpu_check.main(["--out", str(tmp_path), "--dry-run", "--steps", "gpu-tests,bogus"]) == 2
    assert "--steps takes names among gpu-tests" in capsys.readouterr().err
