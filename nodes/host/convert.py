"""IMAGE and LATENT at the boundary: ComfyUI's layouts to the core's and back (no ComfyUI needed)."""
from __future__ import annotations

import torch


def image_to_core(image: torch.Tensor, what: str = "IMAGE") -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) in [0, 1] → the core's (B, 3, H, W) float32."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{what}: expected an IMAGE batch (B, H, W, C), got {shape}")
    c = image.shape[-1]
    if c == 1:
        image = image.expand(-1, -1, -1, 3)
    elif c == 4:
        image = image[..., :3]
    elif c != 3:
        raise ValueError(f"{what}: expected 1, 3 or 4 channels last (B, H, W, C), got shape {tuple(image.shape)}")
    return image.movedim(-1, 1).float().clamp(0, 1).contiguous()


def core_to_image(images: torch.Tensor) -> torch.Tensor:
    """The core's (B, 3, H, W) in [0, 1] → ComfyUI IMAGE (B, H, W, 3) float32 on the CPU."""
    return images.detach().float().clamp(0, 1).movedim(1, -1).cpu().contiguous()


def latent_samples(latent: dict, what: str = "LATENT") -> torch.Tensor:
    """The ``samples`` tensor of a LATENT dict: (B, C, H, W), or (B, C, T, H, W) for video models
    (and image models whose latent format is 3-D, e.g. Qwen-Image's)."""
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"{what}: expected a LATENT (a dict with 'samples'), got {type(latent).__name__}")
    s = latent["samples"]
    if s.ndim not in (4, 5) or getattr(s, "is_nested", False):
        raise ValueError(f"{what}: expected image latents (B, C, H, W) or video latents (B, C, T, H, W), got shape "
                         f"{tuple(s.shape)}")
    return s


def pil_of(image_chw: torch.Tensor):
    """(3, H, W) in [0, 1] → PIL image."""
    from PIL import Image

    arr = (image_chw.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    return Image.fromarray(arr)
