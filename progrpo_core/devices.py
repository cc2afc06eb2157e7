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
from pathlib import Path

import torch

# The one dtype vocabulary: the short names are canonical (what a run records); the long names and
# ``half`` are accepted everywhere a dtype is named (the reward nodes offer the long ones).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
LONG_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
PRECISIONS = ("auto", *DTYPES)


def dtype_name(dtype: str | torch.dtype) -> str:
    """The canonical short name (``fp32``, ``bf16``, ``fp16``) of a dtype or any of its names."""
    if isinstance(dtype, torch.dtype):
        for k, v in DTYPES.items():
            if v == dtype:
                return k
        raise ValueError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16")
    name = str(dtype).strip().lower()
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r} unknown; expected one of {', '.join(DTYPES)} "
                         f"(or {', '.join(DTYPE_ALIASES)})")
    return name


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A dtype or any of its names as a torch dtype."""
    return DTYPES[dtype_name(dtype)]


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
    if dev.type == "mps" and "mps" not in available_devices():
        raise ValueError(f"{what}={str(name)!r}, but this PyTorch has no MPS (Apple GPU) device; this machine has: "
                         f"{', '.join(available_devices())}. Use --{what} auto (or cpu)")
    if dev.type == "meta":
        raise ValueError(f"{what}='meta' is PyTorch's shape-only device: it holds no data, so nothing can be "
                         f"sampled, scored or trained on it; use one of {', '.join(available_devices())} (or auto)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{what}={str(name)!r} is not supported; use one of {', '.join(available_devices())}")
    return dev


@dataclasses.dataclass(frozen=True)
class Precision:
    """The model's compute dtype and whether the loss needs scaling (fp16)."""

    name: str               # fp32, bf16, fp16
    dtype: torch.dtype
    grad_scaler: bool

    def scaler(self, device: torch.device):
        """A ``torch.amp.GradScaler`` for fp16 (its scale made now, so a rank whose first losses are all
        non-finite can still take part in the step), else None."""
        if not self.grad_scaler:
            return None
        scaler = torch.amp.GradScaler(device.type)
        scaler.scale(torch.zeros((), device=device))  # the scale is otherwise made at the first backward
        return scaler


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: on NVIDIA, compute capability 8.0 (Ampere) or
    newer. Not ``torch.cuda.is_bf16_supported()`` as called by default: it counts bf16 that is only
    emulated (slowly, on T4, V100, RTX 20xx) and asks about the current device, not this one."""
    if device.type == "cuda":
        if torch.version.hip:  # ROCm: ask PyTorch, on this device
            with torch.cuda.device(device):
                return torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type in ("cpu", "meta")


def auto_reward_dtype(device: str | torch.device) -> str:
    """The reward model's dtype for ``reward.dtype auto``: fp32 on the CPU, bf16 on a GPU that
    computes it natively, else fp16."""
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"
    return "bf16" if bf16_supported(device) else "fp16"


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


def memory_info(device: torch.device) -> tuple[int, int]:
    """``(free, total)`` bytes of ``device``. On CUDA, free counts what PyTorch's caching allocator
    holds but no tensor uses (the driver counts it as taken; this process can use it). On the CPU,
    free is the least of the available RAM, what the process's address-space limit (``ulimit -v``)
    leaves and what its container's memory limit (cgroup) leaves."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + max(0, int(cached)), int(total)
    free, total = _ram()
    return min([free] + [limit for limit in _process_limits() if limit is not None]), total


def memory_ceiling(device: torch.device) -> int:
    """The most memory a run on ``device`` could ever have, in bytes: the GPU's total; on the CPU
    the least of the RAM, the address-space limit (``ulimit -v``) and the cgroup's memory limit."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    limits = [_ram()[1]]
    soft = _address_space_limit()
    if soft is not None:
        limits.append(soft)
    _, limit = _cgroup(Path("/sys/fs/cgroup"))
    if limit is not None:
        limits.append(limit)
    return min(limits)


def check_memory_budget(gib: float | None, device: torch.device, what: str = "run.memory_gib") -> None:
    """Refuse a memory budget larger than the device could ever give (the planner would plan
    micro-batches that cannot be allocated)."""
    if gib is None:
        return
    ceiling = memory_ceiling(device)
    if gib * 2**30 > ceiling:
        raise ValueError(f"{what}={gib:g} GiB is more than this run can ever have on {device}: at most "
                         f"{ceiling / 2**30:.1f} GiB (its total memory, address-space and cgroup limits); give at most "
                         "that, or leave it on auto (0.9 × the memory free when the run starts)")


def _process_limits() -> list[int | None]:
    """Bytes this process may still allocate under its address-space limit and its cgroup's memory
    limit (None where there is none)."""
    soft = _address_space_limit()
    return [max(0, soft - _vm_size()) if soft is not None else None, _cgroup_room()]


def _address_space_limit() -> int | None:
    """The soft ``RLIMIT_AS`` (``ulimit -v``) in bytes, or None (none set, or Windows)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _vm_size() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_room(root: str = "/sys/fs/cgroup") -> int | None:
    """The memory limit minus the usage of this process's cgroup (v2, else v1), or None."""
    return _cgroup(Path(root))[0]


def _cgroup(root: Path) -> tuple[int | None, int | None]:
    """``(limit − usage, limit)`` of this process's cgroup (v2, else v1); ``(None, None)`` without one."""
    try:
        rel = ""
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and (parts[0] == "0" or "memory" in parts[1].split(",")):
                rel = parts[2].lstrip("/")
                break
    except OSError:
        return None, None
    for limit_name, usage_name, base in (("memory.max", "memory.current", root),
                                         ("memory.limit_in_bytes", "memory.usage_in_bytes", root / "memory")):
        for d in (base / rel, base):
            try:
                limit = (d / limit_name).read_text().strip()
                usage = int((d / usage_name).read_text().strip())
            except (OSError, ValueError):
                continue
            if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:
                return None, None
            return max(0, int(limit) - usage), int(limit)
    return None, None


def _ram() -> tuple[int, int]:
    """Available and total RAM."""
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
