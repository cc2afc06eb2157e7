"""Quantized base weights: what a MODEL's weights are stored as, and what training over them needs.

ComfyUI's UNet loader stores weights in fp8 (``weight_dtype fp8_e4m3fn`` / ``fp8_e5m2``) and its ops
cast each layer to the compute dtype as it runs; ComfyUI-GGUF (city96) stores them as GGUF blocks
(``GGMLTensor``, Q8_0, Q4_K, …) and dequantises each layer as it runs. The LoRA branch sits on the
layer's output (:class:`~.lora.LoraBranch`), in the compute dtype, on top of either: the stored
weights are never written, only read through the host's own casting.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch import nn


def storage(net: nn.Module) -> str:
    """How the network's Linear weights are stored, e.g. ``"float32"``, ``"float8_e4m3fn"``,
    ``"GGUF Q4_K ×12, F32 ×3"``."""
    kinds: Counter = Counter()
    for m in net.modules():
        w = getattr(m, "weight", None) if isinstance(m, nn.Linear) else None
        if w is None:
            continue
        qtype = getattr(w, "tensor_type", None)
        kinds[f"GGUF {getattr(qtype, 'name', qtype)}" if qtype is not None else str(w.dtype).replace("torch.", "")] += 1
    if len(kinds) == 1:
        return next(iter(kinds))
    return ", ".join(f"{k} ×{n}" for k, n in kinds.most_common())


def make_gguf_probeable(net: nn.Module) -> None:
    """Let ComfyUI-GGUF's layers run under a torch dispatch mode (the planner's memory and FLOP
    probes) as they run outside one. GGUF strips its tensor subclass (``GGMLTensor``) from a
    dequantised weight and from a layer's output with ``torch.Tensor(t)``. Under a dispatch mode
    torch hands the subclass back from that call, and Python then calls ``GGMLTensor.__init__``
    without the ``tensor_type``/``tensor_shape`` keywords it requires (a TypeError); were that
    allowed, subclass activations would flow on and make gradient checkpointing's recomputation save
    other tensors than the forward did (a CheckpointError). So such an ``__init__`` call — made by
    torch for ``torch.Tensor(t)``, never by ComfyUI-GGUF, which always passes both — turns the new
    tensor into a plain tensor, as ``torch.Tensor(t)`` gives outside a mode. Other calls are
    unchanged."""
    for p in net.parameters():
        cls = type(p)
        if cls.__name__ != "GGMLTensor" or getattr(cls, "_progrpo_probeable", False):
            continue
        original = cls.__init__

        def __init__(self, *args, original=original, **kwargs):
            if "tensor_type" in kwargs and "tensor_shape" in kwargs:
                return original(self, *args, **kwargs)
            self.__class__ = torch.Tensor  # what torch.Tensor(t) is outside a dispatch mode

        cls.__init__ = __init__
        cls._progrpo_probeable = True
        return
