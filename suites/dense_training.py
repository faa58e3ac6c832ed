"""The dense training steps of the training suite: one row each, the fastest of a group the reference of its speedups.

``--dense`` chooses among (each row has method "dense"; its name, the last
part of the case id, and ``impl`` tell them apart):

* ``eager`` (row ``dense``, impl "dense"): torch's eager step, the one every
  method takes: the loss and its backward op by op (``F.linear``: MKL on x86
  CPUs, cuBLAS on CUDA), then ``torch.optim.SGD.step``. Always timed: it is
  the reference of ``speedup_vs_torch_dense``.
* ``compiled`` (row ``dense-compiled``, impl "inductor"): the same model,
  loss and optimizer, with the loss (forward, and through AOTAutograd its
  backward) and ``optimizer.step`` compiled by ``torch.compile`` (inductor:
  the same GEMMs, the elementwise work and the SGD update fused into
  generated C++/OpenMP kernels, Triton on CUDA). It compiles in its first
  steps, before the warm-up and the timed blocks.
* ``onednn`` (row ``dense-onednn``, impl "onednn"): every ``nn.Linear``
  runs oneDNN's linear forward and backward (``torch._C._nn.mkldnn_linear``;
  x is reordered to oneDNN's layout on every call, the weight and its
  gradient stay dense torch tensors); CPU only, where torch has oneDNN.

Every row but eager is checked against eager before it is timed
(``mismatch``): its first steps from the same initialisation must give the
same losses, gradients and parameters within float tolerance.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstbench.errors import UserError

EAGER, COMPILED, ONEDNN = "dense", "dense-compiled", "dense-onednn"
#: --dense choice -> row name
CHOICES = {"eager": EAGER, "compiled": COMPILED, "onednn": ONEDNN}
#: row name -> the impl its rows record
IMPLS = {EAGER: "dense", COMPILED: "inductor", ONEDNN: "onednn"}
#: the tolerance of ``mismatch`` (float32 sums in another order)
RTOL, ATOL = 1e-4, 1e-6


def available(device: str) -> list[str]:
    """The --dense choices that can run on ``device``."""
    return [choice for choice in CHOICES if not (choice == "onednn" and (device != "cpu"
                                                                         or not torch.backends.mkldnn.is_available()))]


def parse(text: str, device: str, given: bool = True) -> list[str]:
    """--dense -> row names, eager first (always included); UserError for an unknown choice, or for one that cannot
    run on ``device`` if ``given`` (a preset, not given, drops those)."""
    choices = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in choices if c not in CHOICES]
    if unknown or not choices:
        raise UserError(f"--dense takes names among {', '.join(CHOICES)}, got {text!r}")
    if not given:
        choices = [c for c in choices if c in available(device)]
    missing = [c for c in choices if c not in available(device)]
    if missing:
        raise UserError(f"--dense {missing[0]} cannot run on {device} here (oneDNN trains on the CPU only, where torch "
                        f"has it); choose among {', '.join(available(device))}")
    return [CHOICES[c] for c in dict.fromkeys(["eager", *choices])]


def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The training loss of every step: cross-entropy of ``model(x)`` (B, classes) against labels ``y`` (B,)."""
    return F.cross_entropy(model(x), y)


@functools.cache
def compiled_loss() -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """``loss`` compiled whole (``fullgraph``), one wrapper per process (made on first use: torch.compile imports
    its compiler, seconds)."""
    return torch.compile(loss, fullgraph=True)


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters) whose forward and backward run oneDNN: x (..., in) -> (..., out)."""

    @classmethod
    def of(cls, linear: nn.Linear) -> "OneDNNLinear":
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).contiguous().to_mkldnn()
        y = torch._C._nn.mkldnn_linear(flat, self.weight, self.bias).to_dense()
        return y.reshape(*x.shape[:-1], self.out_features)


def with_onednn(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Linear`` replaced, in place, by a ``OneDNNLinear`` holding the same parameters."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Linear:
                setattr(module, name, OneDNNLinear.of(child))
    return model


def build_model(name: str, model: nn.Module) -> nn.Module:
    """The model row ``name`` trains (before the method prepares it)."""
    return with_onednn(model) if name == ONEDNN else model


def step_functions(name: str, optimizer: torch.optim.Optimizer
                   ) -> tuple[Callable[[nn.Module, Tensor, Tensor], Tensor], Callable[[], object]]:
    """(loss function, optimizer update) of a step of row ``name``; compiled for ``dense-compiled``."""
    if name == COMPILED:
        return compiled_loss(), torch.compile(optimizer.step)
    return loss, optimizer.step


def mismatch(ref: nn.Module, other: nn.Module, ref_losses: Iterable[Tensor], losses: Iterable[Tensor]) -> str | None:
    """Where two models trained the same steps disagree (losses, then each gradient and parameter), or None."""
    pairs = [("loss", torch.stack(list(ref_losses)), torch.stack(list(losses)))]
    for (name, a), (_, b) in zip(ref.named_parameters(), other.named_parameters()):
        pairs += [(f"{name} gradient", a.grad, b.grad), (name, a, b)]
    for what, a, b in pairs:
        if (a is None) != (b is None) or a is not None and not torch.allclose(a, b, rtol=RTOL, atol=ATOL):
            gap = "one is missing" if a is None or b is None else f"max abs difference {(a - b).abs().max().item():.3g}"
            return f"{what} differs ({gap})"
    return None


def fresh_compiles() -> None:
    """Forget this process's compiled graphs (``torch._dynamo.reset``), before a group compiles its model copies.

    Each new optimizer adds graphs of ``SGD.step``; past dynamo's recompile
    limit (8 per function) a function would silently run eagerly. The copies
    compile again from inductor's on-disk cache.
    """
    torch._dynamo.reset()
