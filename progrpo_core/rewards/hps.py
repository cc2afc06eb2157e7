"""HPSv2 and HPSv2.1 (Human Preference Score; Wu et al. 2023) on stock ``open_clip``.

Shapes: ``N`` images (and prompts), ``U`` distinct prompts, ``D`` = 1024 embedding size.

The model is open_clip's ViT-H-14 (vision 32 layers × 1280, text 24 layers × 1024) with the HPS
checkpoint's ``state_dict`` loaded over the whole model, so the LAION base weights are not needed.
HPS vendors an older open_clip; its ViT-H-14 has the same 686 weights, and the same outputs, as
open_clip 3.x's.

Score: ``cos(image_features, text_features)``, no logit scale. HPSv2.1 scores are about 0.25-0.37
(FLUX about 0.31, RL-tuned about 0.36); HPSv2.0 scores sit in a similar narrow band.

Preprocessing is HPS's own validation transform (``light_augmentation=True``; HPS's vendored
``open_clip/transform.py``: convert to RGB, ToTensor, ``ResizeMaxSize``, Normalize): the 8-bit image
as a float tensor, the longer side resized to 224 bicubic *on that tensor*, padded to 224×224 with 0
centred, then CLIP mean/std. (Stock open_clip's ``resize_mode="longest"`` resizes the PIL image
instead; HPS does not use it.) The resize is antialiased, as torchvision >= 0.17 does for tensors
(HPS does not pin torchvision; older versions did not antialias tensors, pass ``antialias=False``
to reproduce those). Where the reference skips the pad when the longer side is already 224 (and
then fails on a non-square image), we pad.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .base import Reward
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePrep
from .weights import (WEIGHT_SOURCES, check_state_dict, find_reward_weights, load_into, load_state_dict_file,
                      empty_weights, resolve_device, resolve_dtype)


def build_open_clip(arch: str):
    """An open_clip CLIP of architecture ``arch`` with parameters on ``meta`` (nothing allocated,
    nothing downloaded) and real buffers (the text causal mask)."""
    import open_clip
    from open_clip.model import CLIP

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown open_clip architecture {arch!r}; known ones include ViT-H-14, ViT-L-14, ViT-B-32")
    if cfg.get("custom_text") or "hf_model_name" in cfg.get("text_cfg", {}) or "multimodal_cfg" in cfg:
        raise ValueError(f"open_clip architecture {arch!r} has a custom text tower; HPS needs a plain CLIP such as ViT-H-14")
    with empty_weights():
        model = CLIP(**cfg, output_dict=True)
    return model


class HPSReward(Reward):
    """``cos(image, text)`` of an open_clip model, images prepared as HPS does."""

    def __init__(self, name: str, model, tokenizer, prep: ImagePrep, device: torch.device, dtype: torch.dtype):
        self.name = name
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.prep, self.device, self.dtype = prep, device, dtype

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.prep(images, self.device, self.dtype)                       # (N, 3, 224, 224)
        return torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)  # (N, D)

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        row = {p: i for i, p in enumerate(dict.fromkeys(prompts))}                # U distinct prompts
        tokens = self.tokenizer(list(row)).to(self.device)                        # (U, 77)
        emb = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)  # (U, D)
        return emb[torch.tensor([row[p] for p in prompts], device=emb.device)]    # (N, D)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1)     # (N,)


def _make_hps(name: str, path, device, dtype, search_dirs, arch: str, antialias: bool, options: dict) -> Reward:
    if options:
        raise TypeError(f"reward {name!r} got unknown option(s) {', '.join(sorted(options))}")
    import open_clip

    file = find_reward_weights(name, path, search_dirs)
    state = load_state_dict_file(file, name)
    model = build_open_clip(arch)
    check_state_dict(model, state, name, str(file), expected_download=WEIGHT_SOURCES[name].download)
    load_into(model, state)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    prep = ImagePrep(size=size, crop=None, mode="longest", interpolation="bicubic", resampler="tensor",
                     antialias=antialias, fill=0.0, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    tokenizer = open_clip.get_tokenizer(arch)
    return HPSReward(name, model, tokenizer, prep, resolve_device(device), resolve_dtype(dtype))


def make_hpsv2(path=None, device="cpu", dtype="float32", search_dirs=(), arch="ViT-H-14", antialias=True,
               **options) -> Reward:
    """HPSv2.0 from ``HPS_v2_compressed.pt`` (or a .safetensors conversion of it)."""
    return _make_hps("hpsv2", path, device, dtype, search_dirs, arch, antialias, options)


def make_hpsv21(path=None, device="cpu", dtype="float32", search_dirs=(), arch="ViT-H-14", antialias=True,
                **options) -> Reward:
    """HPSv2.1 from ``HPS_v2.1_compressed.pt`` (or a .safetensors conversion of it)."""
    return _make_hps("hpsv2.1", path, device, dtype, search_dirs, arch, antialias, options)
