"""The FLOPs of each operation of an epoch on real architectures, counted on the ``meta`` device.

Builds the full-size networks with ComfyUI's own classes (``real_size.network``: SD1.5, SDXL,
SD3.5-Medium, Flux.1-dev), ComfyUI's AutoencoderKL and transformers' CLIP ViT-H/14 (PickScore's
and HPSv2's tower) on ``meta`` — shapes only, nothing allocated or downloaded — and counts with
``torch.utils.flop_counter`` (matmuls and convolutions):

* ``model_fwd``: one latent row through the denoiser at the image size (a guided call is two rows);
* ``backward_rows``: the backward of one row with the base weights frozen, as LoRA training runs
  it (activation gradients only), in forward rows; ``backward_rows_checkpointed`` adds the blocks'
  recomputation under gradient checkpointing at depth 1 (how real models train);
* ``decode``: the VAE decoding one latent at the image size; ``decode_224``: decoding the latent
  pooled to the reward model's 224² (the cheap proxy: pool the x0 latent, then decode);
  ``decode_taesd``: ComfyUI's TAESD (taesd / taesdxl / taesd3 / taef1: one architecture) decoding it
  at the image size (the trainer's ``proxy_vae``);
* ``reward``: one CLIP-H image-tower call at 224² (the text tower runs once per prompt: left out).

Run with ComfyUI's python from the repository root; prints one JSON object, which
``progrpo_core/bench/profiles.py`` keeps::

    python tests/gpu/cost_profiles.py --comfyui PATH
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# (model, resolution, latent channels, text tokens and width of its conditioning, pooled width)
SETTINGS = {"sd15": (512, 4), "sdxl": (1024, 4), "sd35m": (512, 16), "flux": (1024, 16)}


def _inputs(kind: str, rows: int, side: int, device: str = "meta"):
    import torch

    ch = SETTINGS[kind][1]
    x = torch.zeros(rows, ch, side, side, device=device)
    t = torch.full((rows,), 0.5 if kind == "flux" else 500.0, device=device)
    if kind == "sd15":
        return x, t, {"context": torch.zeros(rows, 77, 768, device=device)}
    if kind == "sdxl":
        return x, t, {"context": torch.zeros(rows, 77, 2048, device=device), "y": torch.zeros(rows, 2816, device=device)}
    if kind == "sd35m":
        return x, t, {"context": torch.zeros(rows, 154, 4096, device=device), "y": torch.zeros(rows, 2048, device=device)}
    return x, t, {"context": torch.zeros(rows, 512, 4096, device=device), "y": torch.zeros(rows, 768, device=device),
                  "guidance": torch.full((rows,), 3.5, device=device)}


def _sdpa() -> dict:
    """transformer_options running attention as PyTorch SDPA: on the CPU ComfyUI would slice it by
    the free memory, which the meta device does not have (the pack's training sessions do the same)."""
    import comfy.ldm.modules.attention as attn

    def unwrapped(f):
        return getattr(f, "__wrapped__", f)

    sliced = {unwrapped(getattr(attn, n)) for n in ("attention_sub_quad", "attention_split") if hasattr(attn, n)}

    def override(func, *args, **kwargs):
        return (attn.attention_pytorch if unwrapped(func) in sliced else func)(*args, **kwargs)

    return {"optimized_attention_override": override}


def count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def model_costs(kind: str) -> dict:
    import comfy.ops
    from real_size import network

    res, _ = SETTINGS[kind]
    net = network(kind, comfy.ops.disable_weight_init, device="meta").requires_grad_(False)
    x, t, kw = _inputs(kind, 1, res // 8)
    kw["transformer_options"] = _sdpa()
    fwd = count(lambda: net(x, t, **kw))

    def train():
        xg = x.clone().requires_grad_(True)
        net.train()
        net(xg, t, **kw).float().sum().backward()

    from progrpo_core import grad_checkpoint

    grad_checkpoint.enable(net, 1)  # as real models train: the blocks recomputed in backward
    total = count(train)  # forward, the blocks' recomputation, backward
    return {"resolution": res, "model_fwd": fwd, "backward_rows": (total - 2 * fwd) / fwd,
            "backward_rows_checkpointed": (total - fwd) / fwd,
            "parameters": sum(p.numel() for p in net.parameters())}


def vae_costs(channels: int, res: int) -> dict:
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": channels, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=channels)
    vae.requires_grad_(False)

    def decode(side):
        z = torch.zeros(1, channels, side, side, device="meta")
        return count(lambda: vae.decode(z))

    from comfy.taesd.taesd import TAESD

    with torch.device("meta"):
        tiny = TAESD(latent_channels=channels)
    tiny.requires_grad_(False)
    z = torch.zeros(1, channels, res // 8, res // 8, device="meta")
    return {"decode": decode(res // 8), "decode_224": decode(224 // 8), "decode_taesd": count(lambda: tiny.decode(z))}


def reward_costs() -> dict:
    import torch
    from transformers import CLIPModel

    sys.path.insert(0, str(REPO))
    from progrpo_core.bench.rewards import clip_config

    with torch.device("meta"):
        model = CLIPModel(clip_config("H-14"))
    pixels = torch.zeros(1, 3, 224, 224, device="meta")
    return {"reward": count(lambda: model.get_image_features(pixel_values=pixels)), "reward_model": "CLIP ViT-H/14 image tower"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--models", default=",".join(SETTINGS))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    from progrpo_headless import pack_nodes

    pack_nodes("host.headless").import_comfyui(args.comfyui, "cpu")
    import comfy.model_management as mm
    import torch

    real_free = mm.get_free_memory

    def free_memory(dev=None, torch_free_too=False):  # the meta device has all the memory it needs
        if dev is not None and torch.device(dev).type == "meta":
            return (2**40, 2**40) if torch_free_too else 2**40
        return real_free(dev, torch_free_too)

    mm.get_free_memory = free_memory
    mm.in_training = True  # fused kernels without a backward (Flux's RoPE) are skipped, as in training

    with torch.no_grad():
        reward = reward_costs()
    out = {}
    for kind in args.models.split(","):
        res, ch = SETTINGS[kind]
        out[kind] = {**model_costs(kind), **vae_costs(ch, res), **reward}
        print(kind, {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in out[kind].items()}, file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
