"""The benchmark setup itself: skipped by the default test command, run by --benchmark-only with full metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ONE = "tests/benchmarks/test_bench_kernels.py::test_linear_forward[cpu-b16-proj-s0.9-b1-srigl]"


def pytest_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_default_command_skips_benchmarks() -> None:
    done = pytest_run(ONE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout and "--benchmark-skip" in done.stdout


def test_benchmark_only_runs_them_with_case_keys_speedup_and_machine_info(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    done = pytest_run(ONE, "--benchmark-only", f"--benchmark-json={report}", "--benchmark-max-time=0.02",
                      "--benchmark-min-rounds=3", "--benchmark-warmup=off")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    data = json.loads(report.read_text())
    info = data["machine_info"]
    assert info["torch"] and "cuda" in info and "gpu_name" in info and info["torch_threads"] >= 1
    (bench,) = data["benchmarks"]
    assert bench["group"] == "b16-proj 768x768 s=0.9 b=1 cpu"
    extra = bench["extra_info"]
    assert extra["method"] == "srigl" and extra["impl"] in ("cpu", "reference")
    assert (extra["in_features"], extra["out_features"], extra["sparsity"], extra["batch"]) == (768, 768, 0.9, 1)
    assert extra["speedup_vs_dense_lo"] <= extra["speedup_vs_dense"] <= extra["speedup_vs_dense_hi"]
    assert bench["stats"]["rounds"] >= 3
