"""Reward-model image preprocessing as batched torch ops.

Every reward model was trained on images prepared by one particular pipeline (PIL or torchvision
resizing, a centre crop or a pad, a mean/std). :class:`ImagePrep` reproduces those pipelines on a
``(N, 3, H, W)`` float batch in [0, 1], on the model's device, without a round trip through PIL.

Resizing is ``torch.nn.functional.interpolate(..., antialias=True)``: for bicubic and bilinear this
is the kernel PIL uses (Keys a = -0.5, support widened when downscaling), and what
``torchvision.transforms.functional.resize`` runs on float tensors. References that resize 8-bit
PIL images (CLIP, PickScore, aesthetic, ImageReward) do it in two passes, horizontal then vertical,
each clipped to [0, 255] and rounded; with ``clamp=True`` we do the same two clipped passes in float
without the rounding, which puts every pixel within about 1/255 of PIL's (0.3/255 on average, on
worst-case noise). HPSv2 resizes float tensors, so its pipeline is reproduced exactly (``clamp=False``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def shortest_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``size``, as torchvision's ``Resize(int)``
    and transformers' ``get_resize_output_image_size(default_to_square=False)`` compute it
    (the longer side truncated, not rounded)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def longest_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the longer side to ``size``, as HPSv2's ``ResizeMaxSize``
    computes it (``round(dim * (size / max(h, w)))``, Python's round)."""
    scale = size / float(max(h, w))
    return round(h * scale), round(w * scale)


def centre_crop_offset(length: int, crop: int, rounding: str) -> int:
    """Top/left offset of a centre crop: ``floor`` as transformers' image processors,
    ``round`` as torchvision's ``CenterCrop`` (``int(round((length - crop) / 2))``, banker's rounding)."""
    if rounding == "round":
        return int(round((length - crop) / 2.0))
    return int((length - crop) / 2.0)


@dataclass(frozen=True)
class ImagePrep:
    """One reference preprocessing pipeline.

    ``mode="shortest"``: resize the shorter side to ``size`` then centre-crop ``crop`` (h, w)
    (CLIP, PickScore, LAION aesthetic, ImageReward). ``mode="longest"``: resize the longer side to
    ``size`` and pad to ``size``×``size`` with ``fill``, centred (HPSv2's ``ResizeMaxSize``).
    ``mode="squash"``: resize to ``size``×``size`` ignoring the aspect ratio, then crop if ``crop``.
    """
    size: int = 224
    crop: tuple[int, int] | None = (224, 224)
    mode: str = "shortest"
    interpolation: str = "bicubic"        # "bicubic" | "bilinear"
    antialias: bool = True
    crop_rounding: str = "floor"          # "floor" (transformers) | "round" (torchvision CenterCrop)
    clamp: bool = True                    # PIL's two passes, each clipped to [0, 1] (8-bit references)
    fill: float = 0.0                     # pad value in [0, 1] pixel units, before normalisation
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        if self.mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"ImagePrep.mode must be 'shortest', 'longest' or 'squash', got {self.mode!r}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"ImagePrep.interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        if self.crop_rounding not in ("floor", "round"):
            raise ValueError(f"ImagePrep.crop_rounding must be 'floor' or 'round', got {self.crop_rounding!r}")
        if self.size <= 0:
            raise ValueError(f"ImagePrep.size must be positive, got {self.size}")

    def resize(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Resize (N, 3, H, W) to ``hw``. With ``clamp`` this is PIL's two-pass resampling: the
        horizontal pass, clipped to [0, 1] as PIL clips each 8-bit pass, then the vertical pass."""
        def interp(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            if tuple(t.shape[-2:]) == tuple(size):
                return t
            return F.interpolate(t, size=size, mode=self.interpolation, align_corners=False,
                                 antialias=self.antialias)
        if not self.clamp:
            return interp(x, hw)
        x = interp(x, (x.shape[-2], hw[1])).clamp(0.0, 1.0)   # horizontal pass
        return interp(x, hw).clamp(0.0, 1.0)                   # vertical pass

    def geometry(self, images: torch.Tensor) -> torch.Tensor:
        """Resize and crop or pad, no normalisation: (N, 3, H, W) -> (N, 3, h, w), float32."""
        x = images.float()                                               # (N, 3, H, W)
        h, w = x.shape[-2:]
        if self.mode == "longest":
            nh, nw = longest_side_size(h, w, self.size)
            x = self.resize(x, (nh, nw))
            ph, pw = self.size - nh, self.size - nw
            if ph or pw:  # left, right, top, bottom
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=self.fill)
            return x                                                     # (N, 3, size, size)
        if self.mode == "squash":
            x = self.resize(x, (self.size, self.size))
        else:
            x = self.resize(x, shortest_side_size(h, w, self.size))
        if self.crop is None:
            return x
        ch, cw = self.crop
        h, w = x.shape[-2:]
        if ch > h or cw > w:  # both references pad with 0 when the crop is larger
            pw, ph = max(cw - w, 0), max(ch - h, 0)
            x = F.pad(x, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2), value=0.0)
            h, w = x.shape[-2:]
        top = centre_crop_offset(h, ch, self.crop_rounding)
        left = centre_crop_offset(w, cw, self.crop_rounding)
        return x[..., top:top + ch, left:left + cw]                      # (N, 3, ch, cw)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> normalised pixel values (N, 3, h, w) on ``device`` in ``dtype``.

        Computed in float32 (antialiased resizing has no half-precision CPU kernel), cast at the end.
        """
        x = images.to(device=device if device is not None else images.device)
        x = self.normalize(self.geometry(x))
        return x.to(dtype) if dtype is not None else x


def prep_from_hf_processor(folder_or_processor, crop_rounding: str = "floor", clamp: bool = True) -> ImagePrep:
    """An :class:`ImagePrep` equivalent to a transformers CLIP-style image processor (its size,
    crop, mean/std and resampling), given the processor or a folder with ``preprocessor_config.json``."""
    proc = folder_or_processor
    if not hasattr(proc, "size"):
        from transformers import CLIPImageProcessor
        proc = CLIPImageProcessor.from_pretrained(str(folder_or_processor), local_files_only=True)
    size = proc.size
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    shortest, mode = get("shortest_edge"), "shortest"
    if not getattr(proc, "do_resize", True):
        raise ValueError("reward image processor has do_resize=False; reward models need a fixed input size")
    if shortest is None:
        h, w = get("height"), get("width")
        if not (h and w and h == w):
            raise ValueError(f"unsupported image processor size {size!r}: expected shortest_edge or a square size")
        shortest, mode = h, "squash"
    crop = None
    if getattr(proc, "do_center_crop", False):
        cs = proc.crop_size
        cget = (lambda k: cs.get(k)) if isinstance(cs, dict) else (lambda k: getattr(cs, k, None))
        crop = (int(cget("height")), int(cget("width")))
    resample = int(getattr(proc, "resample", 3))
    interp = {3: "bicubic", 2: "bilinear"}.get(resample)
    if interp is None:
        raise ValueError(f"unsupported image processor resample={resample}; expected bicubic (3) or bilinear (2)")
    mean = tuple(float(v) for v in proc.image_mean) if getattr(proc, "do_normalize", True) else (0.0, 0.0, 0.0)
    std = tuple(float(v) for v in proc.image_std) if getattr(proc, "do_normalize", True) else (1.0, 1.0, 1.0)
    return ImagePrep(size=int(shortest), crop=crop, mode=mode, interpolation=interp,
                     crop_rounding=crop_rounding, clamp=clamp, mean=mean, std=std)  # type: ignore[arg-type]
