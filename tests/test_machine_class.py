"""The machine class tells CPU generations apart where a virtual machine shows one generic model name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import synthetic_runs as syn
from dstbench import env as envinfo
from dstbench.cli import main
from dstbench.runs import load_run, machine_label

# A first processor block of /proc/cpuinfo (fields abridged) as this project's AMD EPYC CI host shows it on Zen 4
# (family 25, model 17, read on it), and as a Zen 5 (family 26; the model number is illustrative) under the same
# model name.
ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
ZEN5 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
ARM = "processor\t: 0\nBogoMIPS\t: 243.75\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd0c\n"


def cpuinfo(tmp_path: Path, text: str) -> Path:
    """A cpuinfo file of two processors, the second with other numbers (only the first may be read)."""
    path = tmp_path / "cpuinfo"
    path.write_text(text + "\n" + text.replace(": 0\n", ": 1\n", 1).replace("25", "99").replace("0xd0c", "0xfff"))
    return path


@pytest.mark.parametrize(("text", "expected"), [(ZEN4, "family 25, model 17"), (ZEN5, "family 26, model 2"),
                                                (ARM, "implementer 0x41, part 0xd0c"),
                                                ("processor\t: 0\nmodel name\t: Some CPU\n", None)])
def test_cpu_id_reads_the_generation_numbers_of_the_first_processor(tmp_path: Path, text: str,
                                                                    expected: str | None) -> None:
    assert envinfo.cpu_id(cpuinfo(tmp_path, text)) == expected


def test_cpu_id_is_none_without_a_cpuinfo_file(tmp_path: Path) -> None:
    assert envinfo.cpu_id(tmp_path / "missing") is None


def test_the_class_is_the_gpu_or_the_cpu_model_with_its_generation() -> None:
    zen4 = {"cpu_model": "AMD EPYC", "cpu_id": "family 25, model 17"}
    assert envinfo.machine_class(zen4) == "AMD EPYC (family 25, model 17)"
    assert envinfo.machine_class({**zen4, "cpu_id": "family 26, model 2"}) != envinfo.machine_class(zen4)
    assert envinfo.machine_class({"cpu_model": "AMD EPYC"}) == "AMD EPYC"  # a record from before cpu_id
    assert envinfo.machine_class({**zen4, "gpu_name": "NVIDIA H200"}) == "NVIDIA H200"
    assert envinfo.machine_class({}) == "unknown"


def test_runs_of_two_generations_under_one_model_name_compare_nothing(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """The failure this guards against: a Zen 5 baseline judged a Zen 4 check (same 'AMD EPYC'), where MKL's
    relative speed differs, so four 'vs torch dense' cases read as 31-40% regressions with no code change."""
    rows = syn.inference_rows(seed=1)
    base = syn.write_run(tmp_path / "base", "inference", rows, cpu_model="AMD EPYC", cpu_id="family 26, model 2")
    new = syn.write_run(tmp_path / "new", "inference", rows, cpu_model="AMD EPYC", cpu_id="family 25, model 17")
    assert main(["compare", str(base), str(new), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {c["status"] for c in data["comparisons"]} == {"not comparable"}
    assert "'AMD EPYC (family 26, model 2)' vs 'AMD EPYC (family 25, model 17)'" in data["notes"][0]
    same = syn.write_run(tmp_path / "same", "inference", rows, cpu_model="AMD EPYC", cpu_id="family 26, model 2")
    assert main(["compare", str(base), str(same), "--format", "json"]) == 0
    assert {c["status"] for c in json.loads(capsys.readouterr().out)["comparisons"]} == {"unchanged"}


def test_a_run_records_the_cpu_generation() -> None:
    assert envinfo.capture()["cpu_id"] == envinfo.cpu_id()


def test_the_label_gives_threads_for_every_cpu_class_and_none_for_a_gpu(tmp_path: Path) -> None:
    """A CPU-only run is a CPU class even on a machine with a GPU, so its label names its threads too."""
    cpu_rows = syn.inference_rows(seed=1)
    gpu_rows = [{**row, "device": "cuda"} for row in cpu_rows]
    env = {"cpu_model": "AMD EPYC", "cpu_id": "family 25, model 17", "threads": 2}
    cases = {"cpu": (cpu_rows, {"gpu_name": None}, "AMD EPYC (family 25, model 17), 2 threads"),
             "cpu-on-gpu-host": (cpu_rows, {"gpu_name": "NVIDIA H200"}, "AMD EPYC (family 25, model 17), 2 threads"),
             "gpu": (gpu_rows, {"gpu_name": "NVIDIA H200"}, "NVIDIA H200")}
    for name, (rows, gpu, label) in cases.items():
        run = load_run(syn.write_run(tmp_path / name, "inference", rows, **env, **gpu))
        assert machine_label(run) == label, name
