"""Gradient checkpointing at a module depth, for any network.

``enable(net, depth)`` wraps the ``forward`` of the modules at ``depth`` so that, when gradients are
recorded, only their inputs are kept and their insides are recomputed in backward. Depth counts
modules with a forward of their own, looking through containers (``ModuleList``, ``Sequential``,
``ModuleDict``): depth 1 is the network's blocks — a UNet's ResBlocks and transformers (inside
ComfyUI's ``TimestepEmbedSequential``, which is a ``Sequential``), SD3's joint blocks, Flux's
double and single blocks; depth 2 their parts. Patching the blocks' ``forward`` works for any
caller, including loops that call ``layer(x, emb, …)`` directly, because ``nn.Module.__call__``
dispatches to the instance's ``forward``.

Blocks that update their inputs in place (Flux: ``img += …``) would change what the recomputation
sees, so the checkpointed forward works on copies of its tensor inputs.
"""
from __future__ import annotations

import contextvars

import torch
from torch import nn

_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)
_KEPT = contextvars.ContextVar("progrpo_checkpoint_inputs", default=None)  # a list while saved_bytes counts


def modules_at_depth(net: nn.Module, depth: int) -> list[nn.Module]:
    """The modules ``depth`` levels below ``net`` (containers do not count as a level)."""
    out: list[nn.Module] = []

    def walk(m: nn.Module, level: int) -> None:
        for child in m.children():
            if isinstance(child, _CONTAINERS):
                walk(child, level)
            elif level + 1 == depth:
                out.append(child)
            else:
                walk(child, level + 1)

    if depth >= 1:
        walk(net, 0)
    return out


def enable(net: nn.Module, depth: int) -> list[nn.Module]:
    """Checkpoint the modules at ``depth`` (0 = nothing); returns them (for :func:`disable`)."""
    patched = []
    for m in modules_at_depth(net, depth):
        if not hasattr(m, "_progrpo_forward") and any(True for _ in m.parameters()):
            _patch(m)
            patched.append(m)
    return patched


def disable(modules: list[nn.Module]) -> None:
    for m in modules:
        if hasattr(m, "_progrpo_forward"):
            m.forward = m._progrpo_forward
            del m._progrpo_forward


def _patch(m: nn.Module) -> None:
    from torch.utils.checkpoint import checkpoint

    org = m.forward

    def fwd(args, kwargs):
        args = [a.clone() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        kwargs = {k: (v.clone() if isinstance(v, torch.Tensor) and v.is_floating_point() and k in ("x", "img", "txt")
                      else v) for k, v in kwargs.items()}
        return org(*args, **kwargs)

    def checkpointed(*args, **kwargs):
        if not torch.is_grad_enabled():
            return org(*args, **kwargs)
        kept = _KEPT.get()
        if kept is not None:  # the inputs a checkpoint keeps for its recomputation
            kept.extend(t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor))
        return checkpoint(fwd, args, kwargs, use_reentrant=False)

    m._progrpo_forward = org
    m.forward = checkpointed


def saved_bytes(fn) -> int:
    """Bytes autograd keeps for backward while ``fn()`` runs: the tensors saved for backward
    (``saved_tensors_hooks``) plus the inputs each checkpointed module keeps for its
    recomputation (inside a checkpoint, the saved tensors are placeholders, not counted)."""
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    kept: list[torch.Tensor] = []
    token = _KEPT.set(kept)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
    finally:
        _KEPT.reset(token)
    return total + sum(t.numel() * t.element_size() for t in kept)
