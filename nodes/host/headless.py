"""Headless training of a real checkpoint with ComfyUI's library (no server):

    python -m progrpo_core train --model.comfyui /path/to/ComfyUI --model.checkpoint FILE \\
        --run.prompts prompts.txt --reward.name pickscore ...

The core's ``models.load_model`` imports this module as a plug-in and calls
:func:`load_comfy_denoiser`, which imports ComfyUI from its checkout (on the CPU when no GPU is
visible), loads the checkpoint, its text encoder and VAE with ComfyUI's own loaders and returns the
same :class:`~nodes.host.model.ComfyDenoiser` the nodes use. Prompts are encoded with the checkpoint's CLIP as they are needed. Run it from the pack's
folder (the one holding ``progrpo_core/`` and ``nodes/``), with a python that has ComfyUI's
requirements.

The training resolution is ``--model.resolution`` (pixels, default 512 for SD1.x, 1024
otherwise); a checkpoint without text encoder or VAE takes them from ``--model.clip`` (a
text-encoder file, with ``--model.clip_type``, e.g. ``sd3``) and ``--model.vae``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .model import ComfyDenoiser


def import_comfyui(comfyui_path: str | os.PathLike, device: str = "cpu") -> None:
    """Put a ComfyUI checkout on ``sys.path`` and import its model management, on the CPU when
    ``device`` is the CPU or no GPU is visible (``comfy.cli_args`` must know before
    ``comfy.model_management`` is imported, or it probes CUDA). ComfyUI loads models on its current
    CUDA device, so a ``cuda:N`` device is made current first."""
    root = Path(comfyui_path).expanduser().resolve()
    if not (root / "comfy" / "model_management.py").is_file():
        raise FileNotFoundError(f"model.comfyui={str(comfyui_path)!r} is not a ComfyUI checkout (no comfy/model_management.py); "
                                "point it at the folder holding ComfyUI's main.py")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import torch

    if str(device).startswith("cuda:") and torch.cuda.is_available():
        torch.cuda.set_device(torch.device(device))
    if "comfy.model_management" in sys.modules:
        return

    saved, sys.argv = sys.argv, [sys.argv[0]]  # ComfyUI parses sys.argv when cli_args is imported
    try:
        from comfy.cli_args import args

        if str(device) == "cpu" or not torch.cuda.is_available():
            args.cpu = True
        import comfy.model_management  # noqa: F401
        import comfy.sd  # noqa: F401
    finally:
        sys.argv = saved


def load_comfy_denoiser(comfyui_path: str | os.PathLike, checkpoint: str | os.PathLike, device: str = "cpu",
                        resolution: int | None = None, clip: str | None = None, clip_type: str = "stable_diffusion",
                        vae: str | None = None) -> ComfyDenoiser:
    """The checkpoint as the core's Denoiser (with its CLIP and VAE), ready for the core Trainer."""
    import_comfyui(comfyui_path, device)
    import comfy.model_management as mm
    import comfy.sd
    import comfy.utils

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.checkpoint={str(checkpoint)!r}: file not found")
    clip_file, vae_file = clip, vae
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    if model is None:
        raise ValueError(f"{path} holds no diffusion model ComfyUI recognises")
    if clip is None and clip_file:
        kind = getattr(comfy.sd.CLIPType, clip_type.upper(), None)
        if kind is None:
            raise ValueError(f"model.clip_type={clip_type!r} is not a ComfyUI CLIP type; expected one of "
                             f"{', '.join(t.name.lower() for t in comfy.sd.CLIPType)}")
        clip = comfy.sd.load_clip([_existing(clip_file, "model.clip")], clip_type=kind)
    if vae is None and vae_file:
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(_existing(vae_file, "model.vae")))
    if clip is None:
        raise ValueError(f"{path} has no text encoder; give one with --model.clip FILE (and --model.clip_type)")
    if vae is None:
        raise ValueError(f"{path} has no VAE; give the model's VAE file with --model.vae FILE")
    fmt = model.model.latent_format
    if resolution is None:
        default = 512 if type(model.model).__name__ == "BaseModel" else 1024
        resolution = default
    ratio = int(getattr(fmt, "spacial_downscale_ratio", 8))
    if resolution % ratio:
        raise ValueError(f"resolution {resolution} must be a multiple of the VAE's downscale factor {ratio}")
    latent_shape = (int(fmt.latent_channels), resolution // ratio, resolution // ratio)
    model.model.requires_grad_(False)
    den = ComfyDenoiser(model, latent_shape, vae=vae, clip=clip, name=path.name, full_load=True)
    mm.in_training = True  # this process trains: ops without autograd formulas (fused RoPE) are avoided
    return den


def _existing(file: str, label: str) -> str:
    p = Path(file).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{label}={file!r}: file not found")
    return str(p)
