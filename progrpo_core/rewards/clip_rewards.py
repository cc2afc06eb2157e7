"""Rewards on a transformers CLIP model: PickScore, CLIP score and the LAION aesthetic predictor v2.

Shapes: ``N`` images (and prompts), ``U`` distinct prompts among them, ``D`` the projection size.

- **PickScore** (Kirstain et al. 2023; ``yuvalkirstain/PickScore_v1``, a CLIP ViT-H/14):
  ``logit_scale.exp() * cos(image_embed, text_embed)``, the scale read from the checkpoint
  (about 100), so scores are about 18-24 for ordinary images. Preprocessing is the folder's
  CLIPImageProcessor as its PIL backend runs it (the only one before transformers 5, and the one the
  model was trained with): shorter side to 224 with PIL's bicubic, centre crop 224 (offset floored),
  CLIP mean/std. The processor settings are read with ``CLIPImageProcessor.from_pretrained``, so any
  layout the installed transformers reads works (``preprocessor_config.json``, or transformers 5's
  ``processor_config.json``).
- **CLIP score**: ``cos(image_embed, text_embed)`` of any transformers CLIP folder, in [-1, 1]
  (about 0.15-0.40 for matching pairs), times ``scale`` (default 1; ``scale=100`` gives the common
  "CLIPScore x 100" convention, without its clipping at 0). Preprocessing as PickScore.
- **Aesthetic** (LAION improved-aesthetic-predictor, ``sac+logos+ava1-l14-linearMSE.pth``): the
  L2-normalised CLIP ViT-L/14 image embedding through a linear MLP head; roughly the AVA 1-10
  scale, 5-7 for typical generations. Preprocessing as OpenAI CLIP's own ``clip.load``: torchvision
  Resize(224, bicubic) on the PIL image (PIL's resampling) + CenterCrop(224) (offset rounded as
  torchvision does), CLIP mean/std.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .base import Reward
from .heads import LinearMLPHead
from .preprocess import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePrep, load_clip_image_processor,
                         prep_from_hf_processor)
from .weights import (WEIGHT_SOURCES, CheckpointMismatchError, RewardWeightsNotFound, UnsafeCheckpointError,
                      describe_mismatch, find_reward_weights, load_state_dict_file, resolve_device, resolve_dtype)

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _features(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers < 5 and a ModelOutput
    (projected embedding in ``pooler_output``) in transformers >= 5."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find the projected embedding in {type(out).__name__}")


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def check_hf_clip_folder(folder: Path, what: str, download: str) -> dict:
    """The folder's config.json, after checking it is a CLIP model with weights."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise RewardWeightsNotFound(f"{what}: {folder} has no config.json; expected {download}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointMismatchError(f"{what}: {cfg_path} is not valid JSON ({e})") from e
    if cfg.get("model_type") != "clip":
        raise CheckpointMismatchError(
            f"{what}: {folder} holds a {cfg.get('model_type')!r} model (config.json model_type), "
            f"expected a CLIP model (model_type 'clip'): {download}")
    if not any((folder / f).is_file() for f in _WEIGHT_FILES):
        raise RewardWeightsNotFound(
            f"{what}: {folder} has config.json but no weights ({' or '.join(_WEIGHT_FILES[::2])}); "
            f"download {download} completely")
    return cfg


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``from_pretrained``'s precision argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import transformers
    major, minor = (int(v) for v in re.findall(r"\d+", transformers.__version__)[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load report while loading; mismatches are reported by us instead."""
    from transformers.utils import logging as tlogging

    previous, bars = tlogging.get_verbosity(), tlogging.is_progress_bar_enabled()
    tlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    try:
        yield
    finally:
        tlogging.set_verbosity(previous)
        if bars:
            tlogging.enable_progress_bar()


def load_hf_pretrained(cls, folder: Path, what: str, dtype: torch.dtype, download: str,
                       ignore_unexpected: Sequence[str] = (), config=None):
    """``cls.from_pretrained(folder)`` offline, with wrong or unsafe checkpoints reported clearly."""
    try:
        with _quiet_transformers():
            model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                              **_dtype_kwarg(dtype), **({"config": config} if config else {}))
    except Exception as e:  # transformers raises OSError/ValueError/RuntimeError for bad folders
        text = str(e)
        if "weights_only" in text or "Weights only load failed" in text:
            raise UnsafeCheckpointError(
                f"{what}: refused to load the weights in {folder}: torch.load(weights_only=True) found Python "
                "objects besides tensors. Use the release's model.safetensors instead.") from e
        if "size mismatch" in text or "shape" in text:
            raise CheckpointMismatchError(f"{what}: {folder} does not fit its own config.json ({text[:300]})") from e
        raise CheckpointMismatchError(f"{what}: cannot load {folder} ({type(e).__name__}: {text[:300]})") from e
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    unexpected = [k for k in info.get("unexpected_keys", [])
                  if not k.endswith("position_ids") and not k.startswith(tuple(ignore_unexpected))]
    mismatched = info.get("mismatched_keys", [])
    if missing or unexpected or mismatched:
        report = describe_mismatch(missing, unexpected, len(mismatched), sum(1 for _ in model.state_dict()))
        raise CheckpointMismatchError(
            f"{what}: the weights in {folder} are not a checkpoint of its config's model: {report}. "
            f"Expected {download}.")
    return model.eval().requires_grad_(False)


def _tokenizer_dir(folder: Path, processor: str | os.PathLike | None, what: str, download: str) -> Path:
    for d in ([Path(processor)] if processor else []) + [folder]:
        if (d / "tokenizer.json").is_file() or ((d / "vocab.json").is_file() and (d / "merges.txt").is_file()):
            return d
    raise RewardWeightsNotFound(
        f"{what}: no CLIP tokenizer files (tokenizer.json, or vocab.json + merges.txt) in "
        f"{', '.join(str(d) for d in ([Path(processor)] if processor else []) + [folder])}; download {download} "
        "completely, or pass processor=PATH to a folder with the tokenizer and preprocessor files "
        "(e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K)")


def _image_processor(folder: Path, processor: str | os.PathLike | None, what: str, download: str):
    """The CLIP image processor of ``processor`` (if given) or else of the model folder, as
    transformers loads it; files are looked at only to explain a failure."""
    dirs = ([Path(processor)] if processor else []) + [folder]
    return load_clip_image_processor(
        dirs, what, f"download {download} completely, or pass processor=PATH to a folder with a CLIP "
        "processor (e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K, or one written by CLIPProcessor.save_pretrained)")


class HFClipReward(Reward):
    """A reward computed from a transformers CLIPModel's projected image and text embeddings.

    ``score = scale * cos(image, text)``, with ``scale`` a number or ``"logit_scale"`` (the
    checkpoint's ``logit_scale.exp()``).
    """

    def __init__(self, name: str, model, tokenizer, prep: ImagePrep, scale: float | str = 1.0,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32):
        self.name = name
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.prep = prep
        self.device, self.dtype = device, dtype
        self.max_length = int(getattr(model.config.text_config, "max_position_embeddings", 77))
        self.scale = float(model.logit_scale.detach().float().exp()) if scale == "logit_scale" else float(scale)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> unit-norm image embeddings (N, D), float32; one forward."""
        pixels = self.prep(images, self.device, self.dtype)                       # (N, 3, 224, 224)
        return _unit(_features(self.model.get_image_features(pixel_values=pixels)))

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings (N, D), each distinct prompt encoded once."""
        row = {p: i for i, p in enumerate(dict.fromkeys(prompts))}                # U distinct prompts
        tokens = self.tokenizer(list(row), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        emb = _unit(_features(self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])))  # (U, D)
        return emb[torch.tensor([row[p] for p in prompts], device=emb.device)]    # (N, D)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        cos = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1)   # (N,)
        return self.scale * cos


def _load_hf_clip(name: str, path, search_dirs: Iterable, device, dtype, processor, scale) -> HFClipReward:
    from transformers import CLIPModel, CLIPTokenizer

    src = WEIGHT_SOURCES[name]
    folder = find_reward_weights(name, path, search_dirs)
    check_hf_clip_folder(folder, name, src.download)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    tok = CLIPTokenizer.from_pretrained(str(_tokenizer_dir(folder, processor, name, src.download)),
                                        local_files_only=True)
    prep = prep_from_hf_processor(_image_processor(folder, processor, name, src.download), crop_rounding="floor")
    model = load_hf_pretrained(CLIPModel, folder, name, dt, src.download)
    return HFClipReward(name, model, tok, prep, scale=scale, device=dev, dtype=dt)


def make_pickscore(path=None, device="cpu", dtype="float32", search_dirs=(), processor=None, **options) -> Reward:
    """PickScore: ``logit_scale.exp() * cos`` (about 18-24) from a ``PickScore_v1`` folder.

    ``processor``: a folder with the tokenizer and preprocessor files, if the model folder lacks them.
    """
    _no_options("pickscore", options)
    return _load_hf_clip("pickscore", path, search_dirs, device, dtype, processor, scale="logit_scale")


def make_clip_score(path=None, device="cpu", dtype="float32", search_dirs=(), processor=None, scale=1.0,
                    **options) -> Reward:
    """CLIP score: ``scale * cos(image, text)`` (default scale 1: cosine in [-1, 1]) from any
    transformers CLIP folder (e.g. ``clip-vit-large-patch14``)."""
    _no_options("clip", options)
    return _load_hf_clip("clip", path, search_dirs, device, dtype, processor, scale=float(scale))


class AestheticReward(Reward):
    """LAION aesthetic predictor v2: MLP(normalise(CLIP ViT-L/14 image embedding)); prompts unused."""

    name = "aesthetic"

    def __init__(self, vision_model, head: LinearMLPHead, prep: ImagePrep, device: torch.device,
                 dtype: torch.dtype):
        self.model = vision_model.to(device)
        self.head = head.to(device)
        self.prep, self.device, self.dtype = prep, device, dtype

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        pixels = self.prep(images, self.device, self.dtype)                       # (N, 3, 224, 224)
        emb = _unit(self.model(pixel_values=pixels).image_embeds)                 # (N, 768)
        return self.head(emb)                                                      # (N,)


def make_aesthetic(path=None, device="cpu", dtype="float32", search_dirs=(), clip_path=None, **options) -> Reward:
    """LAION aesthetic predictor v2 (``sac+logos+ava1-l14-linearMSE.pth``) on CLIP ViT-L/14.

    ``path``: the head file, or a folder holding it. ``clip_path``: the transformers
    ``openai/clip-vit-large-patch14`` folder; by default a ``clip-vit-large-patch14`` folder next to
    the head file, in ``search_dirs`` or in ``PROGRPO_REWARD_DIR``.
    """
    _no_options("aesthetic", options)
    from transformers import CLIPConfig, CLIPVisionModelWithProjection

    head_file = find_reward_weights("aesthetic", path, search_dirs)
    head = LinearMLPHead.from_state_dict(load_state_dict_file(head_file, "aesthetic"), "aesthetic", str(head_file),
                                         expected_download=WEIGHT_SOURCES["aesthetic"].download)
    clip_src = WEIGHT_SOURCES["clip-vit-large-patch14"]
    if clip_path is None:
        dirs = [head_file.parent, head_file.parent.parent, *search_dirs]
        clip_folder = find_reward_weights("clip-vit-large-patch14", None, dirs)
    else:
        clip_folder = find_reward_weights("clip-vit-large-patch14", clip_path)
    cfg = check_hf_clip_folder(clip_folder, "aesthetic", clip_src.download)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    vision_cfg = CLIPConfig.from_pretrained(str(clip_folder), local_files_only=True)
    vision_cfg.vision_config.projection_dim = vision_cfg.projection_dim  # not always stored in vision_config
    vision = load_hf_pretrained(CLIPVisionModelWithProjection, clip_folder, "aesthetic", dt, clip_src.download,
                                ignore_unexpected=("text_model.", "text_projection", "logit_scale"),
                                config=vision_cfg.vision_config)
    dim = int(vision.config.projection_dim)
    if dim != head.input_size:
        raise CheckpointMismatchError(
            f"aesthetic: the head {head_file} takes {head.input_size}-d embeddings but {clip_folder} gives "
            f"{dim}-d ones; the predictor was trained on {clip_src.download}")
    size = int(cfg.get("vision_config", {}).get("image_size", vision.config.image_size))
    prep = ImagePrep(size=size, crop=(size, size), mode="shortest", interpolation="bicubic", resampler="pil",
                     crop_rounding="round", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    return AestheticReward(vision, head, prep, dev, dt)


def _no_options(name: str, options: dict) -> None:
    if options:
        raise TypeError(f"reward {name!r} got unknown option(s) {', '.join(sorted(options))}")
