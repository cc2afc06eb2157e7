"""Reward-model image preprocessing as batched torch ops, equal to the reference pipelines.

Every reward model was trained on, and is scored by its authors with, images prepared by one
particular pipeline, and every such pipeline starts from an 8-bit image: a file, or an IMAGE tensor
that is handed over as ``uint8`` (``round(x * 255)``). :class:`ImagePrep` reproduces those pipelines
on a ``(N, 3, H, W)`` float batch in [0, 1], on the model's device, without a round trip through
PIL, and gives the reference's pixel values (to float rounding, about 1e-7) from the same 8-bit
image. It first quantises the batch to those 8-bit levels, then resizes with one of two resamplers,
one per kind of reference:

- ``"pil"``, for references that resize the PIL image: transformers' CLIP image processor in its PIL
  backend (PickScore, CLIP score; the only backend before transformers 5), and OpenAI CLIP's
  torchvision ``Resize`` on a PIL image (the LAION aesthetic predictor, ImageReward). PIL's
  ``ImagingResample`` is reproduced bit for bit: the same double-precision filter weights, turned
  into 22-bit fixed-point integers, accumulated in int32 from ``1 << 21`` (round half up), shifted
  and clipped to 0..255 after each of the two 1-D passes. Pillow >= 13 runs the vertical pass first
  when the height shrinks by more than twice what the width does; older Pillow always starts with
  the horizontal pass. The rounding between the passes is what a float resize cannot reproduce (it
  moved pixels by up to 1/255 and PickScore by about 0.02). A resize geometry is checked once against
  the installed PIL on a random probe image, with a warning should a future Pillow resample
  differently.
- ``"tensor"``, for references that convert to a float tensor first (HPSv2: ``ToTensor`` then
  ``ResizeMaxSize``): ``torch.nn.functional.interpolate(..., antialias=True)`` on ``levels / 255``,
  which is what torchvision's ``resize`` runs on float tensors.

transformers >= 5 defaults to a torchvision backend that resizes the 8-bit image in float with a
single final rounding; it differs from its own PIL backend (and from the pipeline the models were
trained with) by up to two levels, and is not what is reproduced here.
"""
from __future__ import annotations

import functools
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .weights import RewardWeightsNotFound

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PIL_PRECISION_BITS = 22      # Pillow's PRECISION_BITS = 32 - 8 - 2 (8-bit result, 2 bits of headroom)


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


def to_levels(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] -> the uint8 image a reference is given: ``round(x * 255)``."""
    return (images.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# PIL's resampling (Pillow src/libImaging/Resample.c), in integer arithmetic

def _bicubic(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic kernel (Keys, a = -0.5), with its operations in its order."""
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


_PIL_FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


@functools.lru_cache(maxsize=64)
def pil_coefficients(in_size: int, out_size: int, interpolation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's taps for resampling a line of ``in_size`` pixels to ``out_size``: source indices
    (out_size, K) int64 and fixed-point weights (out_size, K) int32, unused taps weighted 0.

    Follows ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` operation by operation in float64
    (NumPy rounds each operation as C does), including the sequential sum of the weights.
    """
    fn, base_support = _PIL_FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    inv_filterscale = 1.0 / filterscale
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0.0).astype(np.int64)           # C's (int) cast
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    taps = np.arange(ksize)
    used = taps[None, :] < count[:, None]                                                 # (out, ksize)
    pos = (xmin[:, None] + taps[None, :]).astype(np.float64)
    w = np.where(used, fn((pos - center[:, None] + 0.5) * inv_filterscale), 0.0)
    total = np.zeros(out_size)
    for t in range(ksize):  # C adds the weights one by one; a pairwise sum rounds differently
        total = total + w[:, t]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    scaled = w * float(1 << PIL_PRECISION_BITS)
    fixed = np.where(w < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    k = max(int(count.max()), 1)
    index = np.minimum(xmin[:, None] + taps[None, :k], in_size - 1)
    return torch.from_numpy(index), torch.from_numpy(np.ascontiguousarray(fixed[:, :k]))


def _pil_rows(x: torch.Tensor, out_size: int, interpolation: str) -> torch.Tensor:
    """One 1-D PIL pass down the rows (dim -2) of (..., L, M) uint8 levels -> (..., out_size, M)
    uint8: ``clip8(((1 << 21) + sum(pixel * weight)) >> 22)``, accumulated in int32 as PIL does (no
    overflow, by PIL's design). Each tap is one gather of whole rows over the batch, which is fast on
    any device, where a gather along the innermost dimension is not."""
    index, fixed = pil_coefficients(x.shape[-2], out_size, interpolation)
    index, fixed = index.to(x.device), fixed.to(x.device)
    x = x.contiguous()
    shape = list(x.shape)
    shape[-2] = out_size
    acc = torch.full(shape, 1 << (PIL_PRECISION_BITS - 1), dtype=torch.int32, device=x.device)
    for t in range(index.shape[1]):
        acc += x.index_select(-2, index[:, t]).to(torch.int32) * fixed[:, t, None]   # int32 ops run on any device
    return (acc >> PIL_PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def _pil_columns(x: torch.Tensor, out_size: int, interpolation: str) -> torch.Tensor:
    """The horizontal pass: :func:`_pil_rows` on the transposed image."""
    return _pil_rows(x.transpose(-1, -2), out_size, interpolation).transpose(-1, -2)


@functools.lru_cache(maxsize=1)
def _pillow_major() -> int:
    import PIL
    return int(PIL.__version__.split(".")[0])


def pil_vertical_first(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Whether PIL runs the vertical pass first: Pillow >= 13 does when the height shrinks by more
    than twice as many pixels as the width; older Pillow always starts with the horizontal pass."""
    dh, dw = in_hw[0] - out_hw[0], in_hw[1] - out_hw[1]
    return _pillow_major() >= 13 and dh > 0 and dh > dw * 2


def pil_resize(levels: torch.Tensor, hw: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """``PIL.Image.resize((w, h), BICUBIC or BILINEAR)`` of (..., H, W) uint8 levels, bit for bit,
    on the tensor's device and batched. A pass is skipped when its size is unchanged, as in PIL."""
    if levels.dtype != torch.uint8:
        raise TypeError(f"pil_resize takes uint8 levels, got {levels.dtype}; use to_levels(images) first")
    in_hw = (int(levels.shape[-2]), int(levels.shape[-1]))
    x = levels
    vertical_first = pil_vertical_first(in_hw, hw)
    if vertical_first and hw[0] != in_hw[0]:
        x = _pil_rows(x, hw[0], interpolation)
    if hw[1] != in_hw[1]:
        x = _pil_columns(x, hw[1], interpolation)
    if not vertical_first and hw[0] != in_hw[0]:
        x = _pil_rows(x, hw[0], interpolation)
    return x.contiguous()


_CHECKED_GEOMETRIES: set[tuple[tuple[int, int], tuple[int, int], str]] = set()


def check_pil_geometry(in_hw: tuple[int, int], out_hw: tuple[int, int], interpolation: str) -> bool:
    """Compare :func:`pil_resize` with the installed PIL once for this geometry, on a random 8-bit
    probe image (one channel, which PIL resamples with the same arithmetic as RGB); warn if they
    differ. Returns whether they agree. Costs one CPU resize of an ``in_hw`` image per geometry."""
    key = (tuple(in_hw), tuple(out_hw), interpolation)
    if key in _CHECKED_GEOMETRIES:
        return True
    from PIL import Image

    probe = np.random.default_rng(sum(in_hw) * 7919 + sum(out_hw)).integers(0, 256, in_hw, dtype=np.uint8)
    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[interpolation]
    expected = np.asarray(Image.fromarray(probe).resize((out_hw[1], out_hw[0]), resample))
    got = pil_resize(torch.from_numpy(probe), out_hw, interpolation).numpy()
    _CHECKED_GEOMETRIES.add(key)
    if np.array_equal(expected, got):
        return True
    import PIL
    diff = int(np.abs(expected.astype(np.int32) - got.astype(np.int32)).max())
    warnings.warn(
        f"reward preprocessing: the installed Pillow {PIL.__version__} resizes {in_hw[1]}x{in_hw[0]} to "
        f"{out_hw[1]}x{out_hw[0]} ({interpolation}) differently from the pack's copy of PIL's resampling "
        f"(up to {diff} levels apart on a probe image), so reward scores may differ slightly from the "
        "reference pipeline's. Install a Pillow version from 9 to 13, or report the Pillow version.",
        RuntimeWarning, stacklevel=3)
    return False


# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImagePrep:
    """One reference preprocessing pipeline.

    ``mode="shortest"``: resize the shorter side to ``size`` then centre-crop ``crop`` (h, w)
    (CLIP, PickScore, LAION aesthetic, ImageReward). ``mode="longest"``: resize the longer side to
    ``size`` and pad to ``size``×``size`` with ``fill``, centred (HPSv2's ``ResizeMaxSize``).
    ``mode="squash"``: resize to ``size``×``size`` ignoring the aspect ratio, then crop if ``crop``.
    ``resampler``: ``"pil"`` (the reference resizes the PIL image) or ``"tensor"`` (it resizes the
    float tensor of the 8-bit image; ``antialias`` as torchvision's ``resize``).
    """
    size: int = 224
    crop: tuple[int, int] | None = (224, 224)
    mode: str = "shortest"
    interpolation: str = "bicubic"        # "bicubic" | "bilinear"
    resampler: str = "pil"                # "pil" | "tensor"
    antialias: bool = True                # "tensor" only; PIL always widens the filter when shrinking
    crop_rounding: str = "floor"          # "floor" (transformers) | "round" (torchvision CenterCrop)
    fill: float = 0.0                     # pad value in [0, 1] pixel units, before normalisation
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        if self.mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"ImagePrep.mode must be 'shortest', 'longest' or 'squash', got {self.mode!r}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"ImagePrep.interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        if self.resampler not in ("pil", "tensor"):
            raise ValueError(f"ImagePrep.resampler must be 'pil' or 'tensor', got {self.resampler!r}")
        if self.resampler == "pil" and not self.antialias:
            raise ValueError("ImagePrep(resampler='pil') always antialiases as PIL does; antialias=False "
                             "only exists for resampler='tensor'")
        if self.crop_rounding not in ("floor", "round"):
            raise ValueError(f"ImagePrep.crop_rounding must be 'floor' or 'round', got {self.crop_rounding!r}")
        if self.size <= 0:
            raise ValueError(f"ImagePrep.size must be positive, got {self.size}")

    def resize(self, levels: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(N, 3, H, W) uint8 levels -> (N, 3, h, w) float32 in [0, 1], as the reference resizes."""
        hw = (int(hw[0]), int(hw[1]))
        if self.resampler == "pil":
            if tuple(levels.shape[-2:]) != hw:
                check_pil_geometry((int(levels.shape[-2]), int(levels.shape[-1])), hw, self.interpolation)
            return pil_resize(levels, hw, self.interpolation).float() / 255.0
        x = levels.float() / 255.0                                      # torchvision's ToTensor
        if tuple(x.shape[-2:]) == hw:
            return x
        return F.interpolate(x, size=hw, mode=self.interpolation, align_corners=False, antialias=self.antialias)

    def geometry(self, images: torch.Tensor) -> torch.Tensor:
        """Quantise, resize and crop or pad, no normalisation: (N, 3, H, W) in [0, 1] ->
        (N, 3, h, w) float32 in [0, 1]."""
        levels = to_levels(images)                                       # (N, 3, H, W) uint8
        h, w = levels.shape[-2:]
        if self.mode == "longest":
            nh, nw = longest_side_size(h, w, self.size)
            x = self.resize(levels, (nh, nw))
            ph, pw = self.size - nh, self.size - nw
            if ph or pw:  # left, right, top, bottom
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=self.fill)
            return x                                                     # (N, 3, size, size)
        if self.mode == "squash":
            x = self.resize(levels, (self.size, self.size))
        else:
            x = self.resize(levels, shortest_side_size(h, w, self.size))
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

        Computed in float32 (and int32 for PIL's resampling), cast at the end.
        """
        x = images.to(device=device if device is not None else images.device)
        x = self.normalize(self.geometry(x))
        return x.to(dtype) if dtype is not None else x


# ---------------------------------------------------------------------------------------------
# transformers image processors

# where transformers keeps an image processor's settings: its own file before transformers 5, the
# "image_processor" entry of the processor's file from transformers 5 on (both are read by 5.x)
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _describe_processor_folder(folder: str | os.PathLike, error: Exception) -> str:
    """Why ``folder`` gave no image processor, from the files it has (for the error message only)."""
    d = Path(folder)
    if not d.is_dir():
        return f"{d} is not a folder"
    present = [f for f in IMAGE_PROCESSOR_FILES if (d / f).is_file()]
    if not present:
        return f"{d} has neither preprocessor_config.json (transformers < 5) nor processor_config.json (transformers >= 5)"
    if present == ["processor_config.json"]:
        try:
            has_entry = "image_processor" in json.loads((d / "processor_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            has_entry = True  # unreadable: the library's own message below says why
        if not has_entry:
            return f"{d}/processor_config.json has no 'image_processor' entry (a tokenizer-only processor?)"
        import transformers
        if int(transformers.__version__.split(".")[0]) < 5:
            return (f"{d} was saved by transformers >= 5 (processor_config.json only) and the installed "
                    f"transformers {transformers.__version__} cannot read it: upgrade transformers to 5 or later")
    return f"{d} has {' and '.join(present)} but transformers cannot load it ({type(error).__name__}: {str(error)[:200]})"


def load_clip_image_processor(folders: Iterable[str | os.PathLike], what: str, fix: str):
    """The CLIP image processor from the first of ``folders`` that transformers can load it from
    (``CLIPImageProcessor.from_pretrained(folder, local_files_only=True)``, whatever file layout that
    version of transformers reads). If none can, :class:`RewardWeightsNotFound` saying, folder by
    folder, what was found and what was expected, and ``fix``."""
    from transformers import CLIPImageProcessor

    reasons = []
    for folder in folders:
        try:
            return CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # OSError for a missing file, ValueError/KeyError/TypeError for bad contents
            reasons.append(_describe_processor_folder(folder, e))
    raise RewardWeightsNotFound(
        f"{what}: no CLIP image processor could be loaded: {'; '.join(reasons)}. Expected the image "
        "processor settings a CLIPProcessor is saved with (preprocessor_config.json, or processor_config.json "
        f"with an 'image_processor' entry from transformers >= 5); {fix}")


def prep_from_hf_processor(folder_or_processor, crop_rounding: str = "floor") -> ImagePrep:
    """An :class:`ImagePrep` equivalent to a transformers CLIP-style image processor in its PIL
    backend (its size, crop, mean/std and resampling), given the processor or a folder that
    ``CLIPImageProcessor.from_pretrained`` loads."""
    proc = folder_or_processor
    if not hasattr(proc, "size"):
        proc = load_clip_image_processor([folder_or_processor], "image processor",
                                         "save one with CLIPProcessor.save_pretrained or download the model's repo completely")
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
    return ImagePrep(size=int(shortest), crop=crop, mode=mode, interpolation=interp, resampler="pil",
                     crop_rounding=crop_rounding, mean=mean, std=std)  # type: ignore[arg-type]
