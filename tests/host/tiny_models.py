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

#: The model families beyond SD1.x/SD3/Flux.1: key -> (ComfyUI model config class in
#: ``comfy/supported_models.py``, its ``unet_config`` scaled down, how the tests load it). ``unet``:
#: the stock UNETLoader, whose detection finds the family from the tiny file as it does from a real
#: one (checked when the file is built). ``config``: ComfyUI's detection fixes the family's sizes
#: (Chroma's guidance approximator, Z-Image's 3840-wide stream, Qwen-Image's 24 heads, HiDream
#: altogether, SDXL's UNet, AuraFlow's width), so a scaled-down file is not recognised; the test pack's
#: ``ProGRPOTestTinyModel`` builds the same model config class from the config stored in the file's
#: header and loads it exactly as ``comfy.sd.load_diffusion_model_state_dict`` does after detection.
#: Text conditioning for these is made by the test pack's ``ProGRPOTestConditioning`` (shapes in
#: test_families_host.py): their real text encoders are multi-billion-parameter LLMs or T5.
FAMILY_MODELS = {
    "flux2": ("Flux2", dict(  # Flux.2 klein-like: no guidance embedding; detection fixes all but the sizes
        image_model="flux2", axes_dim=[32, 32, 32, 32], num_heads=1, mlp_ratio=3.0, theta=2000, out_channels=128,
        in_channels=128, global_modulation=True, mlp_silu_act=True, qkv_bias=False, ops_bias=False,
        default_ref_method="index", ref_index_scale=10.0, txt_ids_dims=[3], patch_size=1, hidden_size=128,
        context_in_dim=256, vec_in_dim=None, depth=1, depth_single_blocks=1, guidance_embed=False), "unet"),
    "wan21": ("WAN21_T2V", dict(
        image_model="wan2.1", model_type="t2v", dim=128, out_dim=16, num_heads=1, ffn_dim=256, num_layers=1,
        patch_size=(1, 2, 2), freq_dim=256, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
        in_dim=16, text_dim=4096), "unet"),  # text_dim: detection assumes umt5's 4096
    "chroma": ("Chroma", dict(
        image_model="chroma", in_channels=64, out_channels=64, in_dim=64, out_dim=128, hidden_dim=128, n_layers=1,
        axes_dim=[16, 56, 56], num_heads=1, mlp_ratio=4.0, theta=10000, qkv_bias=True, txt_ids_dims=[],
        patch_size=2, hidden_size=128, context_in_dim=256, vec_in_dim=None, depth=1, depth_single_blocks=1),
        "config"),
    "zimage": ("ZImage", dict(  # dim >= 256: its modulation takes min(dim, 256) time features
        image_model="lumina2", patch_size=2, in_channels=16, dim=256, cap_feat_dim=256, n_layers=1, qk_norm=True,
        n_heads=2, n_kv_heads=2, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
        ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32),
        "config"),
    "lumina2": ("Lumina2", dict(
        image_model="lumina2", patch_size=2, in_channels=16, dim=96, cap_feat_dim=256, n_layers=1, qk_norm=True,
        n_heads=1, n_kv_heads=1, axes_dims=[32, 32, 32], axes_lens=[300, 512, 512], rope_theta=10000.0,
        ffn_dim_multiplier=4.0), "config"),
    "qwen_image": ("QwenImage", dict(
        image_model="qwen_image", in_channels=64, out_channels=16, num_layers=1, num_attention_heads=1,
        attention_head_dim=128, joint_attention_dim=256), "config"),
    "hidream": ("HiDream", dict(
        image_model="hidream", attention_head_dim=128, axes_dims_rope=[64, 32, 32], caption_channels=[256, 256],
        max_resolution=[128, 128], in_channels=16, llama_layers=[0, 1], num_attention_heads=1, num_routed_experts=2,
        num_activated_experts=1, num_layers=1, num_single_layers=1, out_channels=16, patch_size=2,
        text_emb_dim=256), "config"),
    "sdxl_v": ("SDXL", dict(  # a v-prediction SDXL UNet (the checkpoint's "v_pred" key), one level of 64 channels
        use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
        num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=64, num_res_blocks=[1],
        transformer_depth=[1], transformer_depth_output=[1, 1], channel_mult=[1], transformer_depth_middle=1,
        use_linear_in_transformer=True, context_dim=2048, num_head_channels=64, use_temporal_resblock=False,
        use_temporal_attention=False), "config"),
    "auraflow": ("AuraFlow", dict(  # not in ProGRPO's family table: trained by structure
        in_channels=4, out_channels=4, patch_size=2, dim=128, n_layers=2, n_double_layers=1, n_heads=2,
        global_conddim=128, cond_seq_dim=256, max_seq=256), "config"),
}
TEST_CONFIG_KEY = "progrpo_test.config"  # the header entry ProGRPOTestTinyModel reads

#: Every file this script writes, by ComfyUI model folder. Tests refer to these names.
FILES = {
    "sd3": "diffusion_models/tiny_sd3.safetensors",
    "flux": "diffusion_models/tiny_flux.safetensors",
    "vae16": "vae/tiny_taesd16.safetensors",
    "vae4": "vae/tiny_taesd4.safetensors",
    "taef2_encoder": "vae_approx/taef2_encoder.safetensors",  # VAELoader's "taef2": Flux.2's tiny autoencoder
    "taef2_decoder": "vae_approx/taef2_decoder.safetensors",
    "wan_vae": "vae/tiny_wan21_vae.safetensors",
    "clip_l": "text_encoders/clip_l.safetensors",
    "sd15": "checkpoints/tiny_sd15.safetensors",
    # VAELoader's "taesd3" (a TAESD in models/vae_approx) whose decoder draws one flat image whatever
    # the latent: as a proxy_vae, every preview scores the same, so the tests can see what it decoded
    "taesd3_encoder": "vae_approx/taesd3_encoder.safetensors",
    "taesd3_decoder": "vae_approx/taesd3_decoder.safetensors",
    "flux_q8_0": "diffusion_models/tiny_flux256-Q8_0.gguf",
    "flux_q4_k": "diffusion_models/tiny_flux256-Q4_K.gguf",
    **{k: f"diffusion_models/tiny_{k}.safetensors" for k in FAMILY_MODELS},
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
        import comfy.model_detection
        import comfy.model_management  # imported for its side effect: device setup on the CPU
        import comfy.ops
        import comfy.sd1_clip
        import comfy.supported_models
        import comfy.taesd.taesd
        from comfy.ldm.flux.model import Flux
        from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT, get_2d_sincos_pos_embed
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
        from comfy.ldm.wan.vae import WanVAE
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
        "WanVAE": WanVAE,
        "supported_models": comfy.supported_models,
        "detect": comfy.model_detection.model_config_from_unet,
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
        elif key.endswith("gamma"):  # RMS-norm scales of any shape (Wan's VAE: (C, 1, 1, 1))
            value = torch.ones(shape)
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


def make_flux(m, seed: int, hidden: int = 128) -> dict:
    """Tiny Flux: ``hidden`` 128 (heads of 128 = 16+56+56 rope axes), 1 double + 1 single block."""
    net = m["Flux"](
        in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=768, hidden_size=hidden,
        mlp_ratio=4.0, num_heads=hidden // 128, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56],
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


def make_family(m, key: str, seed: int) -> tuple[dict, dict]:
    """``FAMILY_MODELS[key]`` built with ComfyUI's own model config class: ``(tensors, header)``.
    A ``unet`` entry must be detected by ComfyUI as that class (else this raises); a ``config``
    entry carries its config in the header for the test pack's loader."""
    import torch

    cls_name, config, loader = FAMILY_MODELS[key]
    model_config = getattr(m["supported_models"], cls_name)(dict(config))
    model_config.set_inference_dtype(torch.float32, None)
    sd = randomize(model_config.get_model({}, "").diffusion_model.state_dict(), seed)
    if key == "sdxl_v":
        sd["v_pred"] = torch.zeros(0)  # how v-prediction SDXL checkpoints announce themselves
    if loader == "unet":
        found = m["detect"](sd, "")
        if type(found).__name__ != cls_name:
            raise RuntimeError(f"ComfyUI detects tiny {key} as {type(found).__name__}, not {cls_name}")
        return sd, {}
    return sd, {TEST_CONFIG_KEY: json.dumps({"model": cls_name, "unet_config": config})}


def make_wan_vae(m, seed: int) -> dict:
    """Wan 2.1's causal video VAE (16 latent channels, 4x time and 8x space), 16 base channels."""
    net = m["WanVAE"](dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                      temperal_downsample=[False, True, True], image_channels=3, conv_out_channels=3)
    return randomize(net.state_dict(), seed)


def make_flux256(m, seed: int) -> dict:
    """Tiny Flux with hidden 256 (2 heads): its matrices' rows are multiples of 256, as Q4_K needs."""
    return make_flux(m, seed, hidden=256)


def quantize_q4_k(data):
    """GGML's Q4_K blocks of a float32 array whose last dimension is a multiple of 256 (the gguf
    package dequantizes Q4_K but does not quantize it). A super-block of 256 values holds fp16 ``d``
    and ``dmin``, twelve bytes of 6-bit sub-block scales and mins (8 sub-blocks of 32) and 128 bytes
    of 4-bit values: ``x ≈ d·sc_j·q − dmin·m_j``. Returns uint8 of shape (..., last / 256 · 144)."""
    import numpy as np

    x = np.asarray(data, dtype=np.float32)
    blocks = x.reshape(-1, 8, 32)  # (B, 8 sub-blocks, 32)
    lo = np.minimum(blocks.min(-1), 0.0)  # (B, 8), <= 0
    hi = blocks.max(-1)
    scale = (hi - lo) / 15.0
    d = scale.max(-1) / 63.0  # (B,)
    dmin = (-lo).max(-1) / 63.0
    d16, dmin16 = d.astype(np.float16), dmin.astype(np.float16)
    dd, dm = d16.astype(np.float32)[:, None], dmin16.astype(np.float32)[:, None]
    sc = np.clip(np.round(np.divide(scale, dd, out=np.zeros_like(scale), where=dd > 0)), 0, 63).astype(np.uint8)
    mn = np.clip(np.round(np.divide(-lo, dm, out=np.zeros_like(lo), where=dm > 0)), 0, 63).astype(np.uint8)
    step = (dd * sc)[..., None]  # (B, 8, 1)
    q = np.divide(blocks + (dm * mn)[..., None], step, out=np.zeros_like(blocks), where=step > 0)
    q = np.clip(np.round(q), 0, 15).astype(np.uint8).reshape(-1, 256)
    scales = np.zeros((len(sc), 12), np.uint8)
    scales[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    scales[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:8] & 0xF) | ((mn[:, 4:8] & 0xF) << 4)
    qs = q.reshape(-1, 4, 2, 32)
    qs = (qs[:, :, 0] | (qs[:, :, 1] << 4)).reshape(-1, 128)
    out = np.concatenate([d16.view(np.uint8).reshape(-1, 2), dmin16.view(np.uint8).reshape(-1, 2), scales, qs], 1)
    return out.reshape(*x.shape[:-1], x.shape[-1] // 256 * 144)


def write_gguf(tensors: dict, path: Path, qtype: str) -> None:
    """A ComfyUI-GGUF file (architecture ``flux``) as its tools/convert.py and llama-quantize lay it
    out: 1-D and tiny tensors in F32, matrices whose rows fit the block size in ``qtype``, the rest F16."""
    import gguf
    import numpy as np

    q = getattr(gguf.GGMLQuantizationType, qtype)
    block = gguf.GGML_QUANT_SIZES[q][0]
    writer = gguf.GGUFWriter(path=None, arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type({"Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_M}[qtype])
    for key, t in tensors.items():
        data = t.float().numpy()
        if data.ndim == 1 or data.size <= 1024:
            kind, raw = gguf.GGMLQuantizationType.F32, data
        elif data.shape[-1] % block == 0:
            kind = q
            raw = quantize_q4_k(data) if qtype == "Q4_K" else gguf.quants.quantize(data, q)
        else:
            kind = gguf.GGMLQuantizationType.F16
            raw = gguf.quants.quantize(data.astype(np.float32), kind)
        writer.add_tensor(key, raw, raw_dtype=kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    writer.write_header_to_file(path=tmp)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


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

        t = time.perf_counter()
        for key in FAMILY_MODELS:
            sd, header = make_family(m, key, seed)
            _save(sd, out / FILES[key], torch.float32, {**meta, **header})
        taef2 = make_taesd(m, seed, 128)  # Flux.2's TAE: 32 channels, 2x2 patches -> 128
        for part in ("encoder", "decoder"):
            prefix = f"taesd_{part}."
            _save({k[len(prefix):]: v for k, v in taef2.items() if k.startswith(prefix)}, out / FILES[f"taef2_{part}"],
                  torch.float32, meta)
        _save(make_wan_vae(m, seed), out / FILES["wan_vae"], torch.float32, meta)
        flux256 = make_flux256(m, seed)
        for q in ("Q8_0", "Q4_K"):
            write_gguf(flux256, out / FILES[f"flux_{q.lower()}"], q)
        log(f"tiny_models: family models, video VAE and GGUF files in {time.perf_counter() - t:.1f} s")


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
