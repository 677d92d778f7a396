"""bf16 autocast where the hardware runs it natively, fp32 elsewhere: one setting, one context manager.

On a CPU without bf16 instructions autocast still works but emulates bf16 and is slower than fp32, so
``auto`` turns it on only where it pays: a CUDA GPU with bf16, or a CPU with ``avx512_bf16`` or AMX.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether the CPU lists a native bf16 instruction set (Linux ``/proc/cpuinfo``; elsewhere: no)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return any(flag in flags.split() for flag in BF16_CPU_FLAGS)


def uses_bf16(precision: str, device: torch.device | str) -> bool:
    """``precision`` (``auto``, ``bf16`` or ``fp32``) on ``device`` -> whether to autocast to bf16."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def autocast(precision: str, device: torch.device | str):
    """A bf16 autocast context on ``device`` when :func:`uses_bf16` says so, else a no-op."""
    device = torch.device(device)
    if not uses_bf16(precision, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
