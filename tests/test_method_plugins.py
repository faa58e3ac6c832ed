"""A package outside dstbench adds a method through the ``dstbench.methods`` entry-point group, as pytest plugins do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLUGIN = '''
import torch
from torch import Tensor, nn

from dstbench.kernels.layers import CSRLinear
from dstbench.methods.mask_training import MaskedDST
from dstbench.methods.masking import top_mask
from dstbench.methods.rigl import magnitude_mask
from dstbench.registry import register_method


@register_method("plugin_magnitude")
class PluginMagnitude(MaskedDST):
    """A fixed mask of the largest initial weights, never updated; inference through CSR."""

    inference_format = "csr"
    display_name, color, marker, order = "Plugin (CSR)", "#56B4E9", "X", 90

    def sparsify_linear(self, linear: nn.Linear) -> nn.Module:
        w = linear.weight.detach()
        return CSRLinear(w * magnitude_mask(w, self.sparsity), linear.bias)

    def initial_mask(self, name: str, shape: tuple[int, int]) -> Tensor:
        return top_mask(torch.rand(shape, generator=self.generator), self.targets[name])

    def inference_linear(self, linear: nn.Linear, mask: Tensor) -> nn.Module:
        return CSRLinear(linear.weight.detach() * mask, linear.bias)
'''


def install_plugin(root: Path) -> dict[str, str]:
    """Write a tiny installed distribution (module + dist-info with the entry point) under ``root``; its environment."""
    (root / "dstbench_plugin_demo.py").write_text(PLUGIN)
    info = root / "dstbench_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dstbench-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dstbench.methods]\nplugin_magnitude = dstbench_plugin_demo\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def dstbench(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dstbench", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_an_installed_plugin_method_is_listed_and_trained(tmp_path):
    env = install_plugin(tmp_path)
    listed = dstbench(env, "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "plugin_magnitude" in listed.stdout and "dynadiag" in listed.stdout
    run = dstbench(env, "run", "--suite", "accuracy", "--methods", "dense,plugin_magnitude", "--quick", "--epochs", "2",
                   "--threads", "1", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "plugin_magnitude" in run.stdout


def test_without_the_plugin_the_method_is_unknown(tmp_path):
    done = dstbench(dict(os.environ), "run", "--suite", "accuracy", "--methods", "plugin_magnitude", "--quick",
                    "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2 and "unknown method 'plugin_magnitude'" in done.stderr
