"""Placeholder until the cpu kernels land: reports itself unavailable."""

from __future__ import annotations

import torch


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    return "the cpu kernels are not built yet"
