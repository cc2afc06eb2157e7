"""Sizes and speed of the reward models.

    python -m progrpo_core.bench.rewards                      # parameters and memory of the real models
    python -m progrpo_core.bench.rewards --reward pickscore=/models/PickScore_v1 --device cuda --dtype fp16

The real architectures are built on the ``meta`` device (nothing allocated, nothing downloaded)
to count their parameters exactly; weight memory is that count times the bytes per parameter.
Activation memory per image and multiply-accumulates per image are estimates from the layer
shapes (the largest per-layer working set: MLP hidden plus a few residual-width buffers, plus the
attention matrix where the module materialises it); weights dominate either way.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import torch

# THUDM/ImageReward med_config.json (BERT-base with cross-attention, vocab + [DEC] + [ENC])
IMAGEREWARD_MED_CONFIG = {
    "vocab_size": 30524, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 512, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
    "pad_token_id": 0, "add_cross_attention": True,
}


def clip_config(size: str):
    """transformers CLIPConfig of the released checkpoints: 'H-14' (laion/CLIP-ViT-H-14-laion2B, the
    PickScore_v1 base) or 'L-14' (openai/clip-vit-large-patch14)."""
    from transformers import CLIPConfig
    if size == "H-14":
        text = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    hidden_act="gelu")
        vision = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                      patch_size=14, image_size=224, hidden_act="gelu")
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=1024)
    if size == "L-14":
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      patch_size=14, image_size=224)
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)
    raise ValueError(f"unknown CLIP size {size!r}")


@dataclass
class ModelSize:
    name: str
    params: int             # all parameters loaded for scoring
    image_params: int       # of which in the image tower
    tokens: int             # image tokens (patches + class)
    width: int              # image tower width
    mlp: int                # image tower MLP hidden size
    layers: int             # image tower depth
    heads: int
    attention_matrix: bool  # the image tower materialises (heads, T, T) scores (eager attention)

    def weight_gib(self, bytes_per_param: int) -> float:
        return self.params * bytes_per_param / 2**30

    def activation_mib_per_image(self, bytes_per_value: int) -> float:
        t = self.tokens
        per_layer = t * (self.mlp + 4 * self.width) + (self.heads * t * t if self.attention_matrix else 0)
        return per_layer * bytes_per_value / 2**20

    def gmacs_per_image(self) -> float:
        linear = self.image_params * self.tokens
        attention = 2 * self.layers * self.tokens ** 2 * self.width
        return (linear + attention) / 1e9


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def real_model_sizes() -> list[ModelSize]:
    """Parameter counts of the real reward models, built on ``meta``."""
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    from ..rewards.heads import LinearMLPHead
    from ..rewards.hps import build_open_clip
    from ..rewards.imagereward import DEFAULT_VISION, VIT_HEAD_DIM, ImageRewardModel
    from ..rewards.weights import empty_weights

    rows = []
    h14 = clip_config("H-14")
    with torch.device("meta"):
        pick = CLIPModel(h14)
    v = h14.vision_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    rows.append(ModelSize("pickscore", _count(pick), _count(pick.vision_model) + _count(pick.visual_projection),
                          tokens, v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads,
                          False))
    hps = build_open_clip("ViT-H-14")
    rows.append(ModelSize("hpsv2 / hpsv2.1", _count(hps), _count(hps.visual), tokens, 1280, 5120, 32, 16, False))
    l14 = clip_config("L-14")
    with torch.device("meta"):
        clip = CLIPModel(l14)
        vision_cfg = l14.vision_config
        vision_cfg.projection_dim = l14.projection_dim
        aes = CLIPVisionModelWithProjection(vision_cfg)
    v = l14.vision_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    rows.append(ModelSize("clip (ViT-L/14)", _count(clip), _count(clip.vision_model) + _count(clip.visual_projection),
                          tokens, v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads,
                          False))
    rows.append(ModelSize("aesthetic", _count(aes) + _count(LinearMLPHead(768)), _count(aes), tokens, v.hidden_size,
                          v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, False))
    with empty_weights():
        ir = ImageRewardModel(dict(DEFAULT_VISION), IMAGEREWARD_MED_CONFIG)
    tokens = (DEFAULT_VISION["image_size"] // DEFAULT_VISION["patch_size"]) ** 2 + 1
    rows.append(ModelSize("imagereward", _count(ir), _count(ir.visual), tokens, DEFAULT_VISION["hidden_size"],
                          DEFAULT_VISION["intermediate_size"], DEFAULT_VISION["num_hidden_layers"],
                          DEFAULT_VISION["hidden_size"] // VIT_HEAD_DIM, True))
    return rows


def memory_table(rows: list[ModelSize] | None = None) -> str:
    rows = rows or real_model_sizes()
    out = ["| reward | parameters | weights fp32 | weights fp16/bf16 | activations / image (fp16, est.) | GMACs / image (est.) |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.name} | {r.params / 1e6:,.0f} M | {r.weight_gib(4):.2f} GiB | {r.weight_gib(2):.2f} GiB | "
                   f"{r.activation_mib_per_image(2):.1f} MiB | {r.gmacs_per_image():.0f} |")
    return "\n".join(out)


def throughput(reward: Callable, batch: int = 16, size: int = 512, repeats: int = 3,
               prompts: list[str] | None = None) -> float:
    """Images per second of ``reward`` on a (batch, 3, size, size) batch, after one warm-up call."""
    x = torch.rand(batch, 3, size, size)
    prompts = prompts or [f"a photo of object {i % 4}" for i in range(batch)]
    reward(x[:2], prompts[:2])
    t = time.perf_counter()
    for _ in range(repeats):
        reward(x, prompts)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m progrpo_core.bench.rewards", description=__doc__.split("\n")[0])
    parser.add_argument("--reward", action="append", default=[], metavar="SPEC", help="also time this reward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    print(memory_table())
    from ..rewards.weighted import build_reward_from_spec
    for spec in args.reward:
        reward = build_reward_from_spec(spec, device=args.device, dtype=args.dtype)
        ips = throughput(reward, args.batch, args.size)
        print(f"{spec}: {ips:.1f} images/s (batch {args.batch}, {args.size}x{args.size}, {args.device}, {args.dtype})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
