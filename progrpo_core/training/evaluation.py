"""Evaluation: deterministic sampling (ODE / DDIM η = 0) on fixed prompts and seeds, scored by the
trained reward and, when given, a "gold" reward that is only watched."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

from ..compute import Compute
from ..denoiser import Denoiser, call_slices, cfg_rows, noise_to_start
from ..distributed import World
from ..rewards import Reward
from ..samplers import randn_rows, sample_ode
from ..spec import EVAL_SEED_BASE, eval_set  # noqa: F401  (re-exported)
from .rollouts import decode_and_score



@torch.no_grad()
def sample_deterministic(model: Denoiser, prompts: Sequence[str], seeds: Sequence[int], steps: int,
                         cfg: float = 1.0, micro_batch: int | None = None) -> torch.Tensor:
    """Final latents of deterministic (ODE / DDIM η=0) sampling, one seed per prompt, at most
    ``micro_batch`` network rows per model call (default 256 rows); a row's result depends only on
    its prompt and seed."""
    sig = model.sigmas(steps)
    device = next(model.net.parameters()).device
    outs = []
    for sl in call_slices(len(prompts), micro_batch or 256 * cfg_rows(cfg), cfg):
        ps, ss = prompts[sl], seeds[sl]
        gens = [torch.Generator().manual_seed(int(s)) for s in ss]
        x = noise_to_start(randn_rows((len(ps), *model.latent_shape), gens), sig[0], model.family).to(device)
        outs.append(sample_ode(model, x, sig, {"cond": model.encode_prompts(ps), "cfg": cfg}))
    return torch.cat(outs)


def finite_mean(t: torch.Tensor, what: str) -> float:
    ok = torch.isfinite(t)
    if not bool(ok.all()):
        warnings.warn(f"{what}: {int((~ok).sum())} of {t.numel()} scores are NaN or infinite; left out of the mean",
                      RuntimeWarning, stacklevel=3)
    return float(t[ok].mean()) if bool(ok.any()) else float("nan")


@torch.no_grad()
def evaluate(model: Denoiser, reward: Reward, gold: Reward | None, prompts: Sequence[str], seeds: Sequence[int],
             steps: int, cfg: float, world: World, micro: dict[str, int | None] | None = None) -> dict[str, Any]:
    """Mean reward (and gold reward) of deterministic samples, with the latents. The images are
    shared out over the ranks; NaN/inf scores are left out of the means, with a warning."""
    micro = micro or {}
    lo, hi = world.shard(len(prompts))
    comp = Compute()
    latents, scores, gold_scores = None, {}, None
    if hi > lo:
        latents = sample_deterministic(model, prompts[lo:hi], seeds[lo:hi], steps, cfg, micro.get("sample"))
        scores = decode_and_score(model, reward, latents, prompts[lo:hi], comp, phase="eval", check=False,
                                  micro_batch=micro.get("decode"))
        if gold is not None:
            gold_scores = decode_and_score(model, gold, latents, prompts[lo:hi], comp, phase="eval", check=False,
                                           micro_batch=micro.get("decode"))[gold.total_key]
    if world.enabled:
        device = next(model.net.parameters()).device
        parts = world.all_gather_object((None if latents is None else latents.cpu(), scores, gold_scores))
        parts = [p for p in parts if p[0] is not None]
        latents = torch.cat([p[0] for p in parts]).to(device)
        scores = {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}
        gold_scores = torch.cat([p[2] for p in parts]) if gold is not None else None
    out = {"reward": finite_mean(scores[reward.total_key], "eval reward"),
           "components": {k: finite_mean(v, f"eval reward {k!r}") for k, v in scores.items()},
           "latents": latents}
    if gold_scores is not None:
        out["gold"] = finite_mean(gold_scores, "eval gold reward")
    return out
