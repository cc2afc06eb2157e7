"""ImageReward v1.0 (Xu et al. 2023) without the ``image-reward`` package.

Shapes: ``N`` image-prompt pairs, ``P`` = 196 image patches (+1 class token), ``W`` = 1024 vision
width, ``L`` = 35 prompt tokens, ``C`` = 768 text width.

The reference model (THUDM/ImageReward ``ImageReward.py`` + BLIP ``vit.py``/``med.py``) is

- a BLIP ViT-L/16 at 224 px (timm-style blocks, LayerNorm eps 1e-6, exact GELU): image ->
  ``image_embeds`` (N, 1+P, W), the final LayerNorm applied to every token;
- BLIP's BERT-base text encoder (no token-type embeddings) whose 12 layers each add a
  cross-attention to ``image_embeds`` (keys/values W -> C), self-attention bidirectional;
- the [CLS] output (N, C) through the linear MLP head (see :mod:`.heads`), then
  ``(r - 0.16717362830052426) / 1.0333394966054072``.

transformers' ``BlipVisionModel`` and ``BlipTextModel`` are ports of exactly these modules (the
latter from BLIP's ``med.py``, cross-attention enabled by ``is_decoder=True`` in its config and
left bidirectional by calling it with ``is_decoder=False``), so the checkpoint's keys are renamed
onto them (:func:`map_imagereward_keys`) rather than re-implemented.

Text: ``bert-base-uncased``'s WordPiece tokenizer plus the added ``[DEC]`` (bos) and ``[ENC]``
tokens (vocab 30524), padded to 35 tokens, truncated. Images as ImageReward's BLIP transform:
torchvision Resize(224, bicubic) on the PIL image (PIL's resampling), CenterCrop(224) (torchvision's
rounding), ToTensor, CLIP mean/std. The score is unbounded, about -2..+2.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from .base import Reward
from .heads import LinearMLPHead
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePrep
from .weights import (WEIGHT_SOURCES, CheckpointMismatchError, RewardWeightsNotFound, check_state_dict,
                      find_reward_weights, load_into, load_state_dict_file, empty_weights, resolve_device,
                      resolve_dtype)

REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_PROMPT_TOKENS = 35
VIT_HEAD_DIM = 64          # BLIP's ViT-B (768/12) and ViT-L (1024/16)
VIT_LAYER_NORM_EPS = 1e-6  # timm partial(nn.LayerNorm, eps=1e-6)

# ImageReward v1.0's BLIP ViT-L, used to describe the expected checkpoint when it cannot be inferred
DEFAULT_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, patch_size=16, image_size=224)

_VIT = "blip.visual_encoder."
_VIT_RENAMES = [  # (pattern on the part after blip.visual_encoder., replacement under visual.)
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.(weight|bias)$", r"embeddings.patch_embedding.\1"),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.", r"encoder.layers.\1.mlp.\2."),
    (r"^norm\.(weight|bias)$", r"post_layernorm.\1"),
]
# the parts of the checkpoint that score; other "blip." entries (BLIP's contrastive projections
# vision_proj/text_proj) are unused, and the reference's load_state_dict(strict=False) ignores them too
SCORING_PREFIXES = ("blip.visual_encoder.", "blip.text_encoder.", "mlp.")
IGNORED_KEYS = ("blip.text_encoder.embeddings.position_ids",)   # a buffer transformers recomputes


def map_imagereward_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ImageReward.pt keys -> :class:`ImageRewardModel` keys. Unused BLIP entries are dropped;
    keys that are not ImageReward's at all are kept as they are, to be reported as unexpected."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(IGNORED_KEYS) or (key.startswith("blip.") and not key.startswith(SCORING_PREFIXES)):
            continue
        new = key
        if key.startswith(_VIT):
            rest = key[len(_VIT):]
            for pattern, repl in _VIT_RENAMES:
                if re.search(pattern, rest):
                    new = "visual." + re.sub(pattern, repl, rest)
                    break
        elif key.startswith("blip.text_encoder."):
            new = "text." + key[len("blip.text_encoder."):]
        out[new] = value
    return out


def vision_config_from_state(state: Mapping[str, torch.Tensor]) -> dict:
    """The ViT's size read off the checkpoint's shapes (heads = width / 64 as in BLIP)."""
    try:
        width = int(state[_VIT + "cls_token"].shape[-1])
        patch = int(state[_VIT + "patch_embed.proj.weight"].shape[-1])
        grid = int(round((state[_VIT + "pos_embed"].shape[1] - 1) ** 0.5))
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(re.escape(_VIT) + r"blocks\.(\d+)\.", k)))
        inter = int(state[_VIT + "blocks.0.mlp.fc1.weight"].shape[0])
    except (KeyError, ValueError, IndexError):
        return dict(DEFAULT_VISION)
    return dict(hidden_size=width, intermediate_size=inter, num_hidden_layers=depth, patch_size=patch,
                image_size=grid * patch)


class ImageRewardModel(nn.Module):
    """BLIP ViT + cross-attending BERT + MLP head; ``forward`` returns normalised rewards (N,)."""

    def __init__(self, vision: dict, med_config: dict):
        super().__init__()
        from transformers import BlipTextConfig, BlipVisionConfig
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        width = vision["hidden_size"]
        vcfg = BlipVisionConfig(**vision, num_attention_heads=max(1, width // VIT_HEAD_DIM),
                                layer_norm_eps=VIT_LAYER_NORM_EPS, hidden_act="gelu", attention_dropout=0.0)
        tcfg = BlipTextConfig(
            vocab_size=med_config["vocab_size"], hidden_size=med_config["hidden_size"],
            encoder_hidden_size=width, intermediate_size=med_config["intermediate_size"],
            num_hidden_layers=med_config["num_hidden_layers"],
            num_attention_heads=med_config["num_attention_heads"],
            max_position_embeddings=med_config["max_position_embeddings"],
            hidden_act=med_config.get("hidden_act", "gelu"),
            layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            pad_token_id=med_config.get("pad_token_id", 0), is_decoder=True, use_cache=False,
            # [DEC] is the first added token; ids only matter for generation, never for scoring
            bos_token_id=med_config["vocab_size"] - 2, sep_token_id=None, eos_token_id=None)
        self.visual = BlipVisionModel(vcfg)
        self.text = BlipTextModel(tcfg, add_pooling_layer=False)
        self.mlp = LinearMLPHead(tcfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.visual(pixel_values=pixel_values).last_hidden_state   # (N, 1+P, W)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask,
                         encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                         is_decoder=False).last_hidden_state                       # (N, L, C)
        reward = self.mlp(text[:, 0, :].float())                                  # (N,)
        return (reward - REWARD_MEAN) / REWARD_STD


def read_med_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RewardWeightsNotFound(
            f"imagereward: cannot read {path} ({e}); download med_config.json from the Hugging Face repo "
            "THUDM/ImageReward next to ImageReward.pt") from e
    except ValueError as e:
        raise CheckpointMismatchError(f"imagereward: {path} is not valid JSON ({e})") from e
    need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings")
    lacking = [k for k in need if k not in cfg]
    if lacking:
        raise CheckpointMismatchError(f"imagereward: {path} lacks {', '.join(lacking)}; it is not BLIP's med_config.json")
    if not cfg.get("add_cross_attention", False):
        raise CheckpointMismatchError(
            f"imagereward: {path} has add_cross_attention false; ImageReward's text encoder cross-attends "
            "to the image (use THUDM/ImageReward's med_config.json)")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointMismatchError(f"imagereward: {path} asks for {cfg['position_embedding_type']!r} "
                                      "position embeddings; ImageReward uses absolute ones")
    return cfg


def _find_tokenizer(weights: Path, tokenizer: str | os.PathLike | None, search_dirs) -> Path:
    def has_vocab(d: Path) -> bool:
        return (d / "vocab.txt").is_file() or (d / "tokenizer.json").is_file()

    if tokenizer is not None:
        d = Path(tokenizer).expanduser()
        if has_vocab(d):
            return d
        raise RewardWeightsNotFound(
            f"imagereward: no vocab.txt or tokenizer.json in {d}; "
            f"download {WEIGHT_SOURCES['bert-base-uncased'].download} into it")
    if has_vocab(weights.parent):
        return weights.parent
    return find_reward_weights("bert-base-uncased", None,
                               [weights.parent, weights.parent.parent, *search_dirs])


def load_imagereward_tokenizer(folder: Path, vocab_size: int):
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tok) != vocab_size:
        raise CheckpointMismatchError(
            f"imagereward: the tokenizer in {folder} has {len(tok)} tokens with [DEC] and [ENC] added, but "
            f"med_config.json says vocab_size={vocab_size}; use bert-base-uncased's vocab.txt "
            f"(30522 tokens, 30524 with the two added)")
    return tok


class ImageRewardReward(Reward):
    name = "imagereward"

    def __init__(self, model: ImageRewardModel, tokenizer, prep: ImagePrep, device: torch.device,
                 dtype: torch.dtype):
        model = model.to(device=device, dtype=dtype)
        model.mlp.float()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.prep, self.device, self.dtype = tokenizer, prep, device, dtype

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        pixels = self.prep(images, self.device, self.dtype)                       # (N, 3, 224, 224)
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                                max_length=MAX_PROMPT_TOKENS, return_tensors="pt").to(self.device)
        return self.model(pixels, tokens["input_ids"], tokens["attention_mask"])   # (N,)


def make_imagereward(path=None, device="cpu", dtype="float32", search_dirs=(), med_config=None, tokenizer=None,
                     **options) -> Reward:
    """ImageReward v1.0 from ``ImageReward.pt`` + ``med_config.json`` (THUDM/ImageReward) and
    bert-base-uncased's ``vocab.txt``.

    ``path``: the .pt file or the folder holding it; ``med_config``: defaults to the file next to
    the weights; ``tokenizer``: a folder with ``vocab.txt`` (default: next to the weights, else a
    ``bert-base-uncased`` folder next to them, in ``search_dirs`` or in ``PROGRPO_REWARD_DIR``).
    """
    if options:
        raise TypeError(f"reward 'imagereward' got unknown option(s) {', '.join(sorted(options))}")
    weights = find_reward_weights("imagereward", path, search_dirs)
    med = read_med_config(Path(med_config) if med_config else weights.parent / "med_config.json")
    tok = load_imagereward_tokenizer(_find_tokenizer(weights, tokenizer, search_dirs), int(med["vocab_size"]))
    raw = load_state_dict_file(weights, "imagereward")
    vision = vision_config_from_state(raw)
    state = map_imagereward_keys(raw)
    with empty_weights():
        model = ImageRewardModel(vision, med)
    check_state_dict(model, state, "imagereward", str(weights),
                     expected_download=WEIGHT_SOURCES["imagereward"].download)
    load_into(model, state)
    size = vision["image_size"]
    prep = ImagePrep(size=size, crop=(size, size), mode="shortest", interpolation="bicubic", resampler="pil",
                     crop_rounding="round", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    return ImageRewardReward(model, tok, prep, resolve_device(device), resolve_dtype(dtype))

