"""Rollout collection: one epoch's prompts, sampled (expanding and pruning), scored, selected,
with advantages over the whole batch.

Under ``torchrun`` each process samples its share of the prompts (whole groups, see
:mod:`progrpo_core.distributed`); final rewards are gathered so advantages, selection and metrics
are computed on the same ``(B, K)`` tensor as on one process.
"""
from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from typing import Any, Callable, Sequence

import torch

from .. import grpo, ovf
from ..compute import Compute
from ..config import GRPOConfig, SamplerConfig
from ..denoiser import Denoiser, call_slices
from ..distributed import World
from ..group import Rollout, device_of, sample_group, select_rows
from ..methods import PruneSchedule, Windows
from ..rewards import Reward, check_scores
from .records import SampleStats


@dataclasses.dataclass
class RolloutBatch:
    """One epoch's trained trajectories. On several processes ``rollout``, ``scores`` and
    ``advantages`` hold this rank's rows (``N`` of the ``total_rows`` of the whole batch, starting
    at global row ``row_offset``); ``stats`` always describe the whole batch."""

    rollout: Rollout
    scores: dict[str, torch.Tensor]   # component → (N,) final rewards of the trained rows
    advantages: torch.Tensor          # (N,)
    stats: SampleStats
    row_offset: int = 0               # global index of this rank's first row
    total_rows: int | None = None     # rows of the whole batch (None: this process has them all)

    @property
    def nonfinite(self) -> int:
        """NaN/inf reward values this epoch (all ranks): its update is skipped."""
        return self.stats.nonfinite


def epoch_prompts(prompts: Sequence[str], per_epoch: int, seed: int, epoch: int) -> tuple[list[str], list[int]]:
    """The ``B`` prompts of an epoch and their seeds (global: epoch·B + b)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    idx = torch.randint(0, len(prompts), (per_epoch,), generator=g).tolist()
    seeds = [seed * 1_000_000 + epoch * per_epoch + b for b in range(per_epoch)]
    return [prompts[i] for i in idx], seeds


def score_finite(reward: Reward, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """``reward.evaluate``, with NaN scores for images that are not finite (a diverging model
    renders NaN): those count as non-finite rewards, and skip the update, instead of stopping the run."""
    ok = torch.isfinite(images.flatten(1)).all(1)  # (N,)
    if bool(ok.all()):
        return reward.evaluate(images, list(prompts))
    out = {k: torch.full((len(images),), float("nan")) for k in _keys(reward)}
    if bool(ok.any()):
        good = reward.evaluate(images[ok], [p for p, k in zip(prompts, ok.tolist()) if k])
        for k, v in good.items():
            out[k][ok.cpu()] = v
    return out


def _keys(reward: Reward) -> list[str]:
    names = [n for n, _ in reward.components()]
    return names + ([reward.total_key] if reward.total_key not in names else [])


def decode_and_score(model: Denoiser, reward: Reward, latents: torch.Tensor, prompts: Sequence[str],
                     compute: Compute, phase: str = "final", check: bool = True,
                     micro_batch: int | None = None) -> dict[str, torch.Tensor]:
    """Decode and score, ``micro_batch`` images at a time; ``check`` refuses NaN/inf scores (the
    trainer counts them instead)."""
    parts = []
    with compute.phase(f"{phase}_scoring", device_of(model)), torch.no_grad():
        for sl in call_slices(len(latents), micro_batch):
            parts.append(score_finite(reward, model.decode(latents[sl]), list(prompts[sl])))
    out = parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    if check:
        for k, v in out.items():
            check_scores(v, f"reward {k!r}")
    return out


def collect(model: Denoiser, reward: Reward, prompts: list[str], seeds: list[int], schedule: PruneSchedule,
            sampler: SamplerConfig, grpo_cfg: GRPOConfig, world: World, select_seed: int,
            callback: Callable[[dict], None] | None = None,
            micro: dict[str, int | None] | None = None, sde_steps: Windows = None,
            reference: Callable[[], AbstractContextManager] | None = None) -> RolloutBatch:
    """Sample, score and select one epoch's trajectories for the global batch ``prompts``; no
    gradient step. This rank samples its share; advantages and stats are those of the whole batch.
    ``micro`` holds the ``sample`` and ``decode`` micro-batches (None: everything at once);
    ``reference``: the context in which the model is the frozen reference (the LoRA off), for a
    schedule whose previews the reference makes (``group.sample_group``)."""
    micro = micro or {}
    B = len(prompts)
    lo, hi = world.shard(B)  # this rank's prompts
    sel_gen = torch.Generator().manual_seed(select_seed)
    proxy_nonfinite = 0
    previews: list[dict[str, torch.Tensor]] = []  # every preview's components (preview_reward takes the last)

    def proxy_score(images, row_prompts):
        nonlocal proxy_nonfinite
        parts = score_finite(reward, images, row_prompts)
        if schedule.preview_reward is not None:
            previews.append(parts)
        scores = parts[reward.total_key]
        bad = ~torch.isfinite(scores)
        if bad.any():  # this epoch's update is skipped; a finite stand-in lets sampling finish
            proxy_nonfinite += int(bad.sum())
            scores = torch.where(bad, torch.zeros_like(scores), scores)
        return scores

    # (a random selector at checkpoints draws per prompt from its seed: the same on any number of processes)
    rollout = sample_group(model, prompts[lo:hi], seeds[lo:hi], sampler.steps, schedule, sampler.sampler,
                           sampler.noise_level, sampler.cfg, score_fn=proxy_score, callback=callback,
                           micro_batch=micro.get("sample"), decode_micro_batch=micro.get("decode"),
                           sde_steps=sde_steps[lo:hi] if isinstance(sde_steps, list) else sde_steps,
                           reference=reference)
    comp = rollout.compute
    row_prompts = [rollout.prompts[b] for b in rollout.prompt_index.tolist()]
    if rollout.preview is not None:  # the survivors' rewards are their previews' (scored while sampling)
        local = {k: torch.cat([p[k] for p in previews])[-rollout.preview["scored"]:][rollout.preview["pos"]]
                 for k in previews[0]}
    else:
        local = decode_and_score(model, reward, rollout.latents[:, -1], row_prompts, comp, check=False,
                                 micro_batch=micro.get("decode"))
        comp.final_decodes += rollout.latents.shape[0]
        comp.final_rewards += rollout.latents.shape[0]
    scores = {k: world.gather_rows(v) for k, v in local.items()}  # component → (B·K_finished,) prompt order
    finite = torch.stack([torch.isfinite(v) for v in scores.values()]).all(0)  # (B·K_finished,)
    # (a preview's non-finite scores were counted when it was scored)
    nonfinite = int(world.sum([proxy_nonfinite])[0]) + (0 if rollout.preview is not None else int((~finite).sum()))
    total = scores[reward.total_key].view(B, -1)  # (B, K_finished)
    if nonfinite:
        return _poisoned(rollout, local, scores, reward.total_key, prompts, nonfinite, lo)
    adv_finished = grpo.advantages(total, grpo_cfg.adv_norm)
    reward_finished_mean = float(total.mean())
    clustered_finished = grpo.clustered_fraction(adv_finished)
    if schedule.final_keep is not None:  # static selection on the true reward (ovf method)
        K = total.shape[1]
        keep = torch.cat([ovf.select(schedule.selector, total[b], schedule.final_keep, sel_gen)
                          + b * K for b in range(B)])  # global rows, grouped by prompt
        mine = (keep >= lo * K) & (keep < hi * K)
        local_keep = keep[mine] - lo * K
        rollout = select_rows(model, rollout, local_keep)
        local = {k: v[local_keep] for k, v in local.items()}
        scores = {k: v[keep] for k, v in scores.items()}
        total = scores[reward.total_key].view(B, -1)
    if grpo_cfg.separate_reward_norm and len(reward.components()) > 1:
        weights = dict(reward.components())
        adv = grpo.combined_advantages({k: scores[k].view(B, -1) for k in weights}, weights, grpo_cfg.adv_norm)
    else:
        adv = grpo.advantages(total, grpo_cfg.adv_norm)  # (B, K)
    proxies = [(c["step"], c["sigma"], world.gather_rows(c["rewards"]), world.gather_rows(c["kept"]))
               for c in rollout.checkpoints]  # whole-batch proxy rewards (B, K_prev), kept ids (B, K_next)
    clustered_expanded = None
    if proxies:
        first = proxies[0][2]  # proxy rewards of the expanded group
        clustered_expanded = grpo.clustered_fraction(grpo.advantages(first, grpo_cfg.adv_norm))
    stats = SampleStats(
        reward_mean=float(total.mean()), reward_std=float(total.std(unbiased=False)),
        components={k: float(v.mean()) for k, v in scores.items()}, prompts=list(prompts),
        reward_finished_mean=reward_finished_mean, clustered_finished=clustered_finished,
        clustered_expanded=clustered_expanded, clustered_trained=grpo.clustered_fraction(adv),
        proxy=[{"step": step, "sigma": round(sigma, 4), "mean": float(r.mean()), "std": float(r.std(unbiased=False)),
                "kept": kept.tolist()} for step, sigma, r, kept in proxies])
    K = total.shape[1]
    return RolloutBatch(rollout, local, adv.reshape(-1)[lo * K:hi * K], stats, lo * K, B * K)


def _poisoned(rollout: Rollout, local: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], total_key: str,
              prompts: list[str], nonfinite: int, lo: int) -> RolloutBatch:
    """An epoch with NaN/inf rewards: nothing is selected or trained; the stats say what happened."""
    def finite_mean(v: torch.Tensor) -> Any:
        ok = torch.isfinite(v)
        return float(v[ok].mean()) if ok.any() else None

    total = scores[total_key]
    stats = SampleStats(reward_mean=finite_mean(total), reward_std=None,
                        components={k: finite_mean(v) for k, v in scores.items()}, prompts=list(prompts),
                        nonfinite=nonfinite)
    K = total.numel() // len(prompts)
    return RolloutBatch(rollout, local, torch.zeros(rollout.latents.shape[0]), stats, lo * K, len(prompts) * K)
