"""The policy update: per-step clipped policy-gradient steps on one epoch's trajectories.

Each trained step ``j`` of a row re-scores the stored transition ``x_j → x_{j+1}`` under the
current policy (``samplers.step_from_x0`` with ``prev_sample``), forms the ratio against the
log-prob recorded while sampling and takes the clipped objective (``grpo.clipped_loss``),
optionally plus a KL to the reference policy (the network with the LoRA switched off).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .. import grpo
from ..compute import Compute
from ..config import GRPOConfig, SamplerConfig
from ..denoiser import Denoiser, call_slices, cfg_rows
from ..distributed import World
from ..group import Rollout, device_of
from ..lora import LoraWeights
from ..samplers import SAMPLER_SPECS, step_from_x0
from ..spec import RunSpec
from .records import UpdateStats
from .rollouts import RolloutBatch
from .averages import EMA

if TYPE_CHECKING:
    from .learner import Learner


def train_mask(rollout: Rollout, fraction: float, seed: int, order: str = "first") -> torch.Tensor:
    """(N, T): the steps each row trains this epoch — of its stochastic steps (std > 0, its SDE
    window), ``round(fraction·n)`` of the ``n``: ``order="first"`` the first ones in sampling order
    (Flow-GRPO trains steps ``0 … ⌊0.99·T⌋ − 1``), ``"random"`` a seeded random subset, drawn anew
    each epoch. Rows whose windows differ (drawn per prompt) each train their own."""
    stochastic = rollout.stds > 0  # (N, T)
    if not bool(stochastic.any(1).all()):
        raise ValueError("no stochastic sampling step to train on; use a noise level > 0")
    mask = torch.zeros_like(stochastic)
    for pattern in torch.unique(stochastic, dim=0):
        steps = pattern.nonzero().flatten().tolist()
        n = max(1, round(fraction * len(steps)))
        if order == "first":
            pick = steps[:n]
        else:
            g = torch.Generator().manual_seed(seed)
            pick = [steps[i] for i in torch.randperm(len(steps), generator=g)[:n].sort().values.tolist()]
        rows = (stochastic == pattern).all(1)
        mask[rows.nonzero()[:, 0][:, None], torch.tensor(pick)] = True
    return mask


def train_steps(rollout: Rollout, fraction: float, seed: int, order: str = "first") -> list[int]:
    """The steps some row trains this epoch (:func:`train_mask`), in order."""
    return train_mask(rollout, fraction, seed, order).any(0).nonzero().flatten().tolist()


def step_loss(model: Denoiser, adapter: LoraWeights, ro: Rollout, rows: torch.Tensor, cond, j: int | torch.Tensor,
              adv: torch.Tensor, s: SamplerConfig, g: GRPOConfig, comp: Compute) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The clipped objective (plus ``kl_beta``·KL) of trained step ``j`` for ``rows`` — one step for
    all, or a step per row (``j`` shaped like ``rows``), so one call can hold several steps:
    ``(loss, kl, stats)``. Counts the reference forward in ``comp``."""
    j = torch.as_tensor(j, dtype=torch.long).expand(len(rows))
    x, prev = ro.latents[rows, j], ro.latents[rows, j + 1]
    sig, sig_next = ro.sigmas[j], ro.sigmas[j + 1]  # (n,): each row's own step
    x0 = model.denoise(x, sig.to(x.device), cond, s.cfg)
    _, mean, std, logp = step_from_x0(model.family, s.sampler, x, x0, sig, sig_next, s.noise_level, prev_sample=prev)
    loss, stats = grpo.clipped_loss(logp, ro.log_probs[rows, j], adv[rows].to(logp), g.clip_range, g.adv_clip)
    kl = torch.zeros(())
    if g.kl_beta > 0:
        with torch.no_grad(), adapter.disabled():
            x0_ref = model.denoise(x, sig.to(x.device), cond, s.cfg)
        mean_ref = step_from_x0(model.family, s.sampler, x, x0_ref, sig, sig_next, s.noise_level, prev_sample=prev)[1]
        per_unit_time = g.kl_form == "flow-grpo" and SAMPLER_SPECS[s.sampler].kl_per_unit_time
        dt = (sig - sig_next).abs() if per_unit_time else None
        kl = grpo.kl_to_reference(mean, mean_ref, std, dt).mean()
        loss = loss + g.kl_beta * kl
        comp.nfe_train_fwd += len(rows) * cfg_rows(s.cfg)
    return loss, kl, stats


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What the caller hears of an update: ``on_update()`` after every optimizer step,
    ``on_skip(why)`` for every step skipped for a non-finite loss or gradient (it may stop the run by
    raising); at most ``max_updates`` steps are taken (None: no cap)."""

    on_update: Callable[[], None]
    on_skip: Callable[[str], None]
    max_updates: int | None = None


@dataclasses.dataclass
class Sums:
    """One minibatch's sums over its trained (row, step) pairs on this rank, and how many pairs the
    whole minibatch trains."""

    rows: int                   # trained (row, step) pairs of the minibatch over all ranks
    loss: float = 0.0
    kl: float = 0.0
    clip_frac: float = 0.0
    approx_kl: float = 0.0

    FIELDS = ("loss", "kl", "clip_frac", "approx_kl")

    def add(self, n: int, loss: torch.Tensor, kl: torch.Tensor, stats: dict) -> None:
        self.loss += float(loss.detach()) * n
        self.kl += float(kl.detach()) * n
        self.clip_frac += stats["clip_frac"] * n
        self.approx_kl += stats["approx_kl"] * n


def policy_update(model: Denoiser, learner: "Learner", batch: RolloutBatch, mask: torch.Tensor, spec: RunSpec,
                  world: World, perm_seed: int, hooks: Hooks) -> tuple[UpdateStats, Compute]:
    """Train on ``batch``, as ``spec`` says (sampler, ``grpo`` settings, the train micro-batch).

    The minibatches (``grpo.train_batch_size`` rows) are cut from one seeded permutation of the
    *whole* batch's rows, and each rank's loss is weighted by its share of the minibatch, so the
    gradients summed over ranks are the one-process gradient. Within a minibatch, forward and
    backward passes take ``micro.train`` network rows at a time (a guided row counts two), each row
    one trained (row, step) pair — a call may hold several steps (:func:`trained_pairs`) — and
    accumulate: the sum is the minibatch's gradient whatever the micro-batch. With fp16 the loss is
    scaled (``learner.scaler``) so the small policy gradients survive the half-precision backward.
    ``mask`` (N, T) says which steps of which rows are trained (:func:`train_mask`)."""
    g, sampler = spec.grpo, spec.sampler
    steps = mask.any(0).nonzero().flatten().tolist()
    per_row = int(mask.sum(1).max())  # the steps each row trains
    ro = batch.rollout
    n_local = ro.latents.shape[0]
    n_total = batch.total_rows if batch.total_rows is not None else n_local
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(perm_seed))
    chunks = list(perm.split(g.train_batch_size))  # global row ids per minibatch
    comp = Compute()
    sums: list[Sums] = []  # per minibatch
    grad_norms: list[float] = []
    model.net.train()
    learner.optimizer.zero_grad(set_to_none=True)
    poisoned = False
    for ci, chunk in enumerate(chunks):
        mine = (chunk >= batch.row_offset) & (chunk < batch.row_offset + n_local)
        rows = chunk[mine] - batch.row_offset  # this rank's rows of the minibatch, in minibatch order
        pair_rows, pair_steps = trained_pairs(rows, mask, steps)
        sums.append(Sums(len(chunk) * per_row))
        for sl in call_slices(len(pair_rows), spec.micro.train, sampler.cfg):
            poisoned |= _backward(model, learner, batch, pair_rows[sl], pair_steps[sl], len(chunk), per_row, spec,
                                  comp, sums[-1])
        if (ci + 1) % g.grad_accum == 0 or ci == len(chunks) - 1:
            done = step_optimizer(model, learner, world, g.grad_clip, poisoned, comp, hooks, grad_norms)
            poisoned = False
            if done:
                break
    model.net.eval()
    return _stats(world, sums, grad_norms, steps), comp


def trained_pairs(rows: torch.Tensor, mask: torch.Tensor, steps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every trained ``(row, step)`` of ``rows``, step by step: ``(rows (P,), steps (P,))``. The
    update cuts them into calls of up to the micro-batch across steps, so a small group's window
    (12 survivors × 2 steps) fills one call of 24 rows where a call per step would hold 12."""
    mask = mask.to(rows.device)  # a mask on the GPU cannot select from CPU row ids
    per_step = [rows[mask[rows, j]] if len(rows) else rows for j in steps]
    if not per_step:
        return rows[:0], rows[:0]
    return torch.cat(per_step), torch.cat([torch.full_like(r, j) for r, j in zip(per_step, steps)])


def step_optimizer(model: Denoiser, learner: "Learner", world: World, grad_clip: float, poisoned: bool,
                   comp: Compute, hooks: Hooks, grad_norms: list[float]) -> bool:
    """One optimizer step on the accumulated gradients (skipped, and reported to ``hooks``, when they
    are not finite or ``poisoned``); its gradient norm joins ``grad_norms``. True when the hooks'
    update cap is reached."""
    with comp.phase("training", device_of(model)):
        gn = _optimizer_step(learner.parameters(), learner.optimizer, learner.ema, world, grad_clip, poisoned,
                             learner.scaler)
    if gn is None:
        model.net.eval()
        hooks.on_skip("the loss or gradient is NaN or infinite")  # may stop the run
        model.net.train()
    else:
        hooks.on_update()
        grad_norms.append(gn)
    return hooks.max_updates is not None and len(grad_norms) >= hooks.max_updates


def _backward(model: Denoiser, learner: "Learner", batch: RolloutBatch, part: torch.Tensor, j: torch.Tensor,
              minibatch: int, n_steps: int, spec: RunSpec, comp: Compute, sums: Sums) -> bool:
    """Forward and backward of the rows ``part``, each at its step ``j`` (shaped like ``part``),
    accumulating their share of the minibatch's gradient; their sums go into ``sums``. Returns
    whether the loss was not finite."""
    mult = cfg_rows(spec.sampler.cfg)
    with comp.phase("training", device_of(model)):
        cond = model.select_cond(batch.rollout.cond, part)
        loss, kl, st = step_loss(model, learner.adapter, batch.rollout, part, cond, j, batch.advantages, spec.sampler,
                                 spec.grpo, comp)
        poisoned = not bool(torch.isfinite(loss))
        if not poisoned:
            # the minibatch mean over all ranks' rows, split into this part's share
            weighted = loss * (len(part) / minibatch) / (n_steps * spec.grpo.grad_accum)
            (learner.scaler.scale(weighted) if learner.scaler is not None else weighted).backward()
    comp.nfe_train_fwd += len(part) * mult
    comp.nfe_train_bwd += len(part) * mult
    comp.model_calls += mult
    sums.add(len(part), loss, kl, st)
    return poisoned


def _optimizer_step(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, ema: EMA | None,
                    world: World, grad_clip: float, poisoned: bool,
                    scaler: torch.amp.GradScaler | None = None) -> float | None:
    """Sum gradients over ranks, unscale (fp16), clip, step (and the EMA); the gradient norm, or
    None when this or another rank's loss or the gradient is not finite (the step is skipped; with
    fp16 the loss scale then shrinks). Where no backward ran at all (every loss was non-finite on a
    single process) there is nothing to unscale: the step is skipped and the scale kept."""
    bad_ranks = world.sync_grads(params, 1.0 if poisoned else 0.0)
    if all(p.grad is None for p in params):
        optimizer.zero_grad(set_to_none=True)
        return None
    if scaler is not None:
        scaler.unscale_(optimizer)
    gn = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    ok = bad_ranks == 0 and bool(torch.isfinite(gn))
    if ok:
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
        if ema is not None:
            ema.update()
    if scaler is not None:
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return float(gn) if ok else None


def _stats(world: World, sums: list[Sums], grad_norms: list[float], steps: Sequence[int]) -> UpdateStats:
    """Per-minibatch means over the whole batch's trained (row, step) pairs, averaged."""
    totals = world.sum([getattr(x, f) for x in sums for f in Sums.FIELDS])  # whole-batch row-sums
    k = len(Sums.FIELDS)
    per_step = [[totals[k * i + f] / x.rows for f in range(k)] for i, x in enumerate(sums)]
    means = dict(zip(Sums.FIELDS, (sum(r[f] for r in per_step) / len(per_step) if per_step else 0.0
                                   for f in range(k))))
    return UpdateStats(**means, grad_norm=sum(grad_norms) / len(grad_norms) if grad_norms else 0.0,
                       updates=len(grad_norms), trained_steps=list(steps))
