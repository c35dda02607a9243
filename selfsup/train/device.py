"""Device and precision choices."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from selfsup.errors import ConfigError


DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; an unavailable CUDA request is a named error, as is
    any other device (``torch.device`` knows many this library does not train on)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or not (device.type == "cuda" or str(device) == "cpu"):
        raise ConfigError(f"device {name!r}: choose {DEVICES}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this machine has no CUDA GPU; use cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → bf16 on CUDA GPUs with bf16 units, fp16 (the trainer adds a gradient scaler) on
    older GPUs, fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if name not in ("bf16", "fp16", "fp32"):
        raise ConfigError(f"precision must be auto, bf16, fp16 or fp32, got {name!r}")
    return name


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX tiles). There, bf16
    autocast makes a small CNN's step ~1.35× faster (docs/benchmarks.md, issue 17); elsewhere
    oneDNN emulates bf16 and it would only lose precision. PyTorch exposes the check privately,
    so its absence reads as no."""
    checks = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and bool(check()) for check in checks)


def autocast(device: torch.device, precision: str):
    """The autocast context for a precision (a no-op for fp32)."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
