"""Measuring the memory a piece of work needs, on any device.

On CUDA the allocator's own peak counter is used. On the CPU (and the ``meta`` device, where shapes
are computed without data) :class:`MemoryMeter` counts the bytes of every tensor storage the work
allocates, as a ``TorchDispatchMode``: a storage counts from the op that creates it until its last
tensor is freed (saved-for-backward tensors stay alive with the graph, so they count). Views of
tensors made outside the meter, and tensors that existed before, are not counted.
"""
from __future__ import annotations

import contextlib
import time
import weakref
from typing import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class MemoryMeter(TorchDispatchMode):
    """Current and peak bytes of the storages allocated inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._bytes: dict[int, int] = {}   # storage key → bytes
        self._refs: dict[int, int] = {}    # storage key → live tensors

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if not self._refs[key]:
            self.current -= self._bytes.pop(key)
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key not in self._bytes:
                if key in inputs:
                    continue  # a view of a tensor allocated before the meter
                self._bytes[key], self._refs[key] = storage.nbytes(), 0
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self._refs[key] += 1
            weakref.finalize(t, self._release, key)
        return out


@contextlib.contextmanager
def peak_bytes(device: torch.device) -> Iterator[dict]:
    """``with peak_bytes(device) as m: work()`` → ``m["peak"]``: the extra memory the work needed
    at its peak, and ``m["seconds"]``: its wall time (CUDA synchronised)."""
    out: dict = {}
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        yield out
        torch.cuda.synchronize(device)
        out["seconds"] = time.perf_counter() - t0
        out["peak"] = max(0, torch.cuda.max_memory_allocated(device) - base)
        return
    meter = MemoryMeter()
    t0 = time.perf_counter()
    with meter:
        yield out
    out["seconds"] = time.perf_counter() - t0
    out["peak"] = meter.peak


def measure(fn: Callable[[], object], device: torch.device) -> tuple[int, float]:
    """``(peak extra bytes, seconds)`` of one call of ``fn``."""
    with peak_bytes(device) as m:
        fn()
    return int(m["peak"]), float(m["seconds"])


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
