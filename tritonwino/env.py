"""What machine and software a result came from: the one home of device names and versions.

Every result row, the tuning cache's file name and ``tritonwino info`` take their device and
version strings from here, so they always agree.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from importlib import metadata

import torch

from .kernels._common import interpreting

__all__ = [
    "cpu_model",
    "cuda_available",
    "device_name",
    "environment",
    "interpreting",
    "package_version",
    "versions",
]


def package_version(dist: str) -> str:
    """Installed version of the distribution ``dist`` (``"not installed"`` if absent)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """Python, torch, triton, tritonwino and numpy versions."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "tritonwino": package_version("tritonwino"),
        "numpy": package_version("numpy"),
    }


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (or what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device | str) -> str:
    """Human name of ``device``: the GPU's name, or ``"CPU <model>"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()}"


def environment(device: torch.device | str) -> dict:
    """Metadata every result row carries: device, versions, threads, TF32, timer, timestamp."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    v = versions()
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": v["torch"],
        "triton": v["triton"],
        "tritonwino": v["tritonwino"],
        "threads": torch.get_num_threads(),
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else False,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if cuda else False,
        "timer": "cuda-do_bench" if cuda else "cpu-perf_counter",
        "triton_interpret": interpreting(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
    }
