"""Placeholder until the cuda kernels land: reports itself unavailable."""

from __future__ import annotations

import torch


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    return "the cuda kernels are not built yet"
