"""The context training happens in inside the host: out of inference mode, on a clone of the
MODEL, with ``in_training`` set and optional gradient checkpointing, all undone on exit."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch
from torch import nn

log = logging.getLogger("progrpo")


@contextlib.contextmanager
def training_model(model, gradient_checkpointing: bool) -> Iterator[tuple[Any, bool]]:
    """Yield ``(patcher, shares_weights)``: a clone of MODEL ready for training, out of inference
    mode, with ``comfy.model_management.in_training`` set. On exit — also on error or interrupt —
    checkpointing is undone, the flag restored and the clone left for garbage collection; the
    MODEL given is never modified. ``shares_weights`` is True when the host could not deep-copy
    the model (older ComfyUI): the clone then shares the base weights (inference tensors), and
    the caller must have every weight copied on use (``copy_other_weights``)."""
    import comfy.model_management as mm

    had_flag = hasattr(mm, "in_training")
    old_flag = getattr(mm, "in_training", False)
    patched: list[nn.Module] = []
    with torch.inference_mode(False):
        mp, shares = _clone_for_training(model)
        net = mp.model.diffusion_model
        try:
            mp.model.requires_grad_(False)
            if gradient_checkpointing:
                patched = checkpoint_blocks(net)
            mm.in_training = True  # fused kernels without autograd (e.g. RoPE) are skipped in training
            yield mp, shares
        finally:
            for m in patched:
                _unpatch(m)
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


def checkpoint_blocks(net: nn.Module) -> list[nn.Module]:
    """Gradient checkpointing on the model's repeated blocks (every element of a ModuleList
    directly under the network: SD3 joint_blocks, Flux double/single_blocks, UNet
    input/output_blocks). Needed for Flux, whose blocks update activations in place."""
    patched = []
    for child in net.children():
        if isinstance(child, nn.ModuleList):
            for block in child:
                _patch(block)
                patched.append(block)
    return patched


def _patch(m: nn.Module) -> None:
    from torch.utils.checkpoint import checkpoint

    org = m.forward

    def fwd(args, kwargs):
        # Blocks that update their inputs in place (Flux: ``img += …``) would change what the
        # recomputation in backward sees: give them copies.
        args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        kwargs = {k: (v.clone() if isinstance(v, torch.Tensor) and k in ("x", "img", "txt") else v)
                  for k, v in kwargs.items()}
        return org(*args, **kwargs)

    def checkpointed(*args, **kwargs):
        if not torch.is_grad_enabled():
            return org(*args, **kwargs)
        return checkpoint(fwd, args, kwargs, use_reentrant=False)

    m._progrpo_forward = org
    m.forward = checkpointed


def _unpatch(m: nn.Module) -> None:
    if hasattr(m, "_progrpo_forward"):
        m.forward = m._progrpo_forward
        del m._progrpo_forward
