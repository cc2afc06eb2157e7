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
        log.info("ProGRPO: training a %s copy of the %s%s", type(mp).__name__, type(model).__name__,
                 " (weights shared)" if shares else "")
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
    """A copy whose weights the trainer controls. Under dynamic VRAM (ComfyUI 0.33 on NVIDIA, the
    default) the MODEL is a ``ModelPatcherDynamic``: its weights stream through reused cast buffers
    and are never all on the GPU, so tensors autograd saved for backward could be overwritten; the
    training copy is always a plain ``ModelPatcher`` (``disable_dynamic``), loaded whole."""
    dynamic = bool(getattr(model, "is_dynamic", lambda: False)())
    for kwargs in ({"disable_dynamic": True, "force_deepcopy": True}, {"force_deepcopy": True}):
        try:  # reload the weights outside inference mode, as a plain patcher
            with _legacy_layer_loading():
                return model.clone(**kwargs), False
        except TypeError:  # an older ComfyUI without these arguments
            continue
        except RuntimeError as e:  # a MODEL not made by a standard loader cannot be reloaded
            if dynamic:
                raise ValueError(
                    "this MODEL is under ComfyUI's dynamic VRAM and was not made by a standard loader, so no copy "
                    "with its weights on the GPU can be made to train (ComfyUI: {e}); load it with a standard loader "
                    "(Load Checkpoint, Load Diffusion Model) or start ComfyUI with --disable-dynamic-vram".format(e=e)
                ) from None
            log.info("ProGRPO: cannot deep-copy the MODEL (%s); training on a weight-sharing clone", e)
            break
    return model.clone(), True


@contextlib.contextmanager
def _legacy_layer_loading() -> Iterator[None]:
    """Build and load layers as ComfyUI does without dynamic VRAM. Under dynamic VRAM (its global
    ``aimdo_enabled``) ComfyUI creates Linear, Conv and Embedding layers empty and adopts each
    weight from the file as it is, in the file's dtype; only the dynamic patcher casts them per
    call. A plain patcher reloaded so would hold float32 weights of a float32 file where ComfyUI
    computes in fp16 (seen on an H200: "mat1 and mat2 must have the same dtype, but got Half and
    Float" at the first forward). With the flag off for the reload, every layer is built in the
    model's dtype and the weights are cast into it, as with ``--disable-dynamic-vram``."""
    try:
        import comfy.memory_management as mem
    except ImportError:  # an older ComfyUI: no dynamic VRAM
        yield
        return
    old = getattr(mem, "aimdo_enabled", False)
    mem.aimdo_enabled = False
    try:
        yield
    finally:
        mem.aimdo_enabled = old
