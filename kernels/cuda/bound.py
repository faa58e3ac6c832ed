"""Forward products bound to one layer's buffers on CUDA: checked once, then one planned launch per call.

The checked entry points of ``kernels.cuda`` validate every argument on
every call (dtypes, devices, shapes, the pattern through its cache), and
``launches`` rebuilds the launch (grid, tile choice, 32-bit size
arguments) each time: tens of microseconds of host work, more than a
batch-1 kernel takes on the device. A ``BoundProduct`` checks the layer's
buffers once, when it is made, and for each batch size plans the launch
once: the first call records the launch that ``launches`` makes, and later
calls replay it with only x's and y's pointers filled in
(``loader.Prepared``). A call whose launch cannot be replayed that way (one
that reads a copy of x, such as the condensed product's transposed x for
inputs too wide to stage) runs ``launches`` each time, still unchecked. Any
x the fast check does not take goes to the checked entry point, which
handles it or raises its one-line UserError. After an in-place change of a
bound buffer (its version moved, as ``load_state_dict`` does) the buffers
are checked and bound again before the call.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from torch import Tensor

from dstbench.kernels.cuda import launches, loader

#: a batch size whose launch is not replayed (see the module docstring)
UNPLANNED = object()


class Binding(NamedTuple):
    """One check of a layer's buffers.

    Attributes:
        product: ``(x, runner) -> y``, the ``launches`` product of the checked buffers (no checks).
        output: ``(x, batch) -> y``, y as ``product`` allocates it (initialised where the kernel leaves columns).
        fallback: ``x -> y``, the checked entry point with the same buffers.
        weights: the tensors ``product`` passes to its kernel (checked copies or the buffers themselves).
    """

    product: Callable[[Tensor, launches.Runner], Tensor]
    output: Callable[[Tensor, int], Tensor]
    fallback: Callable[[Tensor], Tensor]
    weights: tuple[Tensor | None, ...]


class BoundProduct:
    """y (B, out) = x (B, in) @ W.T (+ bias) for one layer's checked buffers (see the module docstring).

    Args:
        bind: checks the buffers and returns their ``Binding``; raises UserError for a bad one.
        sources: the layer's buffers (None for a missing bias), whose versions are watched.
    """

    __slots__ = ("_bind", "_sources", "_versions", "_binding", "_plans", "in_features", "out_features", "_dtype",
                 "_device")

    def __init__(self, bind: Callable[[], Binding], sources: tuple[Tensor | None, ...], in_features: int,
                 out_features: int) -> None:
        self._bind, self._sources = bind, sources
        self.in_features, self.out_features = in_features, out_features
        values = next(t for t in sources if t is not None and t.is_floating_point())
        self._dtype, self._device = values.dtype, values.device
        self._rebind()

    def _rebind(self) -> None:
        self._binding = self._bind()
        self._versions = self._stamp()
        self._plans: dict[int, object] = {}

    def _stamp(self) -> tuple[int, ...]:
        return tuple(-1 if t is None else t._version for t in self._sources)

    def __call__(self, x: Tensor) -> Tensor:
        shape = x.shape  # read once: each query of x is a call into torch
        binding = self._binding
        if (x.dtype is not self._dtype or len(shape) != 2 or shape[1] != self.in_features or not shape[0]
                or x.device != self._device or not x.is_contiguous()):
            return binding.fallback(x)
        if self._stamp() != self._versions:  # a bound buffer changed in place: check and bind it again
            self._rebind()
            binding = self._binding
        plan = self._plans.get(shape[0])
        if plan is None:
            return self._plan(x)
        if plan is UNPLANNED:
            return binding.product(x, loader.run)
        y = binding.output(x, shape[0])
        plan(x, y)
        return y

    def _plan(self, x: Tensor) -> Tensor:
        """The first call at x's batch size: run it, and keep its launch for replay when it has exactly one,
        which reads x, writes y and otherwise only the bound weights."""
        recorded: list[launches.Launch] = []
        y = self._binding.product(x, recorded.append)
        bound = {id(t) for t in self._binding.weights if t is not None}
        replayable = len(recorded) == 1 and all(
            a is x or a is y or id(a) in bound for a in recorded[0].args if isinstance(a, Tensor))
        self._plans[x.shape[0]] = loader.Prepared(recorded[0], x, y) if replayable else UNPLANNED
        for launch in recorded:
            loader.run(launch)
        return y
