"""Checks of what a GPU run depends on, on real ComfyUI architectures, runnable on a CPU.

Run with the *ComfyUI* venv's python from the repository root (it imports ComfyUI in-process)::

    $PROGRPO_COMFYUI_PYTHON tests/host/gpu_readiness.py --comfyui $PROGRPO_COMFYUI --models DIR CHECK...

``DIR`` is the tiny-model tree of ``tiny_models.py``. Each check prints one JSON line; the host
tests (``test_gpu_readiness.py``) run them and assert on the numbers. Checks:

``precision KIND DTYPES [EPOCHS]``  KIND sd15, sdxl_v (a 64-channel v-prediction UNet) or sd3 loaded
                          with weights in each of DTYPES (comma-separated: fp16, bf16, fp32) and trained
                          in that precision (fp16 with loss scaling): after one optimizer step, the
                          fraction of the LoRA's ``up`` entries that moved (Adam moves every entry with
                          a non-zero gradient; compare with fp32, where a few are structurally zero,
                          e.g. SD3's unused last context queries) and whether all are finite; then the
                          run's rewards, and (EPOCHS > 1) the evaluation before and after.
``branch``                a ComfyUI Linear with bf16 weights and a LoRA delta of std 1e-5: the change
                          of the layer output against the float32 reference, computed in fp32 and in
                          bf16, for the branch and for the old weight merge.
``checkpointing KIND``    KIND unet, mmdit or flux (tiny, a few blocks deep): bytes autograd saves for
                          backward in one forward, without and with checkpointing at depth 1.
``sliced_attention``      ComfyUI's memory-sliced attention (the CPU default) with less memory free
                          in backward than in forward, as on a busy GPU: an epoch of the tiny SD3
                          with checkpointing trains (the recomputed blocks slice alike).
``rehome``                an epoch, ComfyUI unloading every model, another epoch: the devices of the
                          LoRA, its optimizer state and its EMA.
``dynamic``               a MODEL under dynamic VRAM (a real ``ModelPatcherDynamic`` on a non-CPU load
                          device; comfy-aimdo's host buffers, which need a GPU, stubbed): the class of
                          the training copy the node makes, and whether its weights are inference tensors.
``judge``                 an epoch of the tiny SD3 trained on the cut's previews made by the frozen model
                          (``schedule.preview_model reference``, a LoRA with non-zero weights): how far
                          the previews at the cut are from the model's prediction with the LoRA off
                          (the host adapter's ``disabled``) and with it on.
``kept_loaded``           a training session in which ComfyUI frees memory for another model (as a VAE
                          or reward load does when memory is tight): whether the trained model stays
                          loaded during the session, and is unloadable again after it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _comfy(comfyui: str):
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    from progrpo_headless import pack_nodes

    import_comfyui = pack_nodes("host.headless").import_comfyui
    import_comfyui(comfyui, "cpu")


def _tiny_trainer(kind: str, models: Path, dtype, precision: str, epochs: int = 1, lr: float = 0.05,
                  schedule: dict | None = None):
    """A Trainer on the tiny model ``kind`` with weights stored in ``dtype``."""
    import comfy.sd
    import comfy.utils
    import tiny_models as T

    from progrpo_core.config import build_config
    from progrpo_headless import pack_nodes
    from progrpo_core.training import Trainer

    host = pack_nodes("host").ComfyDenoiser  # the pack's adapter, as the CLI loads it
    opts = {"dtype": dtype}
    cond = None
    if kind == "sd15":
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(models / T.FILES["sd15"]), output_vae=True,
                                                                    output_clip=True, model_options=opts)
        shape = (4, 8, 8)
    elif kind == "sdxl_v":  # a UNet of 64 channels (v-prediction): SD1.5's tiny one has ComfyUI's 320
        import torch
        from host_test_nodes import load_tiny

        model = load_tiny(str(models / T.FILES["sdxl_v"]), opts)
        clip, vae, shape = None, comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(models / T.FILES["vae4"]))), (4, 8, 8)
        g = torch.Generator().manual_seed(0)  # CLIP-L + CLIP-G's shapes: (1, 77, 2048) and pooled (1, 1280)
        cond = [[torch.randn(1, 8, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
    else:
        model = comfy.sd.load_diffusion_model(str(models / T.FILES["sd3"]), model_options=opts)
        clip = comfy.sd.load_clip([str(models / T.FILES["clip_l"])], clip_type=comfy.sd.CLIPType.SD3)
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(models / T.FILES["vae16"])))
        shape = (16, 8, 8)
    model.model.requires_grad_(False)
    den = host(model, shape, vae=vae, clip=clip, full_load=True)
    if cond is not None:
        den.add_prompt("a red apple", cond)
    cfg = build_config({
        "model": {"comfyui": "(test)", "checkpoint": kind},
        "sampler": {"steps": 4, "cfg": 1.0, "eval_steps": 2},
        "schedule": {"group_size": 4, "checkpoints": [2], "keep": [3], **(schedule or {})},
        "grpo": {"method": "pro-grpo", "prompts_per_epoch": 1, "lr": lr, "ema": True},
        "lora": {"rank": 4, "alpha": 4.0}, "reward": {"name": "stroke"},
        "run": {"epochs": epochs, "eval_every": 0, "eval_seeds": 4, "precision": precision, "device": "cpu",
                "gradient_checkpointing": 1}})
    return Trainer.build(cfg, model=den, prompts=["a red apple"], log=lambda s: None)


def check_precision(kind: str, dtype_names: str, models: Path, epochs: int | None = None) -> dict:
    """Each of ``dtype_names`` (comma-separated) in turn, in one process: see the module docstring.
    With ``epochs`` 1 there is no evaluation (the gradient's reach is known after the first update)."""
    import torch

    lr, default_epochs = (0.01, 10) if kind == "sd15" else (0.05, 8)  # a rate each tiny random model learns at
    epochs = epochs or default_epochs
    runs = {}
    for dtype_name in dtype_names.split(","):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
        tr = _tiny_trainer(kind, models, dtype, dtype_name, epochs=epochs, lr=lr)
        ups = [p for n, p in tr.adapter.named_parameters() if n.endswith("lora_B.default.weight")]
        before = tr.evaluate()["reward"] if epochs > 1 else None
        loop = tr.epochs()
        first = next(loop)
        moved = sum(int((p != 0).sum()) for p in ups) / sum(p.numel() for p in ups)
        finite = all(bool(torch.isfinite(p).all()) for p in tr.adapter.parameters())
        rewards = [first.reward_mean] + [r.reward_mean for r in loop]
        after = tr.evaluate()["reward"] if epochs > 1 else None
        runs[dtype_name] = {"weights": str(tr.model.patcher.model_dtype()), "compute": str(tr.model.compute_dtype),
                            "moved_fraction": moved, "finite": finite, "scaler": tr.scaler is not None,
                            "rewards": rewards, "steps": tr.optimizer_steps, "eval_before": before,
                            "eval_after": after}
        tr.close()
    return {"check": "precision", "kind": kind, "epochs": epochs, "runs": runs}


def check_branch() -> dict:
    import comfy.ops
    import torch

    from progrpo_headless import pack_nodes

    LoraBranch = pack_nodes("host.lora").LoraBranch
    n, r = 1280, 8
    g = torch.Generator().manual_seed(0)
    layer = comfy.ops.manual_cast.Linear(n, n, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n, n, generator=g) / n**0.5)
    x = torch.randn(256, n, generator=g)
    branch = LoraBranch(n, n, r, r, g, torch.device("cpu"))  # alpha = rank: scale 1
    with torch.no_grad():
        branch.up.copy_(torch.randn(n, r, generator=g))
        branch.up.mul_(1e-5 / float((branch.up @ branch.down).std()))  # delta std 1e-5
    delta = (branch.up @ branch.down).detach()
    w32 = layer.weight.float()
    ref = x @ (w32 + delta).t() - x @ w32.t()  # the float32 reference change

    def rel(change):
        return float((change.detach().float() - ref).norm() / ref.norm())

    out = {"check": "branch", "delta_std": float(delta.std())}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        xc = x.to(dt)
        base = layer(xc)
        branch.attach(layer)
        with_lora = layer(xc)
        LoraBranch.detach(layer)
        merged = xc @ (layer.weight.to(dt) + delta.to(dt)).t()  # the old weight merge, in the compute dtype
        out[f"branch_{name}"] = rel(with_lora.float() - base.float())
        out[f"merge_{name}"] = rel(merged.float() - base.float())
    return out


def _nets():
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    return {
        "unet": lambda: UNetModel(image_size=32, in_channels=4, model_channels=64, out_channels=4, num_res_blocks=[2, 2],
                                  channel_mult=[1, 2], transformer_depth=[1, 1, 1, 1], transformer_depth_output=[1, 1, 1, 1, 1, 1],
                                  transformer_depth_middle=1, context_dim=64, num_heads=4, use_spatial_transformer=True,
                                  use_linear_in_transformer=True, device="cpu", operations=ops),
        "mmdit": lambda: MMDiT(depth=4, in_channels=16, patch_size=2, adm_in_channels=64,
                               context_embedder_config={"target": "torch.nn.Linear",
                                                        "params": {"in_features": 64, "out_features": 256}},
                               pos_embed_max_size=32, num_patches=1024, pos_embed_scaling_factor=None, device="cpu",
                               operations=ops),
        "flux": lambda: Flux(in_channels=16, out_channels=16, vec_in_dim=64, context_in_dim=64, hidden_size=128,
                             mlp_ratio=4.0, num_heads=1, depth=2, depth_single_blocks=2, axes_dim=[16, 56, 56],
                             theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[],
                             device="cpu", operations=ops),
    }


def _forward(kind: str, net):
    import torch

    g = torch.Generator().manual_seed(0)
    if kind == "unet":
        x = torch.randn(2, 4, 32, 32, generator=g)
        return lambda: net(x, torch.tensor([500.0, 500.0]), context=torch.randn(2, 8, 64, generator=g))
    if kind == "mmdit":
        x = torch.randn(2, 16, 32, 32, generator=g)
        return lambda: net(x, torch.tensor([500.0, 500.0]), y=torch.randn(2, 64, generator=g),
                           context=torch.randn(2, 8, 64, generator=g))
    x = torch.randn(2, 16, 32, 32, generator=g)
    return lambda: net(x, torch.tensor([0.5, 0.5]), context=torch.randn(2, 8, 64, generator=g),
                       y=torch.randn(2, 64, generator=g), guidance=torch.tensor([3.5, 3.5]))


def check_checkpointing(kind: str) -> dict:
    import comfy.model_management as mm
    import torch

    from progrpo_core import grad_checkpoint
    from progrpo_headless import pack_nodes

    LoraBranch = pack_nodes("host.lora").LoraBranch
    target_modules = pack_nodes("host.model").target_modules
    mm.in_training = True
    net = _nets()[kind]()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
    net.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    modules = dict(net.named_modules())
    for path in target_modules(net, "attention"):  # something to train, as the trainer has
        w = modules[path].weight
        LoraBranch(w.shape[0], w.shape[1], 4, 4, g, torch.device("cpu")).attach(modules[path])
    run = _forward(kind, net)
    plain = grad_checkpoint.saved_bytes(run)
    patched = grad_checkpoint.enable(net, 1)
    checkpointed = grad_checkpoint.saved_bytes(run)
    out = run()
    out.float().pow(2).mean().backward()  # the recomputation in backward works
    return {"check": "checkpointing", "kind": kind, "modules": len(patched), "saved_bytes": plain,
            "saved_bytes_checkpointed": checkpointed, "ratio": checkpointed / plain}


def check_sliced_attention(models: Path) -> dict:
    import comfy.ldm.modules.attention as attn
    import comfy.model_management as mm
    import torch

    real = mm.get_free_memory

    def free_memory(dev=None, torch_free_too=False):  # plenty in forward, almost none in backward
        if torch._C._current_autograd_node() is None:
            return real(dev, torch_free_too)
        return (1024, 1024) if torch_free_too else 1024

    mm.get_free_memory = free_memory
    tr = _tiny_trainer("sd3", models, torch.float32, "fp32", epochs=1)
    record = next(tr.epochs())
    return {"check": "sliced_attention", "attention": attn.optimized_attention.__name__,
            "steps": tr.optimizer_steps, "loss": record.update.loss}


def check_rehome(models: Path) -> dict:
    import comfy.model_management as mm
    import torch

    tr = _tiny_trainer("sd3", models, torch.float32, "fp32", epochs=2)
    loop = tr.epochs()
    next(loop)
    mm.unload_all_models()
    next(loop)
    params = tr.adapter.parameters()
    devices = {"lora": sorted({str(p.device) for p in params}),
               "optimizer": sorted({str(v.device) for st in tr.optimizer.state.values() for v in st.values()
                                    if isinstance(v, torch.Tensor) and v.dim()}),
               "ema": sorted({str(s.device) for s in tr.ema.shadow})}
    return {"check": "rehome", "devices": devices, "steps": tr.optimizer_steps}


def check_dynamic(models: Path) -> dict:
    import comfy.memory_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.utils
    import comfy_aimdo.host_buffer
    import tiny_models as T
    import torch

    from progrpo_headless import pack_nodes

    training_model = pack_nodes("host.train_context").training_model

    class HostBuffer:  # comfy-aimdo's pinned host buffer: its library loads only where there is a GPU
        def __init__(self, *a, **k):
            pass

    def read_safetensors(path):  # comfy-aimdo's file mapping needs its GPU library: read as without it
        import safetensors

        with safetensors.safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}

    comfy_aimdo.host_buffer.HostBuffer = HostBuffer
    comfy.utils.load_safetensors = read_safetensors
    path, options = str(models / T.FILES["sd3"]), {"dtype": torch.float16}  # a float32 file, computed in fp16
    legacy = comfy.sd.load_diffusion_model(path, options)  # as ComfyUI loads without dynamic VRAM
    want = {n: str(p.dtype) for n, p in legacy.model.diffusion_model.named_parameters()}
    comfy.memory_management.aimdo_enabled = True  # what main.py sets on NVIDIA: layers load lazily
    try:
        loaded = comfy.sd.load_diffusion_model(path, options)  # a standard loader: it can reload
        with torch.inference_mode():  # as the executor runs every node
            given = comfy.model_patcher.ModelPatcherDynamic(loaded.model, load_device=torch.device("meta"),
                                                            offload_device=torch.device("cpu"))
            given.cached_patcher_init = loaded.cached_patcher_init
        with training_model(given) as (mp, shares):
            weight = next(mp.model.diffusion_model.parameters())
            have = {n: str(p.dtype) for n, p in mp.model.diffusion_model.named_parameters()}
            out = {"check": "dynamic", "given_class": type(given).__name__, "given_dynamic": given.is_dynamic(),
                   "class": type(mp).__name__, "dynamic": mp.is_dynamic(), "shares_weights": shares,
                   "inference_weights": weight.is_inference(), "same_model": mp.model is given.model,
                   "given_dtypes": sorted({str(p.dtype) for p in loaded.model.diffusion_model.parameters()}),
                   "dtypes_as_legacy": have == want, "dtypes": sorted(set(have.values())),
                   "legacy_dtypes": sorted(set(want.values())),
                   "dynamic_flag_during": comfy.memory_management.aimdo_enabled}
        out["dynamic_flag_after"] = comfy.memory_management.aimdo_enabled
    finally:
        comfy.memory_management.aimdo_enabled = False
    return out


def check_judge(models: Path) -> dict:
    import torch

    tr = _tiny_trainer("sd3", models, torch.float32, "fp32", schedule={"preview_reward": 0, "preview_model": "reference"})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained LoRA: the policy's prediction differs from the frozen model's
        for p in tr.adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    seen: dict = {}

    def record(ev):
        seen[ev["step"]] = (ev["x0"].detach().float().clone(), ev["row_id"].clone())

    ro = tr.sample_epoch(0, callback=record).rollout
    step = ro.preview["step"] - 1
    x0, ids = seen[step]
    got = torch.stack([x0[int((ids == r).nonzero()[0, 0])] for r in ro.row_id.tolist()])  # the survivors'
    den, out = tr.model, {"check": "judge", "step": step, "survivors": len(ro.row_id)}

    def body():
        cond = den.encode_prompts([ro.prompts[p] for p in ro.prompt_index.tolist()])
        sigma = ro.sigmas[step].expand(len(ro.row_id))
        with torch.no_grad():
            policy = den.denoise(ro.latents[:, step], sigma, cond, 1.0).float()
            with tr.adapter.disabled():
                reference = den.denoise(ro.latents[:, step], sigma, cond, 1.0).float()
        out.update(to_reference=float((got - reference).abs().max()), to_policy=float((got - policy).abs().max()),
                   scale=float(reference.abs().mean()))

    den.run(body)
    tr.close()
    return out


def check_kept_loaded(models: Path) -> dict:
    import comfy.model_management as mm
    import torch

    tr = _tiny_trainer("sd3", models, torch.float32, "fp32", epochs=1)
    den = tr.model
    cond = den.encode_prompts(["a red apple"])

    def loaded() -> bool:
        return any(m.model is den.patcher for m in mm.current_loaded_models)

    seen: dict = {}

    def body():
        seen["before"] = loaded()
        mm.free_memory(1e30, den.device)  # room for another model, as much as there is
        seen["during"] = loaded()
        x = torch.randn((1, *den.latent_shape), generator=torch.Generator().manual_seed(0))
        seen["finite"] = bool(torch.isfinite(den.denoise(x, den.sigmas(4)[1:2], cond)).all())

    den.run(body)
    mm.free_memory(1e30, den.device)
    return {"check": "kept_loaded", **seen, "after": loaded()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--models", type=Path)
    ap.add_argument("check", nargs="+")
    a = ap.parse_args(argv)
    _comfy(a.comfyui)
    import torch

    torch.manual_seed(0)
    name, args = a.check[0], a.check[1:]
    result = {"precision": lambda: check_precision(args[0], args[1], a.models, int(args[2]) if args[2:] else None),
              "branch": check_branch,
              "checkpointing": lambda: check_checkpointing(args[0]), "rehome": lambda: check_rehome(a.models),
              "sliced_attention": lambda: check_sliced_attention(a.models),
              "dynamic": lambda: check_dynamic(a.models), "kept_loaded": lambda: check_kept_loaded(a.models),
              "judge": lambda: check_judge(a.models)}[name]()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
