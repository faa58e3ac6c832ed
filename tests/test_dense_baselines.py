"""The dense implementations of the inference suite (oneDNN, OpenBLAS) and how runs holding several dense rows per
group are compared and reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import synthetic_runs as syn
from dstbench import compare
from dstbench.cli import main
from dstbench.errors import UserError
from dstbench.runs import load_run
from dstbench.suites import dense_baselines

ONE_CASE = {"b16-fc1": (768, 3072)}
#: OpenBLAS 3x and oneDNN 1.2x as fast as torch's dense: OpenBLAS is the reference of speedup_vs_dense
DENSE = {"onednn": 1.2, "openblas": 3.0}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", sorted(dense_baselines.BUILDERS))
def test_each_dense_implementation_computes_the_linear(name: str, bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(24, 40, bias=bias)
    layer = dense_baselines.BUILDERS[name](linear)
    assert (layer.in_features, layer.out_features, layer.nnz) == (24, 40, 24 * 40)
    with torch.inference_mode():
        for shape in ((1, 24), (5, 24), (2, 3, 24)):
            x = torch.randn(shape)
            y = layer(x)
            assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
            torch.testing.assert_close(y, linear(x), rtol=1e-5, atol=1e-5)


def test_openblas_reads_the_linears_own_weight_and_needs_float32() -> None:
    linear = nn.Linear(8, 16)
    layer = dense_baselines.OpenBLASLinear(linear)
    assert layer.impl == "openblas"
    assert np.shares_memory(layer._weight_t, linear.weight.detach().numpy())
    with pytest.raises(RuntimeError, match="float32 CPU"):
        dense_baselines.OpenBLASLinear(nn.Linear(8, 16).to(torch.bfloat16))


def test_candidates_per_device_and_dtype() -> None:
    onednn = [dense_baselines.ONEDNN] if torch.backends.mkldnn.is_available() else []
    assert dense_baselines.candidates("cpu", torch.float32) == ["dense", *onednn, "dense-openblas"]
    assert dense_baselines.candidates("cpu", torch.bfloat16) == ["dense", *onednn]
    assert dense_baselines.candidates("cuda", torch.float32) == ["dense"]


def compare_runs(tmp_path: Path, base_rows: list[dict], new_rows: list[dict]) -> compare.Result:
    base = syn.write_run(tmp_path / "base", "inference", base_rows)
    new = syn.write_run(tmp_path / "new", "inference", new_rows)
    return compare.compare_runs(load_run(base), load_run(new))


def outcomes(result: compare.Result) -> dict[tuple[str, str, str], tuple[str, str]]:
    return {(c.case, c.method, c.metric): (c.status, c.note) for c in result.comparisons}


def test_compare_pairs_each_ratio_with_its_own_dense_row(tmp_path: Path) -> None:
    """OpenBLAS made 1.5x slower, still the fastest: every speedup vs dense improves, none vs torch's dense does.

    Paired with torch's row instead, the per-round speedups would not move
    and the change would not be significant.
    """
    rows = syn.inference_rows(seed=1, cases=ONE_CASE, dense=DENSE)
    assert {r["dense_impl"] for r in rows} == {"openblas"} and sum(r["method"] == "dense" for r in rows) == 2 * 3
    new_rows = syn.inference_rows(seed=2, cases=ONE_CASE, dense=DENSE, slow={"dense-openblas": 1.5})
    assert {r["dense_impl"] for r in new_rows} == {"openblas"}
    result = compare_runs(tmp_path, rows, new_rows)
    by_metric: dict[str, set[str]] = {}
    for comp in result.comparisons:
        by_metric.setdefault(comp.metric, set()).add(comp.status)
    assert by_metric == {"vs dense": {"improved"}, "vs torch dense": {"unchanged"}, "vs CSR": {"unchanged"}}
    assert {c.method for c in result.comparisons} == {"rigl", "srigl", "dynadiag"}  # dense rows are references only
    assert len(result.comparisons) == 2 * (3 + 3 + 2)


def test_a_different_fastest_dense_makes_vs_dense_not_comparable_and_vs_torch_dense_still_judged(tmp_path: Path) -> None:
    base_rows = syn.inference_rows(seed=1, cases=ONE_CASE, dense=DENSE)
    new_rows = syn.inference_rows(seed=2, cases=ONE_CASE, dense={"onednn": 4.0, "openblas": 3.0},
                                  slow={"dynadiag": 2.0})
    found = outcomes(compare_runs(tmp_path, base_rows, new_rows))
    assert found[("b16-fc1 768x3072 s=0.9 b=1", "dynadiag", "vs dense")] == (
        "not comparable", "dense impl openblas -> onednn")
    assert found[("b16-fc1 768x3072 s=0.9 b=1", "dynadiag", "vs torch dense")][0] == "regressed"
    assert found[("b16-fc1 768x3072 s=0.9 b=1", "srigl", "vs torch dense")][0] == "unchanged"


def test_a_run_before_the_dense_implementations_compares_with_one_after(tmp_path: Path) -> None:
    """A base run with torch's dense only (no dense_impl): vs dense is paired with its only dense row."""
    found = outcomes(compare_runs(tmp_path, syn.inference_rows(seed=1, cases=ONE_CASE),
                                  syn.inference_rows(seed=2, cases=ONE_CASE, dense=DENSE)))
    assert found[("b16-fc1 768x3072 s=0.9 b=1", "srigl", "vs dense")] == ("not comparable", "dense impl mkl -> openblas")
    assert found[("b16-fc1 768x3072 s=0.9 b=1", "srigl", "vs torch dense")] == (
        "not comparable", "new case (not in the base run)")
    assert found[("b16-fc1 768x3072 s=0.9 b=1", "srigl", "vs CSR")][0] == "unchanged"


def test_two_dense_rows_of_one_impl_are_a_user_error(tmp_path: Path) -> None:
    rows = syn.inference_rows(cases=ONE_CASE, batches=(1,), dense=DENSE)
    openblas = next(r for r in rows if r["impl"] == "openblas")
    twice = syn.write_run(tmp_path / "twice", "inference", rows + [{**openblas, "case_id": "other"}])
    with pytest.raises(UserError, match="records dense twice"):
        compare.compare_runs(load_run(twice), load_run(twice))


def test_report_lists_every_dense_row_with_its_kernel(tmp_path: Path) -> None:
    run = syn.write_run(tmp_path / "run", "inference", syn.inference_rows(seed=1, cases=ONE_CASE, dense=DENSE))
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    table = (out / "tables" / "inference.md").read_text().splitlines()
    dense = [line for line in table if line.split(" | ")[4:5] == ["dense"]]  # the method column
    assert len(dense) == 2 * 3
    assert {line.split(" | ")[5] for line in dense} == {"mkl", "onednn", "openblas"}  # the kernel column
    fastest = next(line for line in dense if "768→3072 | 1 |" in line and line.split(" | ")[8].startswith("1.00×"))
    assert "| dense | openblas |" in fastest and fastest.split(" | ")[9] == "openblas"  # the dense column names it
