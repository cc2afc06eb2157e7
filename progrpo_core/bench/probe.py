"""Measurements the bench takes on full, unpruned groups: proxy fidelity, reward clustering, and
what a pruning funnel would have kept.

A *probe* samples ``B`` prompts × ``G`` trajectories with the exploration sampler and no pruning,
and records, for every step ``i``, the reward of the one-step x0 projection (the latent proxy of
docs/METHOD.md §4, exactly what a checkpoint at step ``i`` would score) and the final reward of every
trajectory. Everything else here is a pure function of those two arrays:

* proxy fidelity: Spearman ρ, within each group, between the proxy at step ``i`` and the final
  reward;
* a funnel replay: which trajectories a schedule (checkpoints, survivor counts, selector) would
  have kept, and how spread out (how informative for GRPO) their final rewards are;
* reward clustering: the fraction of trajectories with ``|A| ≤ δ`` before and after selection.

Recorded proxies are indexed by step ``i``: the x0 of the ``(i+1)``-th model call. A checkpoint ``c``
of ``group.sample_group`` prunes after ``c`` calls, on the proxy recorded at ``i = c − 1``, so
trajectories pruned there have cost ``c`` evaluations.
Shapes: ``S`` steps recorded, ``B`` groups, ``G`` trajectories per group.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from .. import grpo, ovf
from ..denoiser import Denoiser
from ..group import pool_latent, sample_group
from ..methods import PruneSchedule
from ..rewards import Reward


@dataclasses.dataclass
class Probe:
    """Full groups with the proxy reward at every step."""

    proxy: np.ndarray     # (T, B, G) reward of the one-step x0 projection after model call i+1
    final: np.ndarray     # (B, G) reward of the finished sample
    sigmas: np.ndarray    # (T+1,)
    nfe: int              # model evaluations the probe cost (rows), lookahead excluded
    lookahead: np.ndarray | None = None  # (T, B, G) reward of a k-step deterministic ODE from x_i (step 0 unused)
    lookahead_steps: int = 0

    @property
    def steps(self) -> int:
        return self.proxy.shape[0]


def record_probe(model: Denoiser, reward: Reward, prompts: Sequence[str], seeds: Sequence[int], steps: int,
                 group: int, sampler: str, noise_level: float, cfg: float = 1.0, lookahead: int = 0,
                 proxy_scale: float = 1.0) -> Probe:
    """Sample ``group`` trajectories per prompt without pruning; score the proxy at every step, decoded
    from the x0 latent pooled to ``proxy_scale`` of its size as the trainer's previews are.

    With ``lookahead = k > 0`` also score a costlier candidate proxy: from each step's latent
    ``x_i``, ``k`` deterministic ODE steps to σ = 0 on the rollout's own remaining sigmas. The first
    of them is the sampling step's own model call, so it costs ``k − 1`` extra evaluations per row
    and checkpoint; ``k = 1`` is the one-step proxy again."""
    proxies: dict[int, torch.Tensor] = {}
    B = len(prompts)

    def record(info: dict) -> None:
        images = model.decode(pool_latent(info["x0"], proxy_scale))
        rows = [prompts[b] for b in info["row_prompt"].tolist()]
        proxies[info["step"]] = reward.evaluate(images, rows)[reward.total_key].view(B, -1)

    with torch.no_grad():
        ro = sample_group(model, prompts, seeds, steps, PruneSchedule(group), sampler, noise_level, cfg,
                          callback=record)
        rows = [prompts[b] for b in ro.prompt_index.tolist()]
        final = reward.evaluate(model.decode(ro.latents[:, -1]), rows)[reward.total_key].view(B, -1)
        look = None
        if lookahead > 0:
            from ..samplers import sample_ode

            look = torch.full((steps, B, group), float("nan"), dtype=torch.float64)
            for i in range(1, steps):
                rest = ro.sigmas[i:]  # (T−i+1,) ending in 0
                idx = torch.linspace(0, len(rest) - 1, min(lookahead, len(rest) - 1) + 1).round().long().unique()
                x_end = sample_ode(model, ro.latents[:, i], rest[idx], {"cond": ro.cond, "cfg": cfg})
                look[i] = reward.evaluate(model.decode(x_end), rows)[reward.total_key].view(B, -1).double()
    proxy = torch.stack([proxies[i] for i in range(steps)])  # (T, B, G)
    return Probe(proxy.double().numpy(), final.double().numpy(), ro.sigmas.double().numpy(),
                 ro.compute.nfe_sample, None if look is None else look.numpy(), lookahead)


# -- rank correlation ---------------------------------------------------------------------------

def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ (``scipy.stats.spearmanr``, average ranks for ties); NaN when either side is constant."""
    import warnings

    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"spearman needs equal lengths, got {len(a)} and {len(b)}")
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


def fidelity(probe: Probe, which: str = "proxy") -> list[dict]:
    """Per step: mean, std and count (over groups with non-constant rewards) of the within-group ρ
    between the ``which`` proxy (``"proxy"``: one-step x0; ``"lookahead"``) and the final reward."""
    arr = probe.proxy if which == "proxy" else probe.lookahead
    if arr is None:
        raise ValueError(f"the probe has no {which!r} record; sample it with lookahead > 0")
    out = []
    for i in range(probe.steps):
        rhos = np.array([spearman(arr[i, b], probe.final[b]) if np.isfinite(arr[i, b]).all() else np.nan
                         for b in range(probe.final.shape[0])])
        ok = rhos[np.isfinite(rhos)]
        out.append({"step": i, "calls": i + 1, "frac": (i + 1) / probe.steps, "sigma": float(probe.sigmas[i]),
                    "rho_mean": float(ok.mean()) if len(ok) else None,
                    "rho_std": float(ok.std()) if len(ok) else None, "groups": int(len(ok))})
    return out


# -- funnel replay and clustering ---------------------------------------------------------------

def replay_funnel(probe: Probe, schedule: PruneSchedule, seed: int = 0) -> np.ndarray:
    """Indices (B, K) of the trajectories ``schedule`` keeps from the probe's groups, choosing on the
    recorded proxy at each checkpoint and, for ``final_keep``, on the final reward — the same
    decisions ``sample_group`` and the trainer would take. Uses the first ``G_max`` of each group."""
    gen = torch.Generator().manual_seed(seed)
    G = schedule.group_size
    if G > probe.final.shape[1]:
        raise ValueError(f"schedule G_max={G} exceeds the probe's group of {probe.final.shape[1]}")
    kept = []
    for b in range(probe.final.shape[0]):
        alive = np.arange(G)
        for c, k in zip(schedule.checkpoints, schedule.keep):
            sel = ovf.select(schedule.selector, torch.from_numpy(probe.proxy[c - 1, b, alive]), k, gen).numpy()
            alive = alive[sel]
        if schedule.final_keep is not None:
            sel = ovf.select(schedule.selector, torch.from_numpy(probe.final[b, alive]), schedule.final_keep,
                             gen).numpy()
            alive = alive[sel]
        kept.append(alive)
    return np.stack(kept)


def group_advantages(rewards: np.ndarray) -> np.ndarray:
    """GRPO group advantages of (B, K) rewards (``grpo.advantages``, norm="group")."""
    return grpo.advantages(torch.from_numpy(np.asarray(rewards, dtype=np.float64))).double().numpy()


def selection_stats(probe: Probe, kept: np.ndarray, delta: float = 0.5) -> dict:
    """How informative the kept subset is: the std of its final rewards, the clustered fraction of its
    advantages, and its mean reward, averaged over groups."""
    r = np.take_along_axis(probe.final, kept, axis=1)  # (B, K)
    adv = group_advantages(r)
    return {"std": float(r.std(axis=1).mean()), "mean": float(r.mean()),
            "clustered": float((np.abs(adv) <= delta).mean()), "k": int(kept.shape[1])}


def advantage_sample(probe: Probe, kept: np.ndarray | None = None) -> np.ndarray:
    """All advantages (flattened) of the full groups, or of the kept subsets, for the histogram."""
    r = probe.final if kept is None else np.take_along_axis(probe.final, kept, axis=1)
    return group_advantages(r).reshape(-1)
