"""CUDA's device semantics on a machine without a GPU, with real numbers.

``with FakeCuda():`` makes PyTorch behave, as far as device placement goes, like a machine with
one NVIDIA GPU: ``torch.cuda.is_available()`` is True, ``torch.device("cuda")`` tensors can be
made (factories, ``.to("cuda")``, ``.cuda()``, ``Module.to``), ``torch.Generator("cuda")`` exists,
and the ``torch.cuda`` functions the pack calls (memory, RNG state, capability, synchronize)
answer. Underneath, every "CUDA" tensor is a wrapper around a CPU tensor, so values are computed
for real (``.item()``, comparisons, selections and training all work), while every operation
checks its operands' devices exactly as the CUDA backend does:

* tensors of an operation must share a device — except 0-dim CPU tensors (CUDA takes them as
  scalars) and CPU index tensors of indexing ops on a CUDA tensor (CUDA moves them) — else
  ``RuntimeError: Expected all tensors to be on the same device …``, the error a GPU raises; a CUDA
  index (or mask) into a CPU tensor fails as on a GPU ("indices should be either on cpu or …");
* a generator must be on the device of the tensor it fills;
* ``numpy()`` of a CUDA tensor fails as on a GPU ("use Tensor.cpu()");
* pickling a CUDA tensor (``torch.save``) fails: a file saved from a GPU would need a GPU to load.

``FakeCuda(kernel_s=s)`` also emulates CUDA's asynchrony on a clock of its own: every operation on
the GPU queues ``s`` seconds of work and returns at once; the host waits for the queue (and
``time.perf_counter`` moves on by it) only where a GPU would make it wait — ``synchronize``, and
reading GPU memory (``item``, ``bool``, ``tolist``, a copy to the CPU). So code that times GPU work
without waiting for it is caught, whatever the real kernels cost.

What it cannot show: kernels that exist only on CUDA (their CPU twins run), CUDA's numerics and
random streams, real memory limits (``memory_allocated`` counts the bytes of live CUDA tensors),
several streams. ``tests/gpu/device_check.sh`` runs the same tests on a real GPU.
"""
from __future__ import annotations

import contextlib
import threading
import time
import types
import weakref
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
_SHELL = torch.device("meta")
CPU = torch.device("cpu")
TOTAL_MEMORY = 80 * 2**30

# operations whose operands may sit on different devices on CUDA too
_MIXED_OK = {
    torch.ops.aten.copy_.default,           # x.copy_(y) copies across devices
    torch.ops.aten._to_copy.default,        # .to(device)
    torch.ops.aten.index.Tensor,            # cuda[cpu_index]
    torch.ops.aten.index_put_.default,
    torch.ops.aten._index_put_impl_.default,
    torch.ops.aten.index_put.default,
    torch.ops.aten.set_.source_Tensor,
}
_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default,
             torch.ops.aten._index_put_impl_.default, torch.ops.aten.index_put.default}


class CudaTensor(torch.Tensor):
    """A tensor on the emulated ``cuda:0``, holding its values in a CPU tensor ``elem``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, requires_grad: bool = False):
        assert not isinstance(elem, CudaTensor) and elem.device.type == "cpu"
        t = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=_SHELL, requires_grad=requires_grad)
        t.elem = elem
        _MEMORY.track(elem)
        return t

    # PyTorch's C++ side sees a "meta" shell (so its autograd engine, which would look for a CUDA
    # driver, treats it as a device without streams); Python sees cuda:0.
    device = property(lambda self: CUDA)
    is_cuda = property(lambda self: True)
    is_cpu = property(lambda self: False)
    is_meta = property(lambda self: False)

    def get_device(self) -> int:  # noqa: D102
        return 0

    # a traceable wrapper subclass: ``Module.to`` / ``_apply`` swap it into the existing parameters
    def __tensor_flatten__(self):
        return ["elem"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return CudaTensor(inner["elem"])

    def __repr__(self, *, tensor_contents=None) -> str:  # noqa: D105
        return f"CudaTensor({self.elem!r}, device='cuda:0')"

    def numpy(self, *args, **kwargs):  # noqa: D102 - as torch raises for a CUDA tensor
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                        "to host memory first.")

    def __reduce_ex__(self, protocol):
        raise RuntimeError("fake CUDA: pickling a CUDA tensor (torch.save) writes a file that needs a GPU to load; "
                           "move it to the CPU first")

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        mode = FakeCuda.active
        if mode is None:
            raise RuntimeError(f"fake CUDA: {func} on a CUDA tensor outside `with FakeCuda()`")
        with mode.mode:
            return mode.mode.__torch_dispatch__(func, types, args, kwargs)


_TensorBase_data = torch._C.TensorBase.data


def _get_data(self: torch.Tensor) -> torch.Tensor:
    return _TensorBase_data.__get__(self)


def _set_data(self: torch.Tensor, new: torch.Tensor) -> None:
    """``t.data = new`` moving ``t`` between the CPU and the emulated GPU (``set_data`` copies only the
    tensor's metadata; the values live in ``elem``)."""
    _TensorBase_data.__set__(self, new)
    if isinstance(new, CudaTensor):
        if not isinstance(self, CudaTensor):
            is_param = isinstance(self, torch.nn.Parameter)
            self.__class__ = CudaTensor
            if is_param:
                self._is_param = True
        self.elem = new.elem
    elif isinstance(self, CudaTensor):
        is_param = getattr(self, "_is_param", False)
        del self.elem
        self.__class__ = torch.nn.Parameter if is_param else torch.Tensor


class _Memory:
    """Bytes held by live CUDA tensors (their storages, counted once), and the peak."""

    def __init__(self) -> None:
        self.live: dict[int, int] = {}
        self.peak = 0

    def track(self, elem: torch.Tensor) -> None:
        key = elem.untyped_storage().data_ptr()
        if key in self.live or not key:
            return
        self.live[key] = elem.untyped_storage().nbytes()
        self.peak = max(self.peak, self.allocated())
        weakref.finalize(elem, self.live.pop, key, None)

    def allocated(self) -> int:
        return sum(self.live.values())


_MEMORY = _Memory()
_STATE = threading.local()
_STATE.explicit_meta = 0


def _is_cuda(dev: Any) -> bool:
    return dev is not None and torch.device(dev).type == "cuda"


def _device_of(t: torch.Tensor) -> torch.device:
    return CUDA if isinstance(t, CudaTensor) else t.device


class FakeCudaGenerator(torch.Generator):
    """``torch.Generator("cuda")``: a CPU generator that says it is on ``cuda:0``."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return CUDA


_RealGenerator = torch.Generator


class _GeneratorMeta(type(torch.Generator)):
    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, _RealGenerator)


class _AnyGenerator(torch.Generator, metaclass=_GeneratorMeta):
    """What ``torch.Generator`` is while emulating: ``cuda`` makes a :class:`FakeCudaGenerator`."""

    def __new__(cls, device: Any = "cpu"):
        return FakeCudaGenerator() if _is_cuda(device) else _RealGenerator(device)


class _Mode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        leaves, _ = tree_flatten((args, kwargs))
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        _check_devices(func, args, tensors)
        target = kwargs.get("device")
        if "device" in kwargs and target is not None:
            # PyTorch's C++ side (composite ops, the autograd engine) makes tensors "on self's device": for
            # a CUDA tensor, its meta shell. Only a Python call that names "meta" itself gets a meta tensor.
            to_cuda = _is_cuda(target) or (torch.device(target).type == "meta" and not _STATE.explicit_meta)
            kwargs["device"] = CPU if to_cuda else target
        else:
            to_cuda = any(isinstance(t, CudaTensor) for t in tensors)
        unwrap = lambda x: x.elem if isinstance(x, CudaTensor) else x  # noqa: E731
        uargs, ukwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        out = func(*uargs, **ukwargs)
        fake = FakeCuda.active
        if fake is not None and fake.kernel_s:
            fake.account(func, args, tensors, to_cuda)
        if not to_cuda:
            return out
        # an in-place op returns its (wrapped) input itself
        originals = {id(unwrap(a)): a for a in tree_flatten((args, kwargs))[0] if isinstance(a, CudaTensor)}

        def wrap(x):
            if not isinstance(x, torch.Tensor) or isinstance(x, CudaTensor):
                return x
            if id(x) in originals:
                return originals[id(x)]
            return CudaTensor(x)

        return tree_map(wrap, out)


class _FunctionLevel(TorchFunctionMode):
    """What the dispatch level cannot see: a generator must be on the device it fills (checked where the
    Python object is still ours); ``tolist`` copies a CUDA tensor, ``numpy`` refuses it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.tolist, torch.Tensor.__array__) and isinstance(args[0], CudaTensor):
            if func is torch.Tensor.tolist:  # a CUDA tensor copies to a list; torch refuses it for subclasses
                if FakeCuda.active is not None:
                    FakeCuda.active.wait()
                return args[0].elem.tolist()
            args[0].numpy()
        if kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "meta":
            _STATE.explicit_meta += 1
            try:
                return func(*args, **kwargs)
            finally:
                _STATE.explicit_meta -= 1
        gen = kwargs.get("generator")
        if gen is not None:
            target = kwargs.get("device")
            if target is None:
                tensors = [t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)]
                want = "cuda" if any(isinstance(t, CudaTensor) for t in tensors) else "cpu"
            else:
                want = torch.device(target).type
            have = "cuda" if isinstance(gen, FakeCudaGenerator) else gen.device.type
            if have != want:
                raise RuntimeError(f"Expected a '{want}' device type for generator but found '{have}'")
        return func(*args, **kwargs)


def _check_devices(func, args, tensors: list[torch.Tensor]) -> None:
    if func in _MIXED_OK:
        if func in _INDEXING:  # the indexed tensor and the values share a device; indices may be on the CPU
            indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else []
            if _device_of(args[0]).type == "cpu" and any(isinstance(i, CudaTensor) for i in indices):
                raise RuntimeError("indices should be either on cpu or on the same device as the indexed tensor "
                                   f"(cpu) (fake CUDA, in {func})")
            main = [args[0]] + ([args[2]] if len(args) > 2 and isinstance(args[2], torch.Tensor) else [])
            tensors = [t for t in main if isinstance(t, torch.Tensor)]
        else:
            return
    devices = {_device_of(t) for t in tensors if not (t.device.type == "cpu" and not isinstance(t, CudaTensor)
                                                      and t.dim() == 0)}
    if len(devices) > 1:
        names = sorted(str(d) for d in devices)
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"{names[0]} and {names[1]}! (fake CUDA, in {func})")


def _props() -> Any:
    return types.SimpleNamespace(name="Fake CUDA GPU (CPU emulation)", total_memory=TOTAL_MEMORY, major=9, minor=0,
                                 multi_processor_count=132)


class FakeCuda(contextlib.AbstractContextManager):
    """Emulate one CUDA device on the CPU (see the module docstring). ``bf16=False`` makes it a
    pre-Ampere card (T4/V100): ``is_bf16_supported(including_emulation=False)`` is False.
    ``kernel_s`` > 0 emulates asynchrony: each GPU operation queues that many seconds of work
    (``launched`` counts them), paid on the host's clock where it waits (``wait``)."""

    active: "FakeCuda | None" = None

    def __init__(self, bf16: bool = True, capability: tuple[int, int] = (9, 0), devices: int = 1,
                 kernel_s: float = 0.0):
        self.bf16 = bf16
        self.kernel_s = kernel_s
        self.launched = 0           # GPU operations queued
        self.queued = 0.0           # seconds of queued work the host has not waited for
        self.waited = 0.0           # seconds the host's clock has moved on waiting for the GPU
        self.capability = capability
        self.devices = devices      # torch.cuda.device_count(); every tensor still sits on cuda:0
        self.current = 0            # torch.cuda.current_device()
        self.cached = 0             # bytes the caching allocator holds beyond live tensors
        self.mode = _Mode()
        self._stack = contextlib.ExitStack()
        self._rng: list[torch.Tensor] = [torch.get_rng_state()]

    def __enter__(self) -> "FakeCuda":
        if torch.cuda.is_available() or FakeCuda.active is not None:
            raise RuntimeError("FakeCuda is for machines without a GPU, and cannot nest")
        torch._C._ensureCUDADeviceGuardSet()  # what FakeTensorMode does: CUDA's device guard becomes a no-op
        self._lift = torch._C._only_lift_cpu_tensors()
        torch._C._set_only_lift_cpu_tensors(True)  # torch.tensor(data, device="cuda") is made on the CPU, then moved
        s = self._stack
        patch = lambda obj, name, value: s.enter_context(_patched(obj, name, value))  # noqa: E731
        c = torch.cuda
        patch(c, "_lazy_init", lambda: None)
        patch(c, "is_available", lambda: True)
        patch(c, "is_initialized", lambda: True)
        patch(c, "device_count", lambda: self.devices)
        patch(c, "current_device", lambda: self.current)
        patch(c, "set_device", self._set_device)
        patch(c, "synchronize", lambda device=None: self.wait())
        if self.kernel_s:
            real = time.perf_counter
            patch(time, "perf_counter", lambda: real() + self.waited)
        patch(c, "empty_cache", lambda: None)
        patch(c, "mem_get_info", lambda device=None: (TOTAL_MEMORY - _MEMORY.allocated() - self.cached, TOTAL_MEMORY))
        patch(c, "memory_allocated", lambda device=None: _MEMORY.allocated())
        patch(c, "max_memory_allocated", lambda device=None: _MEMORY.peak)
        patch(c, "memory_reserved", lambda device=None: _MEMORY.allocated() + self.cached)
        patch(c, "reset_peak_memory_stats", lambda device=None: setattr(_MEMORY, "peak", _MEMORY.allocated()))
        patch(c, "get_device_properties", lambda device=None: _props())
        patch(c, "get_device_name", lambda device=None: _props().name)
        patch(c, "get_device_capability", lambda device=None: self.capability)
        patch(c, "is_bf16_supported", lambda including_emulation=True: self.bf16 or including_emulation)
        patch(c, "get_rng_state", lambda device="cuda": self._rng[0].clone())
        patch(c, "get_rng_state_all", lambda: [self._rng[0].clone()])
        patch(c, "set_rng_state", lambda state, device="cuda": self._rng.__setitem__(0, state.clone()))
        patch(c, "set_rng_state_all", lambda states: self._rng.__setitem__(0, states[0].clone()))
        patch(c, "manual_seed", lambda seed: None)
        patch(c, "manual_seed_all", lambda seed: None)
        patch(torch, "Generator", _AnyGenerator)
        patch(torch.Tensor, "data", property(_get_data, _set_data))
        s.enter_context(self.mode)
        s.enter_context(_FunctionLevel())
        FakeCuda.active = self
        _MEMORY.peak = _MEMORY.allocated()
        return self

    def account(self, func, args, tensors, to_cuda: bool) -> None:
        """An operation as the GPU's queue sees it: the host reading GPU memory waits for the queue
        (a scalar read, a copy to the CPU); any other operation on the GPU joins the queue."""
        from_gpu = any(isinstance(t, CudaTensor) for t in tensors)
        reads = func is torch.ops.aten._local_scalar_dense.default or (from_gpu and not to_cuda) or (
            func is torch.ops.aten.copy_.default and from_gpu and not isinstance(args[0], CudaTensor))
        if reads:
            self.wait()
        elif to_cuda:
            self.launched += 1
            self.queued += self.kernel_s

    def wait(self) -> None:
        """The host waits until the GPU has run everything queued."""
        self.waited += self.queued
        self.queued = 0.0

    def _set_device(self, device: Any) -> None:
        index = device if isinstance(device, int) else torch.device(device).index
        if index is None or not 0 <= index < self.devices:
            raise RuntimeError(f"fake CUDA: set_device({device!r}) on a machine with {self.devices} GPU(s)")
        self.current = index

    def __exit__(self, *exc) -> None:
        FakeCuda.active = None
        self._stack.close()
        torch._C._set_only_lift_cpu_tensors(self._lift)


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)
