"""Rows of several prompts in one model call.

ComfyUI applies a conditioning to every row of a call, so the host denoiser used to call the
model once per prompt: after pruning leaves 12 rows of each of 8 prompts, a micro-batch of 32
became 8 calls of 12. A processed conditioning whose tensors have one row per latent row is
ComfyUI's own batched form (``CONDRegular.process_cond`` keeps a tensor whose batch already
matches), so prompts whose conditionings differ only in their tensors' values can share a call:
:func:`pack` stacks each prompt's tensors once per row of that prompt.

Anything that is not the plain case — several entries in a prompt's list (combined or scheduled
conditionings), areas, masks, ControlNets, GLIGEN, hooks, timestep ranges or strengths that differ
between prompts, tensors of other shapes or batches — returns None, and the caller calls the model
once per prompt as before.
"""
from __future__ import annotations

from typing import Sequence

import torch

# keys of a processed conditioning entry that make its effect depend on the row or call
_UNPACKABLE = ("area", "mask", "control", "gligen", "hooks")
# keys ComfyUI's get_area_and_mult reads that must be the same for every prompt of a packed call
_SHARED = ("timestep_start", "timestep_end", "strength", "mask_strength")


def pack(entries: Sequence[list], counts: Sequence[int]) -> list | None:
    """One processed conditioning list for a call holding ``counts[i]`` rows of prompt ``i``, in
    order, from each prompt's processed list ``entries[i]``; None when they cannot share a call."""
    if len(entries) != len(counts) or any(len(e) != 1 for e in entries):
        return None
    firsts = [e[0] for e in entries]
    base = firsts[0]
    if any(base.get(k) is not None for k in _UNPACKABLE):
        return None
    for e in firsts[1:]:
        if any(e.get(k) is not None for k in _UNPACKABLE):
            return None
        if any(not _same(e.get(k), base.get(k)) for k in _SHARED):
            return None
        if e["model_conds"].keys() != base["model_conds"].keys():
            return None
    model_conds = {}
    for name, c0 in base["model_conds"].items():
        parts = [e["model_conds"][name] for e in firsts]
        packed = _pack_one(parts, counts)
        if packed is None:
            return None
        model_conds[name] = packed
    return [{**base, "model_conds": model_conds}]


def _pack_one(parts: list, counts: Sequence[int]):
    """One model condition (a ``comfy.conds`` object) for the packed rows, or None."""
    import comfy.conds

    c0 = parts[0]
    if any(type(c) is not type(c0) for c in parts):
        return None
    if all(_same(c.cond, c0.cond) for c in parts[1:]):
        # the same for every prompt (a guidance value, an empty negative, a constant): as it is —
        # unless it is a per-row tensor of another batch, which ComfyUI would repeat differently
        return c0 if not torch.is_tensor(c0.cond) or c0.cond.shape[0] == 1 else None
    if type(c0) not in (comfy.conds.CONDRegular, comfy.conds.CONDCrossAttn, comfy.conds.CONDNoiseShape):
        return None
    tensors = [c.cond for c in parts]
    if not all(torch.is_tensor(t) and t.ndim >= 1 and t.shape[0] == 1 and t.shape == tensors[0].shape
               for t in tensors):
        return None
    return c0._copy_with(torch.cat([t.expand(n, *t.shape[1:]) for t, n in zip(tensors, counts)]))


def _same(a, b) -> bool:
    import comfy.conds

    return bool(comfy.conds.is_equal(a, b))
