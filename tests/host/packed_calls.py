"""Rows of several prompts in one model call, on real ComfyUI architectures (CPU).

Run with the *ComfyUI* venv's python from the repository root::

    $PROGRPO_COMFYUI_PYTHON tests/host/packed_calls.py --comfyui $PROGRPO_COMFYUI --models DIR KIND...

For each KIND — ``sd15`` (the tiny checkpoint, its CLIP, CFG 4.5), ``sd3`` (the tiny MMDiT with
CLIP-L text, CFG 4.5), ``flux`` (guidance-distilled, CFG 1, test conditioning), ``flux_ragged``
(prompts whose token counts differ: they cannot share a call) — the host denoiser computes x0 of
rows of three prompts, interleaved, with calls of at most ``--max-batch`` rows: once packing rows of
several prompts into each call and once calling each prompt on its own. Prints one JSON line per
kind: the calls each way, the largest difference of each way's outputs from each row computed on
its own, the output scale, and how much another prompt changes a row's output.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROMPTS = ("a red apple", "a blue car on a long road at night", "two cats")


def _setup(comfyui: str) -> None:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    from progrpo_headless import pack_nodes

    pack_nodes("host.headless").import_comfyui(comfyui, "cpu")


def _denoiser(kind: str, models: Path, max_batch: int):
    """The host denoiser of ``kind`` with the three prompts registered, and its CFG."""
    import comfy.sd
    import torch
    import tiny_models as T

    from progrpo_headless import pack_nodes

    host = pack_nodes("host")
    g = torch.Generator().manual_seed(0)
    if kind == "sd15":
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(models / T.FILES["sd15"]), output_vae=True,
                                                                    output_clip=True)
        den = host.ComfyDenoiser(model, (4, 8, 8), vae=vae, clip=clip, max_batch=max_batch)
        for p in PROMPTS:
            den.add_prompt(p, host.model.encode_text(clip, p), host.model.encode_text(clip, ""))
        return den, 4.5
    if kind == "sd3":
        model = comfy.sd.load_diffusion_model(str(models / T.FILES["sd3"]))
        clip = comfy.sd.load_clip([str(models / T.FILES["clip_l"])], clip_type=comfy.sd.CLIPType.SD3)
        den = host.ComfyDenoiser(model, (16, 8, 8), clip=clip, max_batch=max_batch)
        for p in PROMPTS:
            den.add_prompt(p, host.model.encode_text(clip, p), host.model.encode_text(clip, ""))
        return den, 4.5
    model = comfy.sd.load_diffusion_model(str(models / T.FILES["flux"]))
    den = host.ComfyDenoiser(model, (16, 8, 8), max_batch=max_batch)
    for i, p in enumerate(PROMPTS):
        tokens = 8 + (4 * i if kind == "flux_ragged" else 0)
        den.add_prompt(p, [[torch.randn(1, tokens, 768, generator=g), {"pooled_output": torch.randn(1, 768, generator=g)}]])
    return den, 1.0


def check(kind: str, models: Path, rows_per_prompt: int, max_batch: int) -> dict:
    import torch

    den, cfg = _denoiser(kind, models, max_batch)
    n = rows_per_prompt * len(PROMPTS)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((n, *den.latent_shape), generator=g)
    sigma = den.sigmas(4)[1].expand(n)
    order = [PROMPTS[i % len(PROMPTS)] for i in range(n)]  # interleaved: 0, 1, 2, 0, 1, 2, …
    cond = den.encode_prompts(order)
    out, calls = {}, {}
    for packed in (True, False):
        den.pack_prompts, den.model_calls = packed, 0
        out[packed] = den.run(lambda: den.denoise(x, sigma, cond, cfg), max_rows=max_batch)
        calls[packed] = den.model_calls
    # each row on its own, through the same path: what every row's x0 must be
    den.pack_prompts = False
    single = torch.cat([den.run(lambda i=i: den.denoise(x[i:i + 1], sigma[i:i + 1], den.encode_prompts([order[i]]), cfg))
                        for i in range(n)])
    # what the prompt changes (so a row given another prompt's conditioning would show): rows 0–2
    # with the next prompt's
    other = torch.cat([den.run(lambda i=i: den.denoise(x[i:i + 1], sigma[i:i + 1],
                                                       den.encode_prompts([order[i + 1]]), cfg)) for i in range(3)])
    return {"kind": kind, "rows": n, "prompt_effect": float((other - single[:3]).abs().max()), "max_batch": max_batch, "calls_packed": calls[True], "calls_per_prompt": calls[False],
            "diff_packed": float((out[True] - single).abs().max()), "diff_per_prompt": float((out[False] - single).abs().max()),
            "scale": float(single.abs().max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--models", required=True, type=Path)
    ap.add_argument("--rows-per-prompt", type=int, default=5)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("kinds", nargs="+", choices=("sd15", "sd3", "flux", "flux_ragged"))
    a = ap.parse_args()
    _setup(a.comfyui)
    for kind in a.kinds:
        print(json.dumps(check(kind, a.models, a.rows_per_prompt, a.max_batch)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
