"""The planner's tables for the model families, counted at real size on fake tensors.

Most of these networks do not fit this project's 23 GB CPU machine at all (Qwen-Image 20 B, HiDream
17 B, Flux.2-dev 32 B in bf16), and the others at their usual resolutions cost hours per forward on
its 2 cores. So each family's real-size network is built from ComfyUI's own model config class with
the config ComfyUI detects in the real checkpoint, on *fake tensors* (``torch._subclasses.
FakeTensorMode``: shapes and dtypes, no storage, no arithmetic), and run through the calls the planner
probes — a no-grad model call, a trained step's forward and backward with the LoRA branches on the
``attention`` targets and gradient checkpointing at depth 1, a VAE decode — with 1 and 2 rows, in
bf16, attention through PyTorch's SDPA as the trainer pins it. The planner's own meter
(``progrpo_core.memory.MemoryMeter``) counts the bytes those calls allocate and torch's FLOP counter
their FLOPs (HiDream's mixture of experts with balanced routing: fake tensors cannot route by value), exactly as ``measure_costs`` does on a real CPU run (there, minus the arithmetic); the
weights are counted by storage format from the parameters' shapes:

* ``bf16``: 2 bytes a parameter;
* ``fp8`` (UNETLoader ``weight_dtype fp8_e4m3fn``): 1 byte for every Linear/Conv weight, 2 for the rest,
  plus one layer cast to bf16 while it runs;
* ``Q8_0`` / ``Q4_K`` (ComfyUI-GGUF): matrices whose rows fit the block size (32 / 256 values) at 34/32
  and 144/256 bytes a value, 1-D and tiny tensors F32, other matrices F16, plus one layer
  dequantised to bf16 while it runs (real Q4_K_M files keep a few matrices in Q6_K: slightly larger).

``planner.make_plan`` then chooses the micro-batches for each card's budget (0.9 of its memory) with
the paper's schedule (``pro-grpo``: 8 prompts per epoch, 48 → 24 → 12 after steps 5 and 7 of 10, the
largest group any method samples) and the family's default cfg; seconds per epoch are FLOPs at 40 % of
the card's bf16 peak (``planner.MFU``) for the named cards in ``planner.GPUS`` (none for the 12 and 16
GB rows, which stand for any card of that memory). A video family decodes the latent frames its
default reward scores (frames 0, 4, 8, 12). The reward model is not included (add its weights from
docs/REWARDS.md). Run with ComfyUI's python from the repository root::

    python tests/gpu/family_plans.py --comfyui PATH [--family flux2-klein-4b ...] [--markdown]
    python tests/gpu/family_plans.py --comfyui PATH --check-fake   # fake against real tensors, small networks
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# family -> (ComfyUI model config class, unet_config as detected in the real checkpoint, latent
# (C, [T,] H, W) at the usual resolution, the diffusion model's extra inputs (name -> shape per row),
# VAE (kind, z channels), what the size is)
FAMILIES = {
    "flux1-dev": ("Flux", dict(
        image_model="flux", axes_dim=[16, 56, 56], num_heads=24, mlp_ratio=4.0, theta=10000, out_channels=16,
        qkv_bias=True, txt_ids_dims=[], patch_size=2, in_channels=16, hidden_size=3072, context_in_dim=4096,
        vec_in_dim=768, depth=19, depth_single_blocks=38, guidance_embed=True),
        (16, 128, 128), {"context": (512, 4096), "y": (768,), "guidance": ()}, ("kl", 16), "1024²"),
    "flux2-klein-4b": ("Flux2", dict(
        image_model="flux2", axes_dim=[32, 32, 32, 32], num_heads=24, mlp_ratio=3.0, theta=2000, out_channels=128,
        in_channels=128, global_modulation=True, mlp_silu_act=True, qkv_bias=False, ops_bias=False,
        default_ref_method="index", ref_index_scale=10.0, txt_ids_dims=[3], patch_size=1, hidden_size=3072,
        context_in_dim=7680, vec_in_dim=None, depth=5, depth_single_blocks=20, guidance_embed=False),
        (128, 64, 64), {"context": (512, 7680)}, ("kl", 32), "1024²"),
    "flux2-dev": ("Flux2", dict(
        image_model="flux2", axes_dim=[32, 32, 32, 32], num_heads=48, mlp_ratio=3.0, theta=2000, out_channels=128,
        in_channels=128, global_modulation=True, mlp_silu_act=True, qkv_bias=False, ops_bias=False,
        default_ref_method="index", ref_index_scale=10.0, txt_ids_dims=[3], patch_size=1, hidden_size=6144,
        context_in_dim=15360, vec_in_dim=None, depth=8, depth_single_blocks=48, guidance_embed=True),
        (128, 64, 64), {"context": (512, 15360), "guidance": ()}, ("kl", 32), "1024²"),
    "z-image": ("ZImage", dict(
        image_model="lumina2", patch_size=2, in_channels=16, dim=3840, cap_feat_dim=2560, n_layers=30, qk_norm=True,
        n_heads=30, n_kv_heads=30, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
        ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32),
        (16, 128, 128), {"context": (128, 2560), "num_tokens": 128}, ("kl", 16), "1024²"),
    "qwen-image": ("QwenImage", dict(image_model="qwen_image", in_channels=64, out_channels=16, num_layers=60),
                   (16, 1, 128, 128), {"context": (128, 3584)}, ("wan", 16), "1024²"),
    "chroma": ("Chroma", dict(
        image_model="chroma", in_channels=64, out_channels=64, in_dim=64, out_dim=3072, hidden_dim=5120, n_layers=5,
        axes_dim=[16, 56, 56], num_heads=24, mlp_ratio=4.0, theta=10000, qkv_bias=True, txt_ids_dims=[],
        patch_size=2, hidden_size=3072, context_in_dim=4096, vec_in_dim=None, depth=19, depth_single_blocks=38),
        (16, 128, 128), {"context": (512, 4096), "guidance": ()}, ("kl", 16), "1024²"),
    "hidream-full": ("HiDream", dict(
        image_model="hidream", attention_head_dim=128, axes_dims_rope=[64, 32, 32], caption_channels=[4096, 4096],
        max_resolution=[128, 128], in_channels=16, llama_layers=[*range(32), *[31] * 16], num_attention_heads=20,
        num_routed_experts=4, num_activated_experts=2, num_layers=16, num_single_layers=32, out_channels=16,
        patch_size=2, text_emb_dim=2048),
        (16, 128, 128), {"context": (128, 4096), "y": (2048,), "encoder_hidden_states_llama3": (32, 128, 4096)},
        ("kl", 16), "1024²"),
    "lumina2": ("Lumina2", dict(
        image_model="lumina2", patch_size=2, in_channels=16, dim=2304, cap_feat_dim=2304, n_layers=26, qk_norm=True,
        n_heads=24, n_kv_heads=8, axes_dims=[32, 32, 32], axes_lens=[300, 512, 512], rope_theta=10000.0,
        ffn_dim_multiplier=4.0), (16, 128, 128), {"context": (256, 2304), "num_tokens": 256}, ("kl", 16), "1024²"),
    "sdxl-vpred": ("SDXL", dict(
        use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
        num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
        transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
        channel_mult=[1, 2, 4], transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048,
        num_head_channels=64, use_temporal_resblock=False, use_temporal_attention=False),
        (4, 128, 128), {"context": (77, 2048), "y": (2816,)}, ("kl", 4), "1024²"),
    "wan2.1-1.3b": ("WAN21_T2V", dict(
        image_model="wan2.1", model_type="t2v", dim=1536, out_dim=16, num_heads=12, ffn_dim=8960, num_layers=30,
        patch_size=(1, 2, 2), freq_dim=256, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
        in_dim=16, text_dim=4096), (16, 9, 60, 104), {"context": (512, 4096)}, ("wan", 16), "832×480, 33 frames"),
    "wan2.1-14b": ("WAN21_T2V", dict(
        image_model="wan2.1", model_type="t2v", dim=5120, out_dim=16, num_heads=40, ffn_dim=13824, num_layers=40,
        patch_size=(1, 2, 2), freq_dim=256, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
        in_dim=16, text_dim=4096), (16, 9, 60, 104), {"context": (512, 4096)}, ("wan", 16), "832×480, 33 frames"),
}
CFG = {"Flux": 1.0, "Flux2": 1.0, "ZImage": 1.0, "QwenImage": 2.5, "Chroma": 4.0, "HiDream": 5.0, "Lumina2": 4.0, "SDXL": 4.5,
       "WAN21_T2V": 6.0}
CARDS = {"12 GB": (12, None), "16 GB": (16, None), "24 GB (RTX 4090)": (24, "rtx4090"), "48 GB (L40S)": (48, "l40s"),
         "80 GB (H100)": (80, "h100")}
VIDEO_FRAMES = (4, 4)  # the frames a video reward scores by default (0, 4, 8, 12): a prefix of the latent is decoded
FORMATS = ("bf16", "fp8", "Q8_0", "Q4_K")
RANK = 16


def _comfy(comfyui: str) -> None:
    sys.path.insert(0, str(REPO))
    from progrpo_headless import pack_nodes

    pack_nodes("host.headless").import_comfyui(comfyui, "cpu")


def weight_bytes(net, fmt: str) -> tuple[int, int]:
    """(bytes of the network's parameters stored as ``fmt``, bytes of its largest layer in bf16)."""
    from torch import nn

    linear_ids = {}
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and getattr(m, "weight", None) is not None:
            linear_ids[id(m.weight)] = m.weight
    total, largest = 0, 0
    for p in net.parameters():
        n = math.prod(p.shape)
        matrix = id(p) in linear_ids and p.ndim >= 2
        largest = max(largest, 2 * n if matrix else 0)
        if fmt == "bf16":
            total += 2 * n
        elif fmt == "fp8":
            total += n if matrix else 2 * n
        else:
            block, size = {"Q8_0": (32, 34), "Q4_K": (256, 144)}[fmt]
            if p.ndim == 1 or n <= 1024:
                total += 4 * n
            elif matrix and math.prod(p.shape[1:]) % block == 0:
                total += n * size // block
            else:
                total += 2 * n
    return total, largest


def count(name: str, spec: tuple | None = None, fake: bool = True) -> dict:
    """Per-row memory (bytes) and FLOPs of the planner's three calls, at real size on fake tensors
    (``spec``: another entry of :data:`FAMILIES`' form; ``fake=False``: on real tensors, for the check)."""
    import contextlib

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    import comfy.ldm.modules.attention as attn
    import comfy.model_management as mm
    import comfy.supported_models as sm

    from progrpo_core import grad_checkpoint
    from progrpo_headless import pack_nodes
    from progrpo_core.memory import MemoryMeter
    from progrpo_core.planner import _OpCounter

    families, LoraBranch = pack_nodes("host.families"), pack_nodes("host.lora").LoraBranch
    cls, config, latent, extra, (vae_kind, z), resolution = spec or FAMILIES[name]
    mm.in_training = True
    override = {"optimized_attention_override": lambda func, *a, **k: attn.attention_pytorch(*a, **k)}
    flash_attention()
    balanced_moe()
    out: dict = {"family": name, "config": cls, "resolution": resolution}
    t0 = time.perf_counter()
    with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
        model_config = getattr(sm, cls)(dict(config))
        model_config.set_inference_dtype(torch.bfloat16, None)
        model = model_config.get_model({"v_pred": torch.zeros(0)} if cls == "SDXL" else {}, "")
        net = model.diffusion_model
        net.requires_grad_(False)
        out["parameters"] = sum(math.prod(p.shape) for p in net.parameters())
        out["weights"] = {fmt: weight_bytes(net, fmt) for fmt in FORMATS}
        targets = families.target_modules(net, "attention", families.family_of(cls))
        modules = dict(net.named_modules())
        g = torch.Generator().manual_seed(0)
        lora = []
        for path in targets:
            m = modules[path]
            branch = LoraBranch(m.out_features, m.in_features, RANK, RANK, g, torch.device("cpu"))
            branch.attach(m)
            lora += list(branch.parameters())
        out["lora_parameters"] = sum(p.numel() for p in lora)
        grad_checkpoint.enable(net, 1)
        net.train()
        cfg_rows = 1 if CFG[cls] == 1.0 else 2

        def inputs(rows: int) -> tuple:
            x = torch.randn(rows, *latent)
            kwargs = {}
            for k, shape in extra.items():
                if k == "num_tokens":
                    kwargs[k] = shape
                elif k == "guidance":
                    kwargs[k] = torch.full((rows,), 3.5)
                elif k == "context":
                    kwargs["c_crossattn"] = torch.randn(rows, *shape)
                else:
                    kwargs[k] = torch.randn(rows, *shape)
            return x, torch.full((rows,), 0.5), kwargs

        def sample(rows):
            x, s, kw = inputs(rows)
            with torch.no_grad():
                model.apply_model(x, s, transformer_options=override, **kw)

        def train(rows):
            x, s, kw = inputs(rows * cfg_rows)
            model.apply_model(x, s, transformer_options=override, **kw).float().pow(2).mean().backward()
            for p in lora:
                p.grad = None

        vae = _vae(vae_kind, z, small=spec is not None)
        zshape = _vae_latent(vae_kind, z, latent)

        def decode(images):
            with torch.no_grad():
                vae.decode(torch.randn(images, *zshape).to(torch.bfloat16))

        for phase, fn in (("sample", sample), ("train", train), ("decode", decode)):
            peaks = []
            for rows in (1, 2):
                with MemoryMeter() as meter:
                    fn(rows)
                peaks.append(meter.peak)
            counter, opc = FlopCounterMode(display=False), _OpCounter()
            with counter, opc:
                fn(1)
            out[phase] = {"bytes_1": peaks[0], "bytes_2": peaks[1], "flops": float(counter.get_total_flops()),
                          "ops": float(opc.count)}
    out["latent"] = latent
    out["cfg"] = CFG[cls]
    out["count_s"] = round(time.perf_counter() - t0, 1)
    return out


def flash_attention() -> None:
    """ComfyUI's SDPA as a GPU runs it: the flash kernel, whose memory grows with the tokens, not with
    their square (on CPU tensors torch would count the math path's attention matrix). PyTorch's CPU flash
    kernel has the same inputs, outputs and saved tensors; grouped-query heads are expanded first."""
    import torch

    import comfy.ops

    sdpa = comfy.ops.scaled_dot_product_attention

    def flash(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, **kw):
        if attn_mask is not None:
            return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)
        if k.shape[1] != q.shape[1]:
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, scale=scale)[0]

    comfy.ops.scaled_dot_product_attention = flash


def balanced_moe() -> None:
    """HiDream's mixture of experts routes each token by its scores, ``y[idx == i] = expert(x[idx == i])``:
    a shape that depends on the data, which fake tensors cannot have. Counted here with balanced routing,
    each expert given an equal share of the (token, choice) rows — the load a trained router aims at —
    through the same experts, the same gate and the same shared expert."""
    import torch
    from comfy.ldm.hidream.model import MOEFeedForwardSwiGLU

    def forward(self, x):
        wtype, identity, shape = x.dtype, x, x.shape
        _, topk_weight, _ = self.gate(x)
        rows = x.reshape(-1, shape[-1]).repeat_interleave(self.num_activated_experts, dim=0)
        y = torch.cat([e(part).to(wtype) for e, part in zip(self.experts, rows.tensor_split(len(self.experts)))])
        y = (y.view(*topk_weight.shape, -1) * topk_weight.unsqueeze(-1)).sum(dim=1)
        return y.view(*shape).to(wtype) + self.shared_experts(identity)

    MOEFeedForwardSwiGLU.forward = forward


def _vae(kind: str, z: int, small: bool = False):
    """The family's VAE architecture (bf16): ComfyUI's AutoencoderKL (Flux/SDXL-type) or Wan's causal one
    (``small``: an AutoencoderKL of 32 base channels, for the check)."""
    import torch

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 (fake tensors cannot be converted after)
    try:
        if kind == "wan" and not small:
            from comfy.ldm.wan.vae import WanVAE

            return WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                          temperal_downsample=[False, True, True])
        from comfy.ldm.models.autoencoder import AutoencoderKL

        dd = {"double_z": True, "z_channels": z, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32 if small else 128,
              "ch_mult": [1, 2] if small else [1, 2, 4, 4], "num_res_blocks": 1 if small else 2, "attn_resolutions": [], "dropout": 0.0}
        return AutoencoderKL(ddconfig=dd, embed_dim=z)
    finally:
        torch.set_default_dtype(default)


def _vae_latent(kind: str, z: int, latent) -> tuple:
    if kind == "wan":
        if len(latent) == 3:
            return (16, 1, *latent[1:])
        latent_frames_for = pack_nodes_model().latent_frames_for  # the trainer's decode of a video: a prefix
        return (16, latent_frames_for(VIDEO_FRAMES, latent[1]), *latent[2:])
    if z == 32:  # Flux.2: 128 channels are 32 at twice the side, 2x2 patches
        return (32, latent[-2] * 2, latent[-1] * 2)
    return (z, *latent[-2:])


def pack_nodes_model():
    from progrpo_headless import pack_nodes

    return pack_nodes("host.model")


def plans(counted: dict) -> list[dict]:
    """The planner's plan of every format on every card, from the counted costs."""
    from progrpo_core.config import build_config
    from progrpo_core.planner import GPUS, GiB, Costs, Linear, Target, make_plan

    cfg = build_config({"grpo": {"method": "pro-grpo", "prompts_per_epoch": 8}, "sampler": {"cfg": counted["cfg"]},
                        "run": {"eval_every": 0}})
    sampler = cfg.sampler.resolved("flow" if counted["config"] != "SDXL" else "eps", counted["cfg"])
    schedule = cfg.prune_schedule("flow" if counted["config"] != "SDXL" else "eps")
    rows = []
    for fmt in FORMATS:
        weights, largest = counted["weights"][fmt]
        if fmt != "bf16":
            weights += largest  # one layer cast or dequantised to bf16 while it runs
        fits = {k: Linear.fit(counted[k]["bytes_1"], counted[k]["bytes_2"]) for k in ("sample", "train", "decode")}
        costs = Costs(device="cuda", precision="bf16", weights=int(weights), lora_state=4 * counted["lora_parameters"] * 5,
                      reward_weights=0, latent=4 * math.prod(counted["latent"]),
                      cfg_rows=1 if counted["cfg"] == 1.0 else 2, sample=fits["sample"], train=fits["train"],
                      decode=fits["decode"], sample_s=Linear(0, 0), train_s=Linear(0, 0), decode_s=Linear(0, 0),
                      flops={k: counted[k]["flops"] for k in ("sample", "train", "decode")},
                      ops={k: counted[k]["ops"] for k in ("sample", "train", "decode")})
        for card, (gib, gpu) in CARDS.items():
            target = Target(card, int(0.9 * gib * GiB), GPUS[gpu][1] if gpu else 1.0)
            p = make_plan(costs, cfg, schedule, sampler, 8, 0, target)
            rows.append({"family": counted["family"], "format": fmt, "card": card, "weights_gib": weights / GiB,
                         "fits": p.fits, "peak_gib": p.peak_bytes / GiB, "sample_micro_batch": p.sample_micro_batch,
                         "train_micro_batch": p.train_micro_batch, "epoch_s": p.epoch_s if gpu else None,
                         "problems": p.problems})
    return rows


def markdown(all_rows: list[dict], counted: list[dict]) -> str:
    """One row per family and format: its weights, then each card's micro-batches (sampling network rows
    / training rows), planned peak and (for the named cards) seconds per epoch; "—" does not fit, with
    the peak of the smallest micro-batches."""
    lines = ["| family (resolution, parameters) | weights | " + " | ".join(CARDS) + " |",
             "|---|---|" + "---|" * len(CARDS)]
    for c in counted:
        for fmt in FORMATS:
            cells = []
            for card in CARDS:
                r = next(r for r in all_rows if r["family"] == c["family"] and r["format"] == fmt and r["card"] == card)
                t = f", {r['epoch_s']:.0f} s" if r["epoch_s"] is not None else ""
                cells.append(f"{r['sample_micro_batch']} / {r['train_micro_batch']}, {r['peak_gib']:.1f} GiB{t}"
                             if r["fits"] else f"— (needs {r['peak_gib']:.1f} GiB)")
            name = f"{c['family']} ({c['resolution']}, {c['parameters'] / 1e9:.1f} B)" if fmt == "bf16" else ""
            w = all_rows[[i for i, r in enumerate(all_rows) if r["family"] == c["family"] and r["format"] == fmt][0]]
            lines.append(f"| {name} | {fmt} {w['weights_gib']:.1f} GiB | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Scaled-down members of two families (the same classes, a few blocks, 256² and 32 text tokens), small
# enough to run for real on this machine's CPU: --check-fake counts each on fake and on real tensors.
SMALL = {
    "lumina2": ("Lumina2", dict(FAMILIES["lumina2"][1], dim=256, cap_feat_dim=256, n_layers=2, n_heads=4, n_kv_heads=2,
                                axes_dims=[16, 24, 24]),
                (16, 32, 32), {"context": (32, 256), "num_tokens": 32}, ("kl", 16), "256²"),
    "chroma": ("Chroma", dict(FAMILIES["chroma"][1], hidden_size=256, num_heads=4, depth=1, depth_single_blocks=1,
                              context_in_dim=256, hidden_dim=256, n_layers=1, axes_dim=[16, 24, 24], out_dim=256),
               (16, 32, 32), {"context": (32, 256), "guidance": ()}, ("kl", 16), "256²"),
}


def check_fake() -> bool:
    """Fake-tensor counts against real ones on :data:`SMALL`: bytes and FLOPs of every call must agree."""
    same = True
    for name, spec in SMALL.items():
        fake, real = count(name, spec), count(name, spec, fake=False)
        for phase in ("sample", "train", "decode"):
            pairs = {q: (fake[phase][q], real[phase][q]) for q in ("bytes_1", "bytes_2", "flops")}
            ok = all(a == b for a, b in pairs.values())
            same &= ok
            print(json.dumps({"check": name, "phase": phase, "fake_vs_real": pairs, "equal": ok}), flush=True)
    return same


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--family", action="append", choices=list(FAMILIES))
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--check-fake", action="store_true", help="compare fake- and real-tensor counts on scaled-down "
                    "networks (SMALL) instead")
    a = ap.parse_args(argv)
    _comfy(a.comfyui)
    if a.check_fake:
        return 0 if check_fake() else 1
    counted, rows = [], []
    for name in a.family or list(FAMILIES):
        c = count(name)
        counted.append(c)
        rows += plans(c)
        print(json.dumps({"counted": c}), flush=True)
    print(json.dumps({"plans": rows}))
    if a.markdown:
        print(markdown(rows, counted))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
