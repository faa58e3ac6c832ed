"""One --methods / --option grammar for every suite: NAME[:KEY=VALUE...], values typed and checked at parse time."""

from __future__ import annotations

import pytest

from dstbench import registry
from dstbench.cli import main
from dstbench.errors import UserError
from dstbench.suites.method_specs import MethodSpec, parse_methods, parse_options, parse_value, with_baselines


def test_values_and_options():
    assert parse_value("false") is False and parse_value("None") is None
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("erk") == "erk"
    common, scoped = parse_options(["delta_t=7", "srigl.ablation=false"])
    assert common == {"delta_t": 7} and scoped == {"srigl": {"ablation": False}}
    spec, = parse_methods("srigl:ablation=false:gamma_sal=0.9")
    assert (spec.label, spec.method, spec.options) == ("srigl:ablation=false:gamma_sal=0.9", "srigl",
                                                       {"ablation": False, "gamma_sal": 0.9})


@pytest.mark.parametrize("bad, message", [
    ("nosuch", "unknown method 'nosuch'"), ("srigl:ablation", "takes KEY=VALUE"), ("rigl,rigl", "with repeats"),
    ("srigl:ablation=maybe", "option ablation takes true or false, got 'maybe'"),
    ("dynadiag:delta_t=5", "has no option(s) delta_t"), ("", "--methods is empty"),
])
def test_bad_specs_are_one_line_errors(bad, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_methods(bad)


def test_baselines_come_first_and_default_to_the_registry():
    assert [s.label for s in with_baselines(["dense", "rigl"], "srigl:ablation=false,rigl")] == [
        "dense", "rigl", "srigl:ablation=false"]
    assert [s.label for s in with_baselines(["dense"], None)] == registry.list_methods()
    assert with_baselines([], "set")[0] == MethodSpec("set", "set")


@pytest.mark.parametrize("suite", ["inference", "training", "accuracy"])
def test_every_suite_refuses_a_bad_value_in_one_line(suite, tmp_path, capsys):
    assert main(["run", "--suite", suite, "--methods", "srigl:ablation=maybe", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "option ablation takes true or false, got 'maybe'" in err[0]
    assert not (tmp_path / "r").exists()


def test_inference_rows_carry_the_spec_label(tmp_path):
    from dstbench import records  # noqa: PLC0415

    argv = ["run", "--suite", "inference", "--cases", "32x48", "--sparsity", "0.5", "--batch", "2", "--rounds", "2",
            "--min-time", "0.001", "--no-e2e", "--threads", "1", "--methods", "srigl:gamma_sal=0.5",
            "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    methods = [row["method"] for row in records.read_rows(tmp_path / "r")]
    assert methods[-1] == "srigl:gamma_sal=0.5" and "rigl" in methods
