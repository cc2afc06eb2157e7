"""Write tiny random-weight checkpoints of real architectures for ComfyUI host tests.

Run with the *ComfyUI* venv's python (this script imports ComfyUI in-process, so it needs
ComfyUI's dependencies; the test runner's own python may not have them)::

    $PROGRPO_COMFYUI_PYTHON tests/host/tiny_models.py --comfyui $PROGRPO_COMFYUI --out DIR

It builds the networks with ComfyUI's own classes (so ComfyUI's model detection recognises
the files exactly as it would real checkpoints), fills every tensor with seeded random values
and writes a ComfyUI ``models/`` tree under ``DIR``:

=====================================  ========================================  ==========
file (relative to DIR)                 architecture                              size
=====================================  ========================================  ==========
diffusion_models/tiny_sd3.safetensors  SD3 MMDiT, depth 2 (hidden 128), 16 ch    ~8 MB
diffusion_models/tiny_flux.safetensors Flux, hidden 128, 1 double + 1 single     ~5 MB
                                       block, 768-d text and vector inputs
vae/tiny_taesd16.safetensors           TAESD-format VAE, 16 latent channels      ~10 MB
vae/tiny_taesd4.safetensors            TAESD-format VAE, 4 latent channels       ~10 MB
text_encoders/clip_l.safetensors       CLIP-L text encoder (fixed size), fp16    ~247 MB
checkpoints/tiny_sd15.safetensors      single-file SD1.5: one-level UNet (320    ~300 MB
                                       ch, fp16) + the same CLIP-L + TAESD-4
=====================================  ========================================  ==========

Initialisation (per tensor, seeded from ``--seed`` and the tensor's name, so a tensor's
values do not depend on which other tensors exist): weights with >= 2 dims ~ N(0, 1/fan_in)
with fan_in = prod(shape[1:]); biases 0; other 1-D tensors (norm scales) 1; MMDiT's
``pos_embed`` the 2-D sin-cos table the real model uses; TAESD's ``vae_scale`` 1 and
``vae_shift`` 0. (0.02-std weights made TAESD decode to an all-black image.)

``DIR/manifest.json`` records the recipe (a hash of this file), the seed and the ComfyUI
version; when they match and every file is present the script does nothing, so ``DIR`` can
be a persistent cache. Files are written atomically and the run holds ``DIR/.lock``.

Only the standard library is imported at module level; ComfyUI and torch are imported in
:func:`build`, after ``sys.path`` points at the checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import zlib
from pathlib import Path

#: Every file this script writes, by ComfyUI model folder. Tests refer to these names.
FILES = {
    "sd3": "diffusion_models/tiny_sd3.safetensors",
    "flux": "diffusion_models/tiny_flux.safetensors",
    "vae16": "vae/tiny_taesd16.safetensors",
    "vae4": "vae/tiny_taesd4.safetensors",
    "clip_l": "text_encoders/clip_l.safetensors",
    "sd15": "checkpoints/tiny_sd15.safetensors",
    # VAELoader's "taesd3" (a TAESD in models/vae_approx) whose decoder draws one flat image whatever
    # the latent: as a proxy_vae, every preview scores the same, so the tests can see what it decoded
    "taesd3_encoder": "vae_approx/taesd3_encoder.safetensors",
    "taesd3_decoder": "vae_approx/taesd3_decoder.safetensors",
}

MANIFEST = "manifest.json"


def recipe_hash() -> str:
    """Hash of this file: a changed recipe invalidates a cached model directory."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def comfyui_version(comfyui: Path) -> str:
    """The ``__version__`` string of a ComfyUI checkout, read without importing it."""
    text = (comfyui / "comfyui_version.py").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def expected_manifest(comfyui: Path, seed: int) -> dict:
    return {
        "recipe": recipe_hash(),
        "seed": seed,
        "comfyui_version": comfyui_version(comfyui),
        "files": FILES,
    }


def is_up_to_date(out: Path, comfyui: Path, seed: int) -> bool:
    """True when ``out`` already holds every file made by this recipe for this ComfyUI."""
    try:
        found = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return found == expected_manifest(comfyui, seed) and all((out / f).is_file() for f in FILES.values())


# --------------------------------------------------------------------------------------------
# Everything below runs inside the ComfyUI python.


def _import_comfy(comfyui: Path):
    """Import ComfyUI in-process on the CPU and return the modules this script uses."""
    sys.path.insert(0, str(comfyui))
    # ComfyUI parses sys.argv when comfy.cli_args is imported; hide ours from it.
    saved_argv, sys.argv = sys.argv, [sys.argv[0]]
    try:
        from comfy.cli_args import args

        args.cpu = True  # before comfy.model_management is imported, or it probes CUDA
        import comfy.model_management  # imported for its side effect: device setup on the CPU
        import comfy.ops
        import comfy.sd1_clip
        import comfy.taesd.taesd
        from comfy.ldm.flux.model import Flux
        from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT, get_2d_sincos_pos_embed
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    finally:
        sys.argv = saved_argv
    return {
        "ops": comfy.ops.disable_weight_init,
        "MMDiT": MMDiT,
        "sincos": get_2d_sincos_pos_embed,
        "Flux": Flux,
        "UNetModel": UNetModel,
        "SDClipModel": comfy.sd1_clip.SDClipModel,
        "TAESD": comfy.taesd.taesd.TAESD,
    }


def randomize(state_dict: dict, seed: int, special: dict | None = None) -> dict:
    """Seeded random values for every tensor of ``state_dict`` (see the module docstring).

    ``special`` maps a key to a ready tensor (e.g. a positional table) used as is.
    Returns a new dict of contiguous float32 tensors.
    """
    import torch

    special = special or {}
    out = {}
    for key, ref in state_dict.items():
        if key in special:
            out[key] = special[key].to(torch.float32).reshape(ref.shape).contiguous()
            continue
        shape = tuple(ref.shape)
        if key.endswith("vae_scale"):
            value = torch.ones(shape)
        elif key.endswith(("vae_shift", "bias")):
            value = torch.zeros(shape)
        elif len(shape) >= 2:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)
            value = torch.randn(shape, generator=gen) / fan_in**0.5
        else:  # 1-D / 0-D non-bias tensors are norm scales (LayerNorm, GroupNorm, RMSNorm)
            value = torch.ones(shape)
        out[key] = value.contiguous()
    return out


def _save(tensors: dict, path: Path, dtype, metadata: dict) -> None:
    """Write a safetensors file atomically (``path`` never holds a partial file)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)  # safetensors creates 0600 files; a shared cache should be readable
    os.replace(tmp, path)


def make_sd3(m, seed: int) -> dict:
    """Tiny SD3 MMDiT: depth 2 → hidden 128, 2 heads; 16 latent channels; 32×32 patch grid."""
    import torch

    net = m["MMDiT"](
        depth=2, in_channels=16, patch_size=2, adm_in_channels=2048,
        context_embedder_config={"target": "torch.nn.Linear",
                                 "params": {"in_features": 4096, "out_features": 128}},
        pos_embed_max_size=32, num_patches=1024, pos_embed_scaling_factor=None,
        device="cpu", operations=m["ops"],
    )
    sd = net.state_dict()
    pos = torch.as_tensor(m["sincos"](128, 32)).reshape(1, 1024, 128)  # (1, patches, hidden)
    return randomize(sd, seed, special={"pos_embed": pos})


def make_flux(m, seed: int) -> dict:
    """Tiny Flux: hidden 128 (1 head of 128 = 16+56+56 rope axes), 1 double + 1 single block."""
    net = m["Flux"](
        in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=768, hidden_size=128,
        mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56],
        theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[],
        device="cpu", operations=m["ops"],
    )
    return randomize(net.state_dict(), seed)


def make_sd15_unet(m, seed: int) -> dict:
    """Smallest UNet ComfyUI still detects as SD1.5 (320 ch, 768-d context, one level)."""
    net = m["UNetModel"](
        image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1],
        channel_mult=[1], transformer_depth=[1], transformer_depth_output=[1, 1],
        transformer_depth_middle=1, context_dim=768, num_heads=8, use_spatial_transformer=True,
        use_linear_in_transformer=False, device="cpu", operations=m["ops"],
    )
    return randomize(net.state_dict(), seed)


def make_clip_l(m, seed: int) -> dict:
    """CLIP-L text model with ComfyUI/HF key names (``text_model.…``, ``text_projection``)."""
    net = m["SDClipModel"](device="cpu", model_options={"custom_operations": m["ops"]})
    sd = {k[len("transformer."):]: v for k, v in net.state_dict().items() if k.startswith("transformer.")}
    return randomize(sd, seed)


def make_taesd(m, seed: int, channels: int) -> dict:
    return randomize(m["TAESD"](latent_channels=channels).state_dict(), seed)


def build(comfyui: Path, out: Path, seed: int, log=print) -> None:
    """Write every file of :data:`FILES` under ``out`` (skipping nothing; see :func:`main`)."""
    import torch

    m = _import_comfy(comfyui)
    meta = {"producer": "progrpo tests/host/tiny_models.py", "recipe": recipe_hash(), "seed": str(seed)}
    with torch.no_grad():
        t = time.perf_counter()
        _save(make_sd3(m, seed), out / FILES["sd3"], torch.float32, meta)
        _save(make_flux(m, seed), out / FILES["flux"], torch.float32, meta)
        taesd4 = make_taesd(m, seed, 4)
        _save(make_taesd(m, seed, 16), out / FILES["vae16"], torch.float32, meta)
        _save(taesd4, out / FILES["vae4"], torch.float32, meta)
        flat = make_taesd(m, seed + 1, 16)
        for part in ("encoder", "decoder"):
            prefix = f"taesd_{part}."
            _save({k[len(prefix):]: (torch.zeros_like(v) if part == "decoder" else v)
                   for k, v in flat.items() if k.startswith(prefix)}, out / FILES[f"taesd3_{part}"], torch.float32, meta)
        log(f"tiny_models: diffusion models and VAEs in {time.perf_counter() - t:.1f} s")

        t = time.perf_counter()
        clip = make_clip_l(m, seed)
        _save(clip, out / FILES["clip_l"], torch.float16, meta)
        log(f"tiny_models: clip_l in {time.perf_counter() - t:.1f} s")

        t = time.perf_counter()
        ckpt = {"model.diffusion_model." + k: v.half() for k, v in make_sd15_unet(m, seed).items()}
        ckpt.update({"cond_stage_model.transformer." + k: v.half() for k, v in clip.items()})
        ckpt.update({"first_stage_model." + k: v for k, v in taesd4.items()})
        _save(ckpt, out / FILES["sd15"], torch.float16, meta)
        log(f"tiny_models: sd15 checkpoint in {time.perf_counter() - t:.1f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", required=True, type=Path, help="ComfyUI checkout (has main.py)")
    parser.add_argument("--out", required=True, type=Path, help="models dir to fill (a cache is fine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random tensor")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    a = parser.parse_args(argv)

    comfyui = a.comfyui.resolve()
    if not (comfyui / "main.py").is_file():
        parser.error(f"--comfyui {a.comfyui}: no main.py there; give the root of a ComfyUI checkout")
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    import fcntl

    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run waits, then finds the cache ready
        if not a.force and is_up_to_date(out, comfyui, a.seed):
            print(f"tiny_models: {out} is up to date")
            return 0
        (out / MANIFEST).unlink(missing_ok=True)
        build(comfyui, out, a.seed)
        (out / MANIFEST).write_text(json.dumps(expected_manifest(comfyui, a.seed), indent=1), encoding="utf-8")
    print(f"tiny_models: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
