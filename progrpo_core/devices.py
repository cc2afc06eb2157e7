"""Devices and precision: which device a run uses, in which dtype the model computes, and how
much memory the device has.

* ``run.device auto`` is CUDA when PyTorch sees a GPU, else the CPU.
* ``run.precision auto`` is bf16 on a GPU that supports it, fp16 (with loss scaling) on one that
  does not, and fp32 on the CPU (low precision saves nothing there). fp16 trains only with a
  ``torch.amp.GradScaler``: the policy gradient reaching the model is far below fp16's smallest
  normal number (about 1e-9 against 6e-5) and would be flushed to zero without it.

Whatever the model computes in, the LoRA's parameters, their gradients, the optimizer state and
the EMA stay float32, and the sampler's step math and log-probabilities are float32.
"""
from __future__ import annotations

import dataclasses

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def available_devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


def resolve_device(name: str | torch.device, what: str = "run.device") -> torch.device:
    """``auto`` → CUDA if available, else CPU; anything else must exist on this machine."""
    if str(name) == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what}={str(name)!r} is not a device; this machine has: "
                         f"{', '.join(available_devices())} (or auto)") from None
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index is not None and dev.index >= torch.cuda.device_count())):
        raise ValueError(f"{what}={str(name)!r}, but PyTorch sees no such GPU; this machine has: "
                         f"{', '.join(available_devices())}. Use --{what} auto (or cpu)")
    if dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ValueError(f"{what}={str(name)!r} is not supported; use one of {', '.join(available_devices())}")
    return dev


@dataclasses.dataclass(frozen=True)
class Precision:
    """The model's compute dtype and whether the loss needs scaling (fp16)."""

    name: str               # fp32, bf16, fp16
    dtype: torch.dtype
    grad_scaler: bool

    def scaler(self, device: torch.device):
        """A ``torch.amp.GradScaler`` for fp16, else None."""
        return torch.amp.GradScaler(device.type) if self.grad_scaler else None


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type in ("cpu", "meta")


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto`` / ``fp32`` / ``bf16`` / ``fp16`` for ``device`` (see the module docstring)."""
    if name not in PRECISIONS:
        raise ValueError(f"run.precision={name!r} unknown; expected one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type != "cuda":
            name = "fp32"
        else:
            name = "bf16" if bf16_supported(device) else "fp16"
    if name == "bf16" and not bf16_supported(device):
        raise ValueError(f"run.precision=bf16, but {device} has no bfloat16 support; use fp16 (trained with loss "
                         "scaling) or fp32")
    return Precision(name, DTYPES[name], grad_scaler=name == "fp16")


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).replace("torch.", ""))


def memory_info(device: torch.device) -> tuple[int, int]:
    """``(free, total)`` bytes of ``device`` (the CPU: available and total RAM)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                info[k] = int(v.split()[0]) * 1024
        return info.get("MemAvailable", info.get("MemFree", 0)), info.get("MemTotal", 0)
    except (OSError, ValueError):
        import os

        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages // 2, pages
