"""dstbench baseline update | check, with the timer replaced by a deterministic fake so that outcomes are exact."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest
import torch

import synthetic_runs as syn
from dstbench import baseline, commit_runs, registry, timing
from dstbench.cli import main
from dstbench.env import REPO_ROOT
from dstbench.errors import UserError
from dstbench.registry import _SUITES
from dstbench.suites.base import Suite
from dstbench.suites import dense_baselines

TINY = ["--cases", "32x64", "--sparsity", "0.9", "--batch", "2", "--rounds", "6", "--min-time", "0.001", "--no-e2e",
        "--threads", "1", "--impl", "reference", "--l2", "warm"]
#: seconds per call of each method and dense implementation under the fake timer (another registered method: 5e-4)
TIMES = {"dense": 1e-3, "dense-onednn": 9e-4, "dense-openblas": 8e-4, "rigl": 6e-4, "srigl": 3e-4, "dynadiag": 2.5e-4}
#: the rows of a group: every dense implementation, then the CSR baseline and the other registered methods
ROWS = [*dense_baselines.candidates("cpu", torch.float32),
        *(m for m in dict.fromkeys(["rigl", *registry.list_methods()]) if m != "dense")]
#: speedups compared per case: vs dense and vs torch dense for every method but dense, vs CSR for every method but
#: dense and rigl
COMPARISONS = 3 * (len(registry.list_methods()) - 1) - 1


def fake_interleaved(slow: dict[str, float]) -> Callable[..., dict[str, timing.Samples]]:
    """A stand-in for timing.interleaved: fixed per-method times with a small per-round wobble, ``slow`` factors."""

    def interleaved(fns, *, rounds: int, **_) -> dict[str, timing.Samples]:  # noqa: ANN001, ANN003
        return {name: timing.Samples(1, [TIMES.get(name, 5e-4) * slow.get(name, 1.0) * (1 + 0.01 * (r % 3)) for r in range(rounds)])
                for name in fns}

    return interleaved


def base_commit_measured_now(slow: dict[str, float]) -> Callable[..., Path]:
    """A stand-in for commit_runs.run_at_commit: the baseline's commit run in-process under the fake timer with
    ``slow`` factors (the commit's own speed in the window it is measured in)."""

    def run_at_commit(sha: str, suite: str, suite_args: list[str], out: Path) -> Path:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(timing, "interleaved", fake_interleaved(slow))
            baseline.run_suite(suite, suite_args, out)
        return out

    return run_at_commit


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Path:
    """A baseline of commit c...c under the fake timer; its commit, measured again, is as fast."""
    monkeypatch.setattr(timing, "interleaved", fake_interleaved({}))
    monkeypatch.setattr(commit_runs, "run_at_commit", base_commit_measured_now({}))
    out = tmp_path / "baselines" / "cpu-quick"
    assert main(["baseline", "update", "--out", str(out), *TINY]) == 0
    assert f"baseline {out} updated: {len(ROWS)} rows" in capsys.readouterr().out
    _committed(out)
    return out


def test_update_writes_a_run_folder_with_the_suite_options(base: Path) -> None:
    assert json.loads((base / "baseline.json").read_text()) == {"suite": "inference", "suite_args": TINY}
    assert json.loads((base / "run.json").read_text())["suite"] == "inference"
    rows = [json.loads(line) for line in (base / "rows.jsonl").read_text().splitlines()]
    assert [row["case_id"].rsplit("/", 1)[1] for row in rows] == ROWS
    assert sorted(p.name for p in base.parent.iterdir()) == ["cpu-quick"]  # no temporary folders left


def test_check_of_unchanged_code_passes(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    new = tmp_path / "check"
    assert main(["baseline", "check", "--baseline", str(base), "--out", str(new)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"### dstbench compare (inference): 0 regressed, 0 improved, 0 noisy, 0 not comparable, {COMPARISONS} unchanged")
    assert "vs dense [95% CI]" not in captured.out and "vs dense [95% CI]" in captured.err  # suite table: stderr
    assert json.loads((new / "run.json").read_text())["suite"] == "inference"


def test_check_catches_a_slower_kernel(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(timing, "interleaved", fake_interleaved({"dynadiag": 2.0}))
    assert main(["baseline", "check", "--baseline", str(base), "--out", str(tmp_path / "check"), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert {(c["method"], c["metric"]) for c in data["comparisons"] if c["status"] == "regressed"} == {
        ("dynadiag", "vs dense"), ("dynadiag", "vs torch dense"), ("dynadiag", "vs CSR")}


def test_check_needs_the_regression_in_a_confirming_run(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    slow = [True]  # the first run slow, the confirming one not: a run-level accident
    real_run_suite = baseline.run_suite

    def run_suite(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        real_run_suite(*args, **kwargs)
        slow[0] = False

    monkeypatch.setattr(baseline, "run_suite", run_suite)
    monkeypatch.setattr(timing, "interleaved",
                        lambda *a, **k: fake_interleaved({"dynadiag": 2.0} if slow[0] else {})(*a, **k))
    out = tmp_path / "check"
    assert main(["baseline", "check", "--baseline", str(base), "--out", str(out), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert not [c for c in data["comparisons"] if c["status"] == "regressed"]
    assert {c["note"] for c in data["comparisons"] if c["method"] == "dynadiag"} == {"regressed in the first run only"}
    assert (tmp_path / "check-confirm" / "rows.jsonl").exists()


def test_update_replaces_the_baseline(base: Path) -> None:
    assert main(["baseline", "update", "--out", str(base), *TINY[:-2], "--impl", "reference", "--batch", "3"]) == 0
    rows = [json.loads(line) for line in (base / "rows.jsonl").read_text().splitlines()]
    assert {row["batch"] for row in rows} == {3}
    assert sorted(p.name for p in base.parent.iterdir()) == ["cpu-quick"]


def test_other_machine_class_skips_the_check(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A baseline of another CPU generation under this CPU's model name ('AMD EPYC' on Zen 4 and Zen 5)."""
    meta = json.loads((base / "run.json").read_text())
    meta["env"]["cpu_id"] = "family 1, model 1"
    (base / "run.json").write_text(json.dumps(meta))
    new = tmp_path / "check"
    assert main(["baseline", "check", "--baseline", str(base), "--out", str(new)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dstbench baseline check: skipped") and f"{meta['env']['cpu_model']} (family 1, model 1)'" in out
    assert not new.exists()
    assert main(["baseline", "check", "--baseline", str(base), "--out", str(new), "--allow-machine-mismatch"]) == 0
    assert f"{COMPARISONS} unchanged" in capsys.readouterr().out


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("dstbench: error")]
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    no_info, with_out = tmp_path / "no-info", tmp_path / "with-out"
    for folder in (no_info, with_out):
        folder.mkdir()
        for name in ("run.json", "rows.jsonl"):
            (folder / name).write_text((base / name).read_text())
    (with_out / "baseline.json").write_text(json.dumps({"suite": "inference", "suite_args": ["--out", "x"]}))
    cases = [
        (["check", "--baseline", str(tmp_path / "missing")], "does not exist"),
        (["check", "--baseline", str(no_info)], "no baseline.json"),
        (["check", "--baseline", str(base), "--threshold", "x"], "--threshold"),
        (["check", "--baseline", str(base), "--rounds", "3"], "takes no suite options"),
        (["update", "--out", str(busy), *TINY], "not a dstbench baseline"),
        (["check", "--baseline", str(with_out), "--out", str(tmp_path / "new")], "hold --out"),
        (["update", "--out", str(base), "--suite", "training"], "holds a run of the 'inference' suite, not 'training'"),
        (["update", "--out", str(tmp_path / "acc"), "--suite", "accuracy"], "the accuracy suite records none"),
        (["update", "--out", str(tmp_path / "nope"), "--suite", "nope"], "unknown suite 'nope'"),
        (["update", "--out", str(base), *TINY, "--sparsity", "2"], "sparsity must be in [0, 1)"),
    ]
    before = (base / "rows.jsonl").read_text()
    for argv, message in cases:
        assert main(["baseline", *argv]) == 2, argv
        assert message in one_error_line(capsys), argv
    assert (busy / "keep.txt").read_text() == "mine"
    assert (base / "rows.jsonl").read_text() == before
    assert sorted(p.name for p in base.parent.iterdir()) == ["cpu-quick"]


def test_defaults_point_at_this_machines_quick_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    assert baseline.slug("Intel(R) Xeon(R) Processor") == "intel-xeon-processor"
    assert baseline.slug("AMD EPYC 9B45 128-Core Processor") == "amd-epyc-9b45-128-core-processor"
    monkeypatch.setattr(baseline.envinfo, "cpu_model", lambda: "AMD EPYC")
    monkeypatch.setattr(baseline.envinfo, "cpu_id", lambda: "family 25, model 17")
    assert baseline.default_dir() == Path("results/baselines/cpu-quick-amd-epyc-family-25-model-17")
    assert baseline.DEFAULT_SUITE_ARGS == ("--quick",)


def _of_another_class(base: Path, name: str = "cpu-quick-other") -> Path:
    """A copy of ``base`` beside it, as measured on another CPU before runs recorded ``cpu_id``."""
    other = base.parent / name
    shutil.copytree(base, other)
    meta = json.loads((other / "run.json").read_text())
    meta["env"]["cpu_model"] = "Some Other CPU"
    meta["env"].pop("cpu_id", None)
    (other / "run.json").write_text(json.dumps(meta))
    return other


def test_check_finds_the_baseline_of_this_machine_class(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Two baselines under the root, one from another CPU: check without --baseline compares with this CPU's."""
    _of_another_class(base)
    monkeypatch.setattr(baseline, "ROOT", base.parent)
    assert baseline.find() == (base, "")
    new = tmp_path / "check"
    assert main(["baseline", "check", "--out", str(new)]) == 0
    assert f"{COMPARISONS} unchanged" in capsys.readouterr().out and new.exists()
    assert not (tmp_path / "check-base-commit").exists()


def test_with_no_baseline_of_this_class_check_measures_another_baselines_commit_here(
        base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Only another CPU's baseline: its commit and options, measured on this machine now, are the base (never its
    numbers); a kernel twice as slow in this checkout regresses against it, an unchanged one does not."""
    other = _of_another_class(base)
    shutil.rmtree(base)
    monkeypatch.setattr(baseline, "ROOT", other.parent)
    measured = _slow_window(monkeypatch, base_commit_slow=False)
    assert main(["baseline", "check", "--out", str(tmp_path / "check"), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert measured == ["c" * 40]
    assert {(c["method"], c["metric"]) for c in data["comparisons"] if c["status"] == "regressed"} == {
        ("dynadiag", "vs dense"), ("dynadiag", "vs torch dense"), ("dynadiag", "vs CSR")}
    assert data["base"]["path"] == str(tmp_path / "check-base-commit")
    assert any("the base is commit cccccccccc (that of cpu-quick-other) measured on this machine" in note
               for note in data["notes"])
    monkeypatch.setattr(timing, "interleaved", fake_interleaved({}))
    assert main(["baseline", "check", "--out", str(tmp_path / "again")]) == 0
    assert f"{COMPARISONS} unchanged" in capsys.readouterr().out


def test_with_no_baseline_to_measure_check_runs_nothing(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Another CPU's baseline of uncommitted edits (no commit holds its code), then no baseline at all: check runs
    nothing, names what it found and why, and exits 0."""
    other = _of_another_class(base)
    _committed(other, dirty=True)
    shutil.rmtree(base)
    monkeypatch.setattr(baseline, "ROOT", other.parent)
    assert main(["baseline", "check", "--out", str(tmp_path / "check")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dstbench baseline check: skipped: no baseline under") and "cpu-quick-other ('Some Other CPU')" in out
    assert "uncommitted edits on cccccccccc" in out and not (tmp_path / "check").exists()
    shutil.rmtree(other)
    assert main(["baseline", "check", "--out", str(tmp_path / "check")]) == 0
    assert "there: none" in capsys.readouterr().out and not (tmp_path / "check").exists()


def test_the_baseline_tracks_the_suite_it_was_made_of(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A suite registered by this test alone, with training-shaped rows: update runs it, check reruns it (and no
    other) and compares with its own declaration."""
    runs = []

    def add_arguments(parser) -> None:  # noqa: ANN001
        parser.add_argument("--quick", action="store_true")
        parser.add_argument("--out")

    def run(args) -> int:  # noqa: ANN001
        runs.append(args.quick)
        syn.write_run(Path(args.out), "toy", [{**row, "suite": "toy"} for row in syn.training_rows(seed=len(runs))])
        return 0

    registry.list_suites()
    _SUITES["toy"] = Suite("toy", "a suite of a test", add_arguments, run, required=("method", "model"),
                           compare=registry.get_suite("training").compare,
                           references=registry.get_suite("training").references)
    try:
        base = tmp_path / "toy-baseline"
        assert main(["baseline", "update", "--out", str(base), "--suite", "toy"]) == 0
        assert json.loads((base / "baseline.json").read_text()) == {"suite": "toy", "suite_args": ["--quick"]}
        assert main(["baseline", "check", "--baseline", str(base), "--out", str(tmp_path / "check"),
                     "--allow-machine-mismatch"]) == 0
    finally:
        _SUITES.pop("toy")
    assert runs == [True, True]
    assert "### dstbench compare (toy)" in capsys.readouterr().out


def test_update_from_a_finished_run_adopts_its_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """--from makes a run made elsewhere (a GPU check's suite folder, say) the baseline, with the options it ran
    with; check then reruns those and finds nothing changed."""
    monkeypatch.setattr(timing, "interleaved", fake_interleaved({}))
    run = tmp_path / "gpu-check" / "inference-layers"
    assert main(["run", "--suite", "inference", *TINY, "--out", str(run)]) == 0
    (run / "writer.lock").write_text("left by a killed writer\n")
    out = tmp_path / "baselines" / "gpu"
    assert main(["baseline", "update", "--out", str(out), "--from", str(run)]) == 0
    assert json.loads((out / "baseline.json").read_text()) == {"suite": "inference", "suite_args": TINY}
    assert (out / "rows.jsonl").read_text() == (run / "rows.jsonl").read_text() and not (out / "writer.lock").exists()
    capsys.readouterr()
    assert main(["baseline", "check", "--baseline", str(out), "--out", str(tmp_path / "check")]) == 0
    assert "0 regressed" in capsys.readouterr().out


def test_update_from_refuses_an_unfinished_run_and_extra_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(timing, "interleaved", fake_interleaved({}))
    run = tmp_path / "run"
    assert main(["run", "--suite", "inference", *TINY, "--out", str(run)]) == 0
    out = tmp_path / "base"
    assert main(["baseline", "update", "--out", str(out), "--from", str(run), "--batch", "4"]) == 2
    assert "takes the suite options that run recorded; drop --batch 4" in capsys.readouterr().err
    assert main(["baseline", "update", "--out", str(out), "--from", str(run), "--suite", "training"]) == 2
    assert "holds a run of the inference suite, not training; drop --suite" in capsys.readouterr().err
    assert main(["baseline", "update", "--out", str(out), "--from", str(run), "--suite", "inference"]) == 0
    shutil.rmtree(out)
    meta = json.loads((run / "run.json").read_text())
    meta["finished_at"] = None
    (run / "run.json").write_text(json.dumps(meta))
    assert main(["baseline", "update", "--out", str(out), "--from", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not finish; resume it to the end" in err
    assert not out.exists()


def _committed(base: Path, dirty: bool = False) -> None:
    """Record the baseline as measured on a checkout of commit c...c (with uncommitted edits if ``dirty``)."""
    meta = json.loads((base / "run.json").read_text())
    meta["env"].update(git_sha="c" * 40, git_dirty=dirty)
    (base / "run.json").write_text(json.dumps(meta))


def _slow_window(monkeypatch: pytest.MonkeyPatch, base_commit_slow: bool) -> list[str]:
    """DynaDiag twice as slow in both runs of this checkout; the baseline's commit, measured after them, as slow
    (a slow window of the machine) or not (a real regression). Returns the commits measured."""
    measured = []
    measure = base_commit_measured_now({"dynadiag": 2.0} if base_commit_slow else {})

    def run_at_commit(sha: str, suite: str, suite_args: list[str], out: Path) -> Path:
        measured.append(sha)
        return measure(sha, suite, suite_args, out)

    monkeypatch.setattr(commit_runs, "run_at_commit", run_at_commit)
    monkeypatch.setattr(timing, "interleaved", fake_interleaved({"dynadiag": 2.0}))
    return measured


def test_a_slow_window_the_baseline_commit_shares_is_no_regression(base: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    measured = _slow_window(monkeypatch, base_commit_slow=True)
    out = tmp_path / "check"
    assert main(["baseline", "check", "--baseline", str(base), "--out", str(out), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert measured == ["c" * 40]
    assert not [c for c in data["comparisons"] if c["status"] == "regressed"]
    assert {c["note"] for c in data["comparisons"] if c["method"] == "dynadiag"} == {
        "the baseline's commit, measured now, is as slow: the machine's window, not the code"}
    assert any("cccccccccc measured in the same window" in note for note in data["notes"])
    assert (tmp_path / "check-base-commit" / "rows.jsonl").exists()


def test_a_regression_against_the_baseline_commit_measured_now_counts(base: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    _slow_window(monkeypatch, base_commit_slow=False)
    assert main(["baseline", "check", "--baseline", str(base), "--out", str(tmp_path / "check"), "--format", "json"]) == 1
    regressed = [c for c in json.loads(capsys.readouterr().out)["comparisons"] if c["status"] == "regressed"]
    assert {(c["method"], c["metric"]) for c in regressed} == {
        ("dynadiag", "vs dense"), ("dynadiag", "vs torch dense"), ("dynadiag", "vs CSR")}
    assert {c["note"] for c in regressed} == {"regressed against the baseline's commit measured now too"}


def test_a_regression_the_baseline_commit_measured_now_is_too_dispersed_to_judge_is_noisy(
        base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Both runs of the checkout slow; the baseline's commit, measured now, as slow at its median but its rounds
    spread over 1.2-2.8x: the same-window comparison cannot judge, so neither does the check."""
    def dispersed(fns, *, rounds: int, **_) -> dict[str, timing.Samples]:  # noqa: ANN001, ANN003
        spread = (1.2, 2.0, 2.8)
        return {name: timing.Samples(1, [TIMES.get(name, 5e-4) * (spread[r % 3] if name == "dynadiag" else 1.0)
                                         for r in range(rounds)]) for name in fns}

    def run_at_commit(sha: str, suite: str, suite_args: list[str], out: Path) -> Path:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(timing, "interleaved", dispersed)
            baseline.run_suite(suite, suite_args, out)
        return out

    monkeypatch.setattr(commit_runs, "run_at_commit", run_at_commit)
    monkeypatch.setattr(timing, "interleaved", fake_interleaved({"dynadiag": 2.0}))
    assert main(["baseline", "check", "--baseline", str(base), "--out", str(tmp_path / "check"), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    dynadiag = [c for c in data["comparisons"] if c["method"] == "dynadiag"]
    assert dynadiag and {c["status"] for c in dynadiag} == {"noisy"}
    assert {c["note"] for c in dynadiag} == {"the baseline's commit, measured now, varies too much to tell the code "
                                             "from the window; rerun on a quiet machine"}


def test_a_baseline_of_uncommitted_edits_keeps_the_two_runs_verdict(base: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    _committed(base, dirty=True)
    measured = _slow_window(monkeypatch, base_commit_slow=True)
    assert main(["baseline", "check", "--baseline", str(base), "--out", str(tmp_path / "check"), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert measured == []
    assert any("uncommitted edits on cccccccccc" in note and "verdict stands" in note for note in data["notes"])


def _head() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip("dstbench does not run from a git checkout here")
    return done.stdout.strip()


def test_run_at_commit_runs_that_commits_code(tmp_path: Path) -> None:
    sha = _head()
    tree = commit_runs.export(sha, tmp_path / "tree")
    assert (tree / "pyproject.toml").read_bytes() == subprocess.run(
        ["git", "show", f"{sha}:pyproject.toml"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    assert not (tree / "results").exists() and (tree / "kernels" / "cpu" / "diagonal.cpp").is_file()
    out = commit_runs.run_at_commit(sha, "inference", TINY, tmp_path / "run")
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [row["case_id"].rsplit("/", 1)[1] for row in rows] == ROWS
    # the code ran from the installed copy of the commit, outside any checkout, so it found no git commit
    assert json.loads((out / "run.json").read_text())["env"]["git_sha"] is None


def test_a_commit_missing_from_the_clone_is_a_one_line_error(tmp_path: Path) -> None:
    _head()
    with pytest.raises(UserError, match=r"commit 0000000000 is not in .*git fetch --unshallow"):
        commit_runs.export("0" * 40, tmp_path)
