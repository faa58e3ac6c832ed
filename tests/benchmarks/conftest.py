"""pytest-benchmark hooks: every saved benchmark run records the torch/CUDA stack, the GPU and the thread count."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dstbench import env


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Add the software and hardware that decide kernel speed to pytest-benchmark's ``machine_info``."""
    machine_info.update({
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cupy": env.cupy_version(),
        "gpu_name": env.gpu_name(),
        "cpu_model": env.cpu_model(),
        "cpu_id": env.cpu_id(),
        "mkl": torch.backends.mkl.is_available(),
        "torch_threads": torch.get_num_threads(),
    })
