"""Argument checks shared by the compiled backends (``kernels.cpu``, ``kernels.cuda``)."""

from __future__ import annotations

from torch import Tensor

from dstbench.errors import UserError


def check_bias(bias: Tensor | None, like: Tensor, out_features: int) -> Tensor | None:
    """``bias`` as a contiguous (out_features,) tensor of ``like``'s dtype and device, or None.

    Raises:
        UserError: another shape, dtype or device.
    """
    if bias is None:
        return None
    if bias.shape != (out_features,) or bias.dtype != like.dtype or bias.device != like.device:
        raise UserError(f"bias must be a ({out_features},) {like.dtype} tensor on {like.device}, "
                        f"got {tuple(bias.shape)} {bias.dtype} on {bias.device}")
    return bias.contiguous()
