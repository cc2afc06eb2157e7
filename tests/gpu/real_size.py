"""Real-size architectures with random weights: two epochs of a method, measured against the plan.

Builds the full-size SD1.5, SDXL, SD3.5-Medium or Flux-dev network (and its full-size VAE)
through ComfyUI's own library — the architecture is detected by ComfyUI from the network's keys,
exactly as for a real checkpoint — fills it with random weights (nothing is downloaded), and runs
the pack's trainer node path on it (ComfyUI's model patcher, the LoRA branches, the guider session)
with the planner's micro-batches. Prints one JSON object: the plan (peak memory per phase,
micro-batches, seconds per epoch) and what was measured (peak memory, seconds per phase and per
epoch, the fraction of LoRA entries the first step's gradient reached, whether the LoRA changed
the output), and the plan/measured ratios.

Run with ComfyUI's python from the repository root; not part of the test suite (a CPU needs
minutes to an hour per model; a GPU seconds)::

    python tests/gpu/real_size.py --comfyui PATH --model sd15 --resolution 128          # CPU, small
    python tests/gpu/real_size.py --comfyui PATH --model sd15 --resolution 128 --method grpo   # a --method preset
    python tests/gpu/real_size.py --comfyui PATH --model sd35m --resolution 1024        # GPU
    python tests/gpu/real_size.py --comfyui PATH --model sd35m --resolution 1024 --precision bf16 \
        --gpus rtx4090,a100-80,h100                                                     # plan only

Peak memory on CUDA is the allocator's peak; on the CPU it is the resident weights plus the bytes
the training allocated (``progrpo_core.memory.MemoryMeter``). The reward is the built-in ``stroke``
(its memory is not part of the numbers; add the reward model's from the README's table).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

MODELS = ("sd15", "sdxl", "sd35m", "flux")
LATENT_CHANNELS = {"sd15": 4, "sdxl": 4, "sd35m": 16, "flux": 16}


def network(kind: str, ops, device: str = "meta"):
    """The full-size diffusion network of ``kind`` (ComfyUI's classes), on ``device``."""
    if kind in ("sd15", "sdxl"):
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        common = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, use_spatial_transformer=True,
                      legacy=False, use_temporal_attention=False, use_temporal_resblock=False)
        if kind == "sd15":
            cfg = dict(num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                       transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                       context_dim=768, num_heads=8, use_linear_in_transformer=False)
        else:
            cfg = dict(num_classes="sequential", adm_in_channels=2816, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                       transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                       transformer_depth_middle=10, context_dim=2048, num_head_channels=64,
                       use_linear_in_transformer=True)
        return UNetModel(**common, **cfg, device=device, operations=ops)
    if kind == "sd35m":
        from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

        return MMDiT(depth=24, in_channels=16, out_channels=16, patch_size=2, adm_in_channels=2048,
                     context_embedder_config={"target": "torch.nn.Linear",
                                              "params": {"in_features": 4096, "out_features": 1536}},
                     pos_embed_max_size=384, num_patches=384 * 384, pos_embed_scaling_factor=None, qk_norm="rms",
                     x_block_self_attn_layers=list(range(13)), device=device, operations=ops)
    from comfy.ldm.flux.model import Flux

    return Flux(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0,
                num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                qkv_bias=True, guidance_embed=True, txt_ids_dims=[], device=device, operations=ops)


def build_patcher(kind: str, dtype, device):
    """ComfyUI's model for ``kind`` (detected from the network's keys) with random weights."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops

    keys = network(kind, comfy.ops.disable_weight_init).state_dict()  # shapes only (meta)
    model_config = comfy.model_detection.model_config_from_unet(keys, "")
    if model_config is None:
        raise RuntimeError(f"ComfyUI does not recognise the {kind} network built here")
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model(keys, "", device=device)
    init_random(model.diffusion_model, dtype, device)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device()), \
        type(model_config).__name__


def init_random(module, dtype, device) -> None:
    """Weights with >= 2 dims ~ N(0, 1/fan_in), biases 0, other 1-D tensors 1 (as tests/host/tiny_models.py)."""
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            real = torch.empty(t.shape, dtype=dtype, device=device)
            if t.ndim >= 2:
                fan_in = t[0].numel()
                real.normal_(0, fan_in**-0.5, generator=g)
            elif name.endswith("bias"):
                real.zero_()
            else:
                real.fill_(1.0)
            if t.is_meta:
                parent, _, leaf = name.rpartition(".")
                owner = module.get_submodule(parent) if parent else module
                if leaf in owner._parameters:
                    owner._parameters[leaf] = torch.nn.Parameter(real, requires_grad=False)
                else:
                    owner._buffers[leaf] = real
            else:
                t.copy_(real)


def build_vae(channels: int, dtype, device):
    import comfy.sd
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": channels, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        shapes = AutoencoderKL(ddconfig=ddconfig, embed_dim=channels).state_dict()
    g = torch.Generator().manual_seed(1)
    sd = {}
    for k, v in shapes.items():
        if v.ndim >= 2:
            sd[k] = torch.randn(v.shape, generator=g) / v[0].numel() ** 0.5
        else:
            sd[k] = torch.zeros(v.shape) if k.endswith("bias") else torch.ones(v.shape)
    return comfy.sd.VAE(sd=sd, device=device, dtype=dtype)


def build_taesd(channels: int, dtype, device):
    """A full-size TAESD (ComfyUI's tiny autoencoder, what VAELoader builds from ``taesd`` or
    ``taesd3`` in models/vae_approx) with random weights: the cheap decoder for the previews."""
    import comfy.sd
    import torch
    from comfy.taesd.taesd import TAESD

    g = torch.Generator().manual_seed(2)
    sd = {k: (torch.randn(v.shape, generator=g) / v[0].numel() ** 0.5 if v.ndim >= 2 else torch.zeros(v.shape))
          for k, v in TAESD(latent_channels=channels).state_dict().items()}
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(0.18215 if channels == 4 else 1.5305), torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd, device=device, dtype=dtype)


def conditioning(kind: str):
    """One prompt's CONDITIONING (positive, negative) of the right shapes, random."""
    import torch

    g = torch.Generator().manual_seed(2)
    dims = {"sd15": (77, 768, None), "sdxl": (77, 2048, 1280), "sd35m": (154, 4096, 2048), "flux": (256, 4096, 768)}
    tokens, width, pooled = dims[kind]

    def one():
        extra = {} if pooled is None else {"pooled_output": torch.randn(1, pooled, generator=g)}
        if kind == "flux":
            extra["guidance"] = 3.5
        return [[torch.randn(1, tokens, width, generator=g) * 0.1, extra]]

    return one(), one()


def run(args) -> dict:
    sys.path.insert(0, str(REPO))
    from progrpo_headless import pack_nodes

    pack_nodes("host.headless").import_comfyui(args.comfyui, args.device)
    import comfy.model_management as mm
    import torch

    from progrpo_core.config import build_config
    from progrpo_core.devices import resolve_device, resolve_precision
    from progrpo_core.rewards import build_reward
    from progrpo_core.training import Trainer

    host = pack_nodes("host").ComfyDenoiser
    Adapter = pack_nodes("host").ComfyLoraAdapter
    device = resolve_device(mm.get_torch_device())
    precision = resolve_precision(args.precision, device)
    t0 = time.perf_counter()
    patcher, detected = build_patcher(args.model, precision.dtype, device)
    vae = build_vae(LATENT_CHANNELS[args.model], precision.dtype, device)
    proxy_vae = build_taesd(LATENT_CHANNELS[args.model], precision.dtype, device) if args.proxy_vae == "taesd" else None
    build_s = time.perf_counter() - t0
    side = args.resolution // 8
    cfg = build_config({
        "model": {"comfyui": args.comfyui, "checkpoint": args.model},
        "sampler": {"steps": args.steps, "cfg": args.cfg, "eval_steps": 2},
        "schedule": {k: v for k, v in (("group_size", args.group), ("checkpoints", args.checkpoints),
                                       ("keep", args.keep), ("proxy_scale", args.proxy_scale)) if v is not None},
        "grpo": {"method": args.method, "prompts_per_epoch": args.prompts, "lr": 3e-4, "ema": True},
        "lora": {"rank": 16, "alpha": 16.0}, "reward": {"name": "stroke", "offload": False},
        "run": {"epochs": args.epochs, "eval_every": 0, "precision": precision.name, "gradient_checkpointing": 1,
                **({"memory_gib": args.memory_gib} if args.memory_gib else {})}})
    pos, neg = conditioning(args.model)
    mm.in_training = True  # the patcher is this script's own: no copy of it is needed (the node makes one)
    with torch.inference_mode(False):
        den = host(patcher, (LATENT_CHANNELS[args.model], side, side), vae=vae, name=args.model, full_load=True,
                   proxy_vae=proxy_vae)
        den.add_prompt("a prompt", pos, neg)
        adapter = Adapter(den, 16, 16.0, seed=0)
        trainer = Trainer.build(cfg, model=den, reward=build_reward("stroke"), prompts=["a prompt"], adapter=adapter,
                          log=lambda s: None)
        result: dict = {"model": args.model, "method": args.method, "prompts": args.prompts,
                        "schedule": str(trainer.schedule),
                        "proxy_vae": args.proxy_vae, "proxy_scale": trainer.cfg.schedule.proxy_scale,
                        "detected": detected, "resolution": args.resolution,
                        "device": str(device), "precision": precision.name,
                        "parameters": sum(p.numel() for p in den.net.parameters()), "build_s": round(build_s, 1)}

        def plans_for_gpus():
            from progrpo_core.planner import GPUS, GiB, Target, measure_costs
            from progrpo_core.training.planning import preview_scale

            t = time.perf_counter()
            costs = measure_costs(den, adapter, trainer.reward, trainer.sampler, device, precision.name, "a prompt",
                                  timed=False, proxy_scale=preview_scale(trainer.spec))
            result["plan_s"] = round(time.perf_counter() - t, 1)
            result["gpus"] = {}
            for name in args.gpus.split(","):
                memory, tflops = GPUS[name]
                p = trainer.make_plan(Target(name, int(0.9 * memory * GiB), tflops), costs=costs)
                result["gpus"][name] = {k: getattr(p, k) for k in ("fits", "sample_micro_batch", "train_micro_batch",
                                                                   "peak_bytes", "epoch_s", "reward_offload")}

        def body():
            if args.gpus:
                return plans_for_gpus()
            t = time.perf_counter()
            plan = trainer.ensure_plan()
            result["plan_s"] = round(time.perf_counter() - t, 1)
            result["plan"] = {k: getattr(plan, k) for k in ("sample_micro_batch", "train_micro_batch",
                                                            "decode_micro_batch", "peak_bytes", "peaks", "seconds",
                                                            "epoch_s", "fits", "problems")}
            if not args.plan_only:
                result.update(_measure(trainer, den, adapter, device))

        den.run(body, sigmas=den.sigmas(args.steps))
        trainer.close()
        adapter.remove()
    if "measured" in result:
        measured, planned = result["measured"], result["plan"]
        result["ratio"] = {"peak_bytes": planned["peak_bytes"] / measured["peak_bytes"],
                           "epoch_s": planned["epoch_s"] / measured["epoch_s"]}
    return result


def _measure(trainer, den, adapter, device, prompt: str = "a prompt") -> dict:
    """Two epochs with peak memory, seconds per phase, the first step's gradient reach and the
    LoRA's effect on the output (on ``prompt``)."""
    import torch

    from progrpo_core.memory import MemoryMeter

    grads: list = []
    step = trainer.optimizer.step

    def first_step(*a, **k):
        if not grads:
            grads.extend(p.grad.detach().clone() for p in adapter.parameters())
        return step(*a, **k)

    trainer.optimizer.step = first_step
    resident = sum(p.numel() * p.element_size() for p in den.net.parameters())
    resident += sum(p.numel() * p.element_size() for p in adapter.parameters())
    loop = trainer.epochs()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        records = list(loop)
        peak = torch.cuda.max_memory_allocated(device)
        timed = records[1:] or records  # the first epoch warms up kernels and the allocator
    else:  # metering costs CPU time: the first epoch is metered, the others are timed
        with MemoryMeter() as meter:
            records = [next(loop)]
        timed = list(loop) or records
        records += timed
        peak = resident + meter.peak
    ups = [g for (n, _), g in zip(adapter.named_parameters(), grads) if n.endswith(".up")]
    reached = sum(int((g != 0).sum()) for g in ups) / max(1, sum(g.numel() for g in ups))
    finite = all(bool(torch.isfinite(g).all()) for g in grads)
    x = torch.randn((1, *den.latent_shape), generator=torch.Generator().manual_seed(5)).to(device)
    sigma = den.sigmas(4)[1:2].to(device)
    cond = den.encode_prompts([prompt])
    with torch.no_grad():
        out = den.denoise(x, sigma, cond, 1.0)
        with adapter.disabled():
            base = den.denoise(x, sigma, cond, 1.0)
    epochs = [r.epoch_wall_s for r in timed]
    phases = {k: round(sum(r.batch.rollout.compute.wall.get(k, 0.0) for r in timed) / len(timed), 2)
              for k in ("sampling", "proxy", "final_scoring")}
    phases["training"] = round(sum(epochs) / len(epochs) - sum(phases.values()), 2)  # the rest of the epoch
    return {"measured": {"peak_bytes": int(peak), "epoch_s": sum(epochs) / len(epochs),
                         "epochs_s": [r.epoch_wall_s for r in records], "seconds": phases,
                         "gflops": epoch_gflops(trainer, den, adapter, records, timed, prompt),
                         "grad_reached_fraction": reached, "grad_finite": finite,
                         "lora_changed_output": float((out - base).abs().max()),
                         "optimizer_steps": trainer.optimizer_steps}}


def epoch_gflops(trainer, den, adapter, records, timed, prompt: str = "a prompt") -> dict:
    """GFLOPs of one timed epoch by phase, from the run's exact row counts and FLOPs counted on one
    row (``torch.utils.flop_counter``): sampling, training (one row's forward and backward as the
    trainer runs them, counted: the base weights are frozen, so the backward computes activation
    gradients and the LoRA's, not weight gradients, and gradient checkpointing recomputes the
    blocks), decodes (the previews' at the proxy decoder's price); the reward (stroke) costs nothing."""
    import torch

    from progrpo_core.compute import count_flops
    from progrpo_core.denoiser import proxy_decoder

    device = next(den.net.parameters()).device
    x = torch.randn((1, *den.latent_shape)).to(device)
    sigma = den.sigmas(4)[1:2].to(device)
    cond = den.encode_prompts([prompt])
    fwd = count_flops(lambda: den.denoise(x, sigma, cond, 1.0))
    train_row = _train_row_flops(den, adapter, x, sigma, cond)
    dec = count_flops(lambda: den.decode(x))
    dec_proxy = count_flops(lambda: proxy_decoder(den)(x))  # the VAE where no proxy decoder is given (built-in models)
    previews = sum(r.batch.rollout.compute.proxy_decodes for r in timed) / len(timed)
    first = records[-len(timed) - 1].compute if len(records) > len(timed) else {k: 0 for k in records[0].compute}
    d = {k: (records[-1].compute[k] - first[k]) / len(timed) for k in first}
    out = {"sampling": d["nfe"] * fwd, "training": (d["nfe_train_fwd"] - d["nfe_train_bwd"]) * fwd
           + d["nfe_train_bwd"] * train_row,  # reference forwards (KL) have no backward
           "decodes": (d["decodes"] - previews) * dec + previews * dec_proxy}
    out = {k: round(v / 1e9, 1) for k, v in out.items()}
    out["total"] = round(sum(out.values()), 1)
    out["rows"] = d
    out["train_row_in_forwards"] = round(train_row / fwd, 3)
    return out


def _train_row_flops(den, adapter, x, sigma, cond) -> float:
    """FLOPs of one trained row: the forward through the LoRA with gradients, the blocks'
    recomputation and the backward, counted while the trainer's gradient checkpointing is on."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        den.denoise(x, sigma, cond, 1.0).float().sum().backward()
    for p in adapter.parameters():
        p.grad = None
    return float(counter.get_total_flops())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--model", choices=MODELS, required=True)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--method", default="pro-grpo", help="a --method preset (progrpo_core.methods.METHODS)")
    ap.add_argument("--group", type=int, help="group size (default: the method's)")
    ap.add_argument("--checkpoints", help="checkpoints, e.g. 5,7 (default: the method's)")
    ap.add_argument("--keep", help="survivors per checkpoint, e.g. 24,12 (default: the method's)")
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--proxy-vae", choices=("none", "taesd"), default="none",
                    help="decode the pruning previews with a full-size TAESD (random weights) instead of the VAE")
    ap.add_argument("--proxy-scale", type=float,
                    help="decode the previews from the x0 latent pooled to this fraction (schedule.proxy_scale)")
    ap.add_argument("--memory-gib", type=float)
    ap.add_argument("--gpus", help="only plan, for these GPUs (comma-separated names of progrpo_core.planner.GPUS), "
                                   "from memory measured here and FLOPs")
    ap.add_argument("--plan-only", action="store_true", help="plan for this device, train nothing")
    args = ap.parse_args(argv)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
