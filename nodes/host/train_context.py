"""The context training happens in inside the host: out of inference mode, on a clone of the
MODEL, with ``in_training`` set, all undone on exit. (Gradient checkpointing and the LoRA branches
are put on by the core's trainer and the adapter, and taken off by them.)"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch

log = logging.getLogger("progrpo")


@contextlib.contextmanager
def training_model(model) -> Iterator[tuple[Any, bool]]:
    """Yield ``(patcher, shares_weights)``: a clone of MODEL ready for training, out of inference
    mode, with ``comfy.model_management.in_training`` set. On exit — also on error or interrupt —
    the flag is restored and the clone left for garbage collection; the MODEL given is never
    modified. ``shares_weights`` is True when the host could not deep-copy the model (older
    ComfyUI): the clone then shares the base weights (inference tensors) and modules, and the caller
    must have every weight copied on use (``copy_other_weights``) and undo what it attached."""
    import comfy.model_management as mm

    had_flag = hasattr(mm, "in_training")
    old_flag = getattr(mm, "in_training", False)
    with torch.inference_mode(False):
        mp, shares = _clone_for_training(model)
        try:
            mp.model.requires_grad_(False)
            mm.in_training = True  # fused kernels without autograd (e.g. RoPE) are skipped in training
            yield mp, shares
        finally:
            if had_flag:
                mm.in_training = old_flag
            elif hasattr(mm, "in_training"):
                del mm.in_training
            mp.model.eval()


def _clone_for_training(model) -> tuple[Any, bool]:
    try:  # ComfyUI >= 0.4: reload the weights outside inference mode
        return model.clone(force_deepcopy=True), False
    except TypeError:  # no force_deepcopy in this ComfyUI
        pass
    except RuntimeError as e:  # a MODEL not made by a standard loader cannot be reloaded
        log.info("ProGRPO: cannot deep-copy the MODEL (%s); training on a weight-sharing clone", e)
    return model.clone(), True
