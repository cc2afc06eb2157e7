"""DiffusionNFT's update: negative-aware fine-tuning on the forward process (no likelihoods).

Re-implemented from NVlabs/DiffusionNFT (commit 24af555, ``scripts/train_nft_sd3.py`` and
``config/nft.py``; docs/METHOD.md §5). Rollouts are deterministic ODE samples of the *old* policy
``θ_old`` — a copy of the LoRA that follows the trained one slowly (:meth:`OldPolicy.follow`). Each
finished image ``x0`` gets an optimality ``r = clip(A/c/2 + 1/2, 0, 1)`` from its clipped advantage
``A`` (``c`` = ``grpo.adv_clip``). For ``⌊fraction·T⌋`` of the sampling schedule's noise levels
``σ`` (a random permutation per image) it is noised by the forward process with fresh noise, and
both policies predict it back; the reference mixes their velocities,
``v+ = β·v_θ + (1 − β)·v_old`` and ``v− = (1 + β)·v_old − β·v_θ``, which — the x0 estimate being
affine in the velocity (and in ε for VP models), the weights summing to one — is the same mix of
their x0 estimates. The loss pulls ``v+`` toward the image where ``r`` is high and ``v−`` where it
is low, each squared error divided by its own detached mean absolute error::

    loss = c · mean( r·|x0+ − x0|²/(β·w+) + (1 − r)·|x0− − x0|²/(β·w−) ),  w± = mean|x0± − x0|

plus ``kl_beta``·mean((v_θ − v_ref)²) to the model without the LoRA when ``grpo.kl_beta`` > 0.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..compute import Compute
from ..denoiser import Denoiser, alpha_bar, call_slices, cfg_rows
from ..distributed import World
from ..group import device_of
from ..spec import RunSpec
from .records import UpdateStats
from .rollouts import RolloutBatch
from .update import Hooks, Sums, _stats, step_optimizer

if TYPE_CHECKING:
    from .learner import Learner

def optimality(advantages: torch.Tensor, adv_clip: float) -> torch.Tensor:
    """``r = clip(clip(A, ±c)/c/2 + 1/2, 0, 1)``: the probability an image is "positive"."""
    a = advantages.clamp(-adv_clip, adv_clip)
    return (a / adv_clip / 2 + 0.5).clamp(0, 1)


def noised(x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, family: str) -> torch.Tensor:
    """The forward process at ``sigma`` (N,): flow ``(1 − σ)·x0 + σ·ε``; VP ``√ᾱ·x0 + √(1 − ᾱ)·ε``."""
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1))).to(x0)
    if family == "flow":
        return (1 - s) * x0 + s * noise
    ab = alpha_bar(s).to(x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def nft_loss(x0: torch.Tensor, x0_theta: torch.Tensor, x0_old: torch.Tensor, r: torch.Tensor, beta: float,
             adv_clip: float) -> torch.Tensor:
    """The per-image loss (N,) of the module docstring, in x0 terms."""
    def weighted(pred):
        err = (pred - x0).flatten(1)
        w = err.abs().mean(1).detach().clamp_min(1e-5)
        return (err ** 2).mean(1) / w

    pos = beta * x0_theta + (1 - beta) * x0_old
    neg = (1 + beta) * x0_old - beta * x0_theta
    return (r * weighted(pos) / beta + (1 - r) * weighted(neg) / beta) * adv_clip


def nft_update(model: Denoiser, learner: "Learner", batch: RolloutBatch, spec: RunSpec, world: World, seed: int,
               hooks: Hooks) -> tuple[UpdateStats, Compute]:
    """Train on one epoch's finished images (see the module docstring): minibatches of
    ``grpo.train_batch_size`` images from one seeded permutation of the whole batch, each image at
    its own ``⌊fraction·T⌋`` noise levels; forward and backward ``micro.train`` rows at a time."""
    g, sampler, ro = spec.grpo, spec.sampler, batch.rollout
    x0_all = ro.latents[:, -1].float()  # (N, C, H, W): the finished images' latents
    n_local = x0_all.shape[0]
    n_total = batch.total_rows if batch.total_rows is not None else n_local
    T = ro.sigmas.shape[0] - 1
    k = max(1, round(g.timestep_fraction * T))
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_total, generator=gen)
    levels = torch.stack([torch.randperm(T, generator=gen)[:k] for _ in range(n_total)])  # (N_total, k) per image
    r_all = optimality(batch.advantages, g.adv_clip).to(x0_all)
    mult = cfg_rows(sampler.cfg)
    comp, sums, grad_norms = Compute(), [], []
    device = device_of(model)
    model.net.train()
    learner.optimizer.zero_grad(set_to_none=True)
    poisoned = False
    for ci, chunk in enumerate(perm.split(g.train_batch_size)):
        noise_gen = torch.Generator().manual_seed(seed * 7 + ci)
        mine = (chunk >= batch.row_offset) & (chunk < batch.row_offset + n_local)
        rows = chunk[mine] - batch.row_offset
        for j in range(k):
            sums.append(Sums(len(chunk)))
            noise = torch.randn((len(chunk), *x0_all.shape[1:]), generator=noise_gen)[mine]  # per global row
            for sl in call_slices(len(rows), spec.micro.train, sampler.cfg):
                part = rows[sl]
                sigma = ro.sigmas[levels[chunk[mine][sl], j]]  # (n,) each image's own level
                with comp.phase("training", device):
                    loss, kl = _part_loss(model, learner, ro, part, x0_all, r_all, sigma, noise[sl], spec)
                    bad = not bool(torch.isfinite(loss))
                    poisoned |= bad
                    if not bad:
                        weighted = loss * (len(part) / len(chunk)) / (k * g.grad_accum)
                        scaler = learner.scaler
                        (scaler.scale(weighted) if scaler is not None else weighted).backward()
                forwards = 2 + (1 if g.kl_beta > 0 else 0)  # θ, θ_old (and the reference)
                comp.nfe_train_fwd += len(part) * mult * forwards
                comp.nfe_train_bwd += len(part) * mult
                comp.model_calls += mult * forwards
                sums[-1].add(len(part), loss, kl, {"clip_frac": 0.0, "approx_kl": 0.0})
        if (ci + 1) % g.grad_accum == 0 or ci == (n_total - 1) // g.train_batch_size:
            done = step_optimizer(model, learner, world, g.grad_clip, poisoned, comp, hooks, grad_norms)
            poisoned = False
            if done:
                break
    model.net.eval()
    return _stats(world, sums, grad_norms, list(range(k))), comp


def _part_loss(model: Denoiser, learner: "Learner", ro, part: torch.Tensor, x0_all: torch.Tensor,
               r_all: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
               spec: RunSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean NFT loss (and KL) of the images ``part`` at their noise levels ``sigma``."""
    g, cfg = spec.grpo, spec.sampler.cfg
    x0 = x0_all[part]
    cond = model.select_cond(ro.cond, part)
    xt = noised(x0, sigma.to(x0.device), noise.to(x0), model.family)
    with torch.no_grad(), learner.old.applied():
        x0_old = model.denoise(xt, sigma, cond, cfg)
    x0_theta = model.denoise(xt, sigma, cond, cfg)
    loss = nft_loss(x0, x0_theta, x0_old, r_all[part], g.nft_beta, g.adv_clip).mean()
    kl = torch.zeros((), device=loss.device)
    if g.kl_beta > 0:
        with torch.no_grad(), learner.adapter.disabled():
            x0_ref = model.denoise(xt, sigma, cond, cfg)
        s = sigma.reshape(-1, *([1] * (x0.ndim - 1))).to(x0).clamp_min(1e-4)
        kl = (((x0_theta - x0_ref) / s) ** 2).flatten(1).mean(1).mean()  # the velocities' squared difference
        loss = loss + g.kl_beta * kl
    return loss, kl
