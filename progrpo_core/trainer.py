"""GRPO training of a LoRA with the expand-and-prune sampler.

One epoch: pick ``B`` prompts; sample ``G_max`` trajectories each with the current policy,
pruning at the schedule's checkpoints (``pro-grpo``), or none (``grpo``), optionally selecting on
the final reward (``ovf``); score the finished images; normalise advantages over each prompt's
trained trajectories; then take the per-step clipped policy-gradient updates on their stored
steps (METHOD.md §6).

Under ``torchrun`` the epoch's ``B`` prompts are split over the processes (whole groups per rank,
see :mod:`progrpo_core.distributed`); rewards are gathered so advantages and metrics are those of
the whole batch, and rank 0 writes the run folder. :meth:`Trainer.run` writes resumable
checkpoints (:mod:`progrpo_core.checkpoint`), saves one when interrupted, and skips updates whose
reward, loss or gradient is not finite.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import checkpoint as ckpt
from . import distributed, grpo, ovf
from .compute import Compute
from .config import TrainConfig, to_toml
from .denoiser import Denoiser, noise_to_start
from .group import Rollout, sample_group, select_rows
from .io import write_json, write_text
from .lora import LoraAdapter, lora_from_file
from .rewards import Reward, build_reward, check_scores
from .samplers import randn_rows, sample_ode, step_from_x0

EVAL_SEED_BASE = 1_000_000_007  # eval noise never coincides with training noise


def load_model(cfg: TrainConfig) -> Denoiser:
    if cfg.model.comfyui:
        try:
            from nodes.headless import load_comfy_denoiser  # type: ignore[import-not-found]
        except ImportError as e:
            raise RuntimeError(
                "training a ComfyUI checkpoint needs the pack's host adapter (nodes/headless.py) on the "
                f"Python path: run from the pack's folder ({e})") from e
        m = cfg.model
        return load_comfy_denoiser(m.comfyui, m.checkpoint, device=cfg.run.device, resolution=m.resolution,
                                   clip=m.clip, clip_type=m.clip_type, vae=m.vae)
    from .embedded import load_digits_model

    model = load_digits_model(cfg.model.name, cfg.model.path)
    model.net.to(cfg.run.device)
    return model


def load_prompts(path: str | None, model: Denoiser) -> list[str]:
    if path is None:
        prompts = list(getattr(model, "default_prompts", ()) or ())
        if not prompts:
            raise ValueError("this model has no built-in prompt set; give a prompt file with --run.prompts")
        return prompts
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {p} has no prompts; write one prompt per line")
    return prompts


@torch.no_grad()
def sample_deterministic(model: Denoiser, prompts: Sequence[str], seeds: Sequence[int], steps: int,
                         cfg: float = 1.0, batch: int = 256) -> torch.Tensor:
    """Final latents of deterministic (ODE / DDIM η=0) sampling, one seed per prompt; a row's
    result depends only on its prompt and seed."""
    sig = model.sigmas(steps)
    device = next(model.net.parameters()).device
    outs = []
    for i in range(0, len(prompts), batch):
        ps, ss = prompts[i:i + batch], seeds[i:i + batch]
        gens = [torch.Generator().manual_seed(int(s)) for s in ss]
        x = noise_to_start(randn_rows((len(ps), *model.latent_shape), gens), sig[0], model.family).to(device)
        outs.append(sample_ode(model, x, sig, {"cond": model.encode_prompts(ps), "cfg": cfg}))
    return torch.cat(outs)


class TrainingStopped(RuntimeError):
    """The run stopped itself rather than train on (or save) a poisoned state: too many skipped
    updates in a row, or LoRA weights that are no longer finite."""


# Settings a resumed run may change: how long it runs and where/how often it writes. Anything
# else changes the trajectory, so resuming with it would not continue the same run.
RESUMABLE_CHANGES = {
    "run": {"out", "epochs", "max_steps", "eval_every", "save_every", "checkpoint_every", "keep_checkpoints",
            "max_bad_updates", "check_disk", "device"},
    "reward": {"device"},
}


class EMA:
    """Exponential moving average of the LoRA parameters."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and averaged weights (call twice to restore)."""
        for s, p in zip(self.shadow, self.params):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


@dataclasses.dataclass
class EpochResult:
    """One epoch's trained trajectories. On several processes ``rollout``, ``scores`` and
    ``advantages`` hold this rank's rows (``N`` of the ``total_rows`` of the whole batch, starting
    at global row ``row_offset``); ``metrics`` always describe the whole batch."""

    rollout: Rollout
    scores: dict[str, torch.Tensor]   # component → (N,) final rewards of the trained rows
    advantages: torch.Tensor          # (N,)
    metrics: dict[str, Any]
    nonfinite: int = 0                # NaN/inf reward values this epoch (all ranks): its update is skipped
    row_offset: int = 0               # global index of this rank's first row
    total_rows: int | None = None     # rows of the whole batch (None: this process has them all)


class Trainer:
    """Pro-GRPO / GRPO on any :class:`~progrpo_core.denoiser.Denoiser`."""

    def __init__(self, cfg: TrainConfig, model: Denoiser | None = None, reward: Reward | None = None,
                 gold: Reward | None = None, prompts: Sequence[str] | None = None,
                 adapter: LoraAdapter | None = None, log: Callable[[str], None] = print):
        self.cfg = cfg
        B, W = cfg.grpo.prompts_per_epoch, distributed.world_size()
        if B % W:
            raise ValueError(
                f"grpo.prompts_per_epoch={B} is the global batch and must be divisible by the {W} processes "
                f"(WORLD_SIZE); use {(B // W) * W or W} or {(B // W + 1) * W} prompts, or "
                f"{_divisors(B)} processes")
        self.world = distributed.setup(cfg.run.device)
        self.log = log if self.world.is_main else (lambda s: None)
        self.model = model if model is not None else load_model(cfg)
        self.sampler = cfg.sampler.resolved(self.model.family)
        self.schedule = cfg.prune_schedule()
        self.reward = reward if reward is not None else build_reward(
            cfg.reward.name, cfg.reward.path, device=cfg.reward.device, dtype=cfg.reward.dtype)
        if gold is None and cfg.reward.gold:
            gold = build_reward(cfg.reward.gold, device=cfg.reward.device, dtype=cfg.reward.dtype)
        self.gold = gold
        self.prompts = list(prompts) if prompts is not None else load_prompts(cfg.run.prompts, self.model)
        if not self.prompts:
            raise ValueError("the prompt list is empty; give at least one prompt")
        if adapter is not None:  # e.g. the host's own weight adapters, same interface as LoraAdapter
            self.adapter = adapter
        elif cfg.lora.init_from:
            self.adapter = lora_from_file(self.model, cfg.lora.init_from)
        else:
            self.adapter = LoraAdapter(self.model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, seed=cfg.run.seed)
        self.world.broadcast_(self.adapter.parameters())  # every rank starts from rank 0's LoRA
        g = cfg.grpo
        self.optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=g.lr, weight_decay=g.weight_decay)
        self.ema = EMA(self.adapter.parameters(), g.ema_decay) if g.ema else None
        self.compute = Compute()  # whole-run totals over all ranks
        self.epoch = 0            # epochs completed (during an epoch: its 1-based number)
        self.optimizer_steps = 0
        self.skipped_updates = 0  # updates skipped for non-finite rewards, losses or gradients
        self.bad_in_row = 0       # skipped updates since the last good one
        self._rng = torch.Generator().manual_seed(cfg.run.seed * 7 + 3)
        self._rows: list[dict[str, Any]] = []    # metrics rows so far (one per epoch)
        self._rows_json: list[str] = []          # their JSON lines, serialised once
        self._before: dict[str, Any] | None = None  # the evaluation before training
        self._last_checkpoint = -1

    @property
    def metrics_rows(self) -> list[dict[str, Any]]:
        """The metrics rows so far, one per epoch; kept in checkpoints (callers driving their own
        epoch loop, like the ComfyUI node, append theirs here)."""
        return self._rows

    def close(self) -> None:
        """Leave the process group this trainer joined (no-op on one process)."""
        distributed.shutdown(self.world)

    # -- sampling -----------------------------------------------------------------------------
    def epoch_prompts(self, epoch: int) -> tuple[list[str], list[int]]:
        """The ``B`` prompts of an epoch and their seeds (global: epoch·B + b)."""
        B = self.cfg.grpo.prompts_per_epoch
        g = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + epoch)
        idx = torch.randint(0, len(self.prompts), (B,), generator=g).tolist()
        seeds = [self.cfg.run.seed * 1_000_000 + epoch * B + b for b in range(B)]
        return [self.prompts[i] for i in idx], seeds

    def score(self, reward: Reward, latents: torch.Tensor, prompts: Sequence[str], compute: Compute,
              phase: str = "final", check: bool = True) -> dict[str, torch.Tensor]:
        """Decode and score; ``check`` refuses NaN/inf scores (the trainer counts them instead)."""
        with compute.phase(f"{phase}_scoring"), torch.no_grad():
            images = self.model.decode(latents)
            out = reward.evaluate(images, list(prompts))
        if check:
            for k, v in out.items():
                check_scores(v, f"reward {k!r}")
        return out

    def sample_epoch(self, epoch: int, callback=None) -> EpochResult:
        """Sample, score and select one epoch's trajectories; no gradient step.

        This rank samples its share of the prompts; the final rewards are gathered so that the
        advantages and metrics are computed on the whole batch, exactly as on one process."""
        prompts, seeds = self.epoch_prompts(epoch)
        B, w = len(prompts), self.world
        lo, hi = w.shard(B)  # this rank's prompts
        sel_gen = torch.Generator().manual_seed(self.cfg.run.seed * 31 + epoch)
        s = self.sampler
        reward = self.reward
        proxy_nonfinite = 0

        def proxy_score(images, row_prompts):
            nonlocal proxy_nonfinite
            scores = reward.evaluate(images, row_prompts)[reward.total_key]
            bad = ~torch.isfinite(scores)
            if bad.any():  # this epoch's update is skipped; a finite stand-in lets sampling finish
                proxy_nonfinite += int(bad.sum())
                scores = torch.where(bad, torch.zeros_like(scores), scores)
            return scores

        rollout = sample_group(self.model, prompts[lo:hi], seeds[lo:hi], s.steps, self.schedule, s.sampler,
                               s.noise_level, s.cfg, score_fn=proxy_score, callback=callback)
        # (a random selector at checkpoints draws per prompt from its seed: the same on any number of processes)
        comp = rollout.compute
        row_prompts = [rollout.prompts[b] for b in rollout.prompt_index.tolist()]
        local = self.score(reward, rollout.latents[:, -1], row_prompts, comp, check=False)
        comp.final_decodes += rollout.latents.shape[0]
        comp.final_rewards += rollout.latents.shape[0]
        scores = {k: w.gather_rows(v) for k, v in local.items()}  # component → (B·K_finished,) prompt order
        finite = torch.stack([torch.isfinite(v) for v in scores.values()]).all(0)  # (B·K_finished,)
        nonfinite = int(w.sum([proxy_nonfinite])[0]) + int((~finite).sum())
        total = scores[reward.total_key].view(B, -1)  # (B, K_finished)
        if nonfinite:
            return self._poisoned_epoch(rollout, local, scores, prompts, nonfinite, lo, hi)
        adv_finished = grpo.advantages(total, self.cfg.grpo.adv_norm)
        metrics: dict[str, Any] = {
            "reward_finished_mean": float(total.mean()),
            "clustered_finished": grpo.clustered_fraction(adv_finished),
        }
        if self.schedule.final_keep is not None:  # static selection on the true reward (ovf method)
            K = total.shape[1]
            keep = torch.cat([ovf.select(self.schedule.selector, total[b], self.schedule.final_keep, sel_gen)
                              + b * K for b in range(B)])  # global rows, grouped by prompt
            mine = (keep >= lo * K) & (keep < hi * K)
            local_keep = keep[mine] - lo * K
            rollout = select_rows(self.model, rollout, local_keep)
            local = {k: v[local_keep] for k, v in local.items()}
            scores = {k: v[keep] for k, v in scores.items()}
            total = scores[reward.total_key].view(B, -1)
        if self.cfg.grpo.separate_reward_norm and len(reward.components()) > 1:
            weights = dict(reward.components())
            adv = grpo.combined_advantages({k: scores[k].view(B, -1) for k in weights}, weights,
                                           self.cfg.grpo.adv_norm)
        else:
            adv = grpo.advantages(total, self.cfg.grpo.adv_norm)  # (B, K)
        proxies = [(c["step"], c["sigma"], w.gather_rows(c["rewards"]), w.gather_rows(c["kept"]))
                   for c in rollout.checkpoints]  # whole-batch proxy rewards (B, K_prev), kept ids (B, K_next)
        if proxies:
            first = proxies[0][2]  # proxy rewards of the expanded group
            metrics["clustered_expanded"] = grpo.clustered_fraction(grpo.advantages(first, self.cfg.grpo.adv_norm))
        metrics.update({
            "reward_mean": float(total.mean()), "reward_std": float(total.std(unbiased=False)),
            "clustered_trained": grpo.clustered_fraction(adv),
            "components": {k: float(v.mean()) for k, v in scores.items()},
            "proxy": [{"step": step, "sigma": round(sigma, 4), "mean": float(r.mean()),
                       "std": float(r.std(unbiased=False)), "kept": kept.tolist()}
                      for step, sigma, r, kept in proxies],
            "prompts": prompts,
        })
        K = total.shape[1]
        return EpochResult(rollout, local, adv.reshape(-1)[lo * K:hi * K], metrics, 0, lo * K, B * K)

    def _poisoned_epoch(self, rollout: Rollout, local: dict[str, torch.Tensor], scores: dict[str, torch.Tensor],
                        prompts: list[str], nonfinite: int, lo: int, hi: int) -> EpochResult:
        """An epoch with NaN/inf rewards: nothing is selected or trained; metrics say what happened."""
        total = scores[self.reward.total_key]
        ok = torch.isfinite(total)
        metrics = {"reward_mean": float(total[ok].mean()) if ok.any() else None, "reward_std": None,
                   "nonfinite_rewards": nonfinite,
                   "components": {k: (float(v[torch.isfinite(v)].mean()) if torch.isfinite(v).any() else None)
                                  for k, v in scores.items()},
                   "prompts": prompts}
        K = total.numel() // len(prompts)
        n = rollout.latents.shape[0]
        return EpochResult(rollout, local, torch.zeros(n), metrics, nonfinite, lo * K, len(prompts) * K)

    # -- training -----------------------------------------------------------------------------
    def train_steps_for(self, rollout: Rollout, epoch: int) -> list[int]:
        """The stochastic steps (std > 0) trained this epoch: a seeded random fraction of them."""
        stochastic = [j for j in range(rollout.stds.shape[1]) if bool((rollout.stds[:, j] > 0).all())]
        if not stochastic:
            raise ValueError("no stochastic sampling step to train on; use a noise level > 0")
        n = max(1, round(self.cfg.grpo.timestep_fraction * len(stochastic)))
        g = torch.Generator().manual_seed(self.cfg.run.seed * 131 + epoch)
        pick = torch.randperm(len(stochastic), generator=g)[:n].sort().values.tolist()
        return [stochastic[i] for i in pick]

    def _skip_update(self, epoch: int, why: str) -> None:
        """Count a skipped update; stop the run after ``run.max_bad_updates`` of them in a row."""
        self.skipped_updates += 1
        self.bad_in_row += 1
        limit = self.cfg.run.max_bad_updates
        warnings.warn(f"epoch {epoch + 1}: {why}; update skipped ({self.bad_in_row} in a row, "
                      f"{self.skipped_updates} in total)", RuntimeWarning, stacklevel=3)
        if limit and self.bad_in_row >= limit:
            raise TrainingStopped(
                f"stopped at epoch {epoch + 1}: {self.bad_in_row} updates in a row were skipped (the last: {why}); "
                f"run.max_bad_updates={limit}. Nothing was saved from the poisoned epochs: the run folder holds the "
                "last good checkpoint. Check the reward model (dtype, inputs) and lower grpo.lr, then continue "
                f"with `train --resume {self.cfg.run.out}`.")

    def train_on(self, result: EpochResult, epoch: int, max_updates: int | None = None) -> dict[str, Any]:
        """Policy-gradient updates on one epoch's trained trajectories.

        The minibatches are cut from one seeded permutation of the *whole* batch's rows, and each
        rank's loss is weighted by its share of the minibatch, so the gradients summed over ranks
        are the one-process gradient."""
        g, s, w = self.cfg.grpo, self.sampler, self.world
        ro, adv = result.rollout, result.advantages
        if result.nonfinite:
            self._skip_update(epoch, f"{result.nonfinite} reward(s) are NaN or infinite")
            return {"loss": None, "kl": None, "clip_frac": None, "approx_kl": None, "grad_norm": None,
                    "updates": 0, "trained_steps": []}
        n_local = ro.latents.shape[0]
        n_total = result.total_rows if result.total_rows is not None else n_local
        offset = result.row_offset
        steps = self.train_steps_for(ro, epoch)
        perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(self.cfg.run.seed * 977 + epoch))
        chunks = list(perm.split(g.train_batch_size))  # global row ids per minibatch
        mult = 1 if s.cfg == 1.0 else 2
        comp = Compute()
        sums: list[list[float]] = []   # per (minibatch, step): this rank's row-sums of loss, kl, clip_frac, approx_kl
        sizes: list[int] = []          # per (minibatch, step): rows in the whole minibatch
        grad_norms: list[float] = []
        params = self.adapter.parameters()
        self.model.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        updates = 0
        poisoned = False
        for ci, chunk in enumerate(chunks):
            mine = (chunk >= offset) & (chunk < offset + n_local)
            rows = chunk[mine] - offset  # this rank's rows of the minibatch, in minibatch order
            share = len(rows) / len(chunk)
            cond = self.model.select_cond(ro.cond, rows) if len(rows) else None
            for j in steps:
                sizes.append(len(chunk))
                if not len(rows):
                    sums.append([0.0, 0.0, 0.0, 0.0])
                    continue
                with comp.phase("training"):
                    x, prev = ro.latents[rows, j], ro.latents[rows, j + 1]
                    sig, sig_next = ro.sigmas[j], ro.sigmas[j + 1]
                    sig_rows = sig.expand(len(rows)).to(x.device)
                    x0 = self.model.denoise(x, sig_rows, cond, s.cfg)
                    _, mean, std, logp = step_from_x0(self.model.family, s.sampler, x, x0, sig, sig_next,
                                                      s.noise_level, prev_sample=prev)
                    loss, st = grpo.clipped_loss(logp, ro.log_probs[rows, j], adv[rows].to(logp), g.clip_range,
                                                 g.adv_clip)
                    kl = torch.zeros(())
                    if g.kl_beta > 0:
                        with torch.no_grad(), self.adapter.disabled():
                            x0_ref = self.model.denoise(x, sig_rows, cond, s.cfg)
                        mean_ref = step_from_x0(self.model.family, s.sampler, x, x0_ref, sig, sig_next,
                                                s.noise_level, prev_sample=prev)[1]
                        kl = grpo.kl_to_reference(mean, mean_ref, std).mean()
                        loss = loss + g.kl_beta * kl
                        comp.nfe_train_fwd += len(rows) * mult
                    if not torch.isfinite(loss):
                        poisoned = True
                    else:
                        # the minibatch mean over all ranks' rows, split into this rank's share
                        (loss * share / (len(steps) * g.grad_accum)).backward()
                comp.nfe_train_fwd += len(rows) * mult
                comp.nfe_train_bwd += len(rows) * mult
                comp.model_calls += mult
                n = len(rows)
                sums.append([float(loss.detach()) * n, float(kl.detach()) * n, st["clip_frac"] * n, st["approx_kl"] * n])
            if (ci + 1) % g.grad_accum == 0 or ci == len(chunks) - 1:
                bad_ranks = w.sync_grads(params, 1.0 if poisoned else 0.0)
                with comp.phase("training"):
                    gn = torch.nn.utils.clip_grad_norm_(params, g.grad_clip if g.grad_clip > 0 else float("inf"))
                    ok = bad_ranks == 0 and bool(torch.isfinite(gn))
                    if ok:
                        self.optimizer.step()
                        if self.ema is not None:
                            self.ema.update()
                        self.optimizer_steps += 1
                        self.bad_in_row = 0
                        updates += 1
                        grad_norms.append(float(gn))
                    self.optimizer.zero_grad(set_to_none=True)
                    poisoned = False
                if not ok:
                    self.model.net.eval()
                    self._skip_update(epoch, "the loss or gradient is NaN or infinite")  # may stop the run
                    self.model.net.train()
                if max_updates is not None and updates >= max_updates:
                    break
        self.model.net.eval()
        self.compute.add(self._reduce_compute(comp))
        totals = w.sum([v for row in sums for v in row])  # whole-batch row-sums, (minibatch × step) × 4
        per_step = [[totals[4 * i + k] / sizes[i] for k in range(4)] for i in range(len(sizes))]
        out: dict[str, Any] = {name: (sum(r[k] for r in per_step) / len(per_step) if per_step else 0.0)
                               for k, name in enumerate(("loss", "kl", "clip_frac", "approx_kl"))}
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else 0.0
        out["updates"] = updates
        out["trained_steps"] = steps
        return out

    def _reduce_compute(self, c: Compute) -> Compute:
        """Counters summed over ranks; wall time per phase of the slowest rank."""
        w = self.world
        if not w.enabled:
            return c
        names = [f.name for f in dataclasses.fields(Compute) if f.name != "wall"]
        totals = w.sum([getattr(c, n) for n in names])
        walls = w.all_gather_object(dict(c.wall))
        out = Compute(**{n: int(round(v)) for n, v in zip(names, totals)})
        out.wall = {k: max(wd.get(k, 0.0) for wd in walls) for k in sorted(set().union(*walls))}
        return out

    # -- evaluation ---------------------------------------------------------------------------
    def eval_prompts(self) -> tuple[list[str], list[int]]:
        n = self.cfg.run.eval_seeds
        prompts = [p for p in self.prompts for _ in range(n)]
        seeds = [EVAL_SEED_BASE + i for i in range(len(prompts))]
        return prompts, seeds

    @torch.no_grad()
    def evaluate(self, use_ema: bool = True) -> dict[str, Any]:
        """Deterministic sampling on fixed prompts and seeds; mean reward (and the gold reward).
        The images are shared out over the ranks; NaN/inf scores are left out of the means, with
        a warning."""
        swap = use_ema and self.ema is not None
        if swap:
            self.ema.swap()
        try:
            prompts, seeds = self.eval_prompts()
            lo, hi = self.world.shard(len(prompts))
            comp = Compute()
            latents, scores, gold = None, {}, None
            if hi > lo:
                latents = self.sample_deterministic(prompts[lo:hi], seeds[lo:hi])
                scores = self.score(self.reward, latents, prompts[lo:hi], comp, phase="eval", check=False)
                if self.gold is not None:
                    gold = self.score(self.gold, latents, prompts[lo:hi], comp, phase="eval",
                                      check=False)[self.gold.total_key]
            if self.world.enabled:
                device = next(self.model.net.parameters()).device
                parts = self.world.all_gather_object(
                    (None if latents is None else latents.cpu(), scores, gold))
                parts = [p for p in parts if p[0] is not None]
                latents = torch.cat([p[0] for p in parts]).to(device)
                scores = {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}
                gold = torch.cat([p[2] for p in parts]) if self.gold is not None else None
            out = {"reward": _finite_mean(scores[self.reward.total_key], "eval reward"),
                   "components": {k: _finite_mean(v, f"eval reward {k!r}") for k, v in scores.items()},
                   "latents": latents}
            if gold is not None:
                out["gold"] = _finite_mean(gold, "eval gold reward")
            return out
        finally:
            if swap:
                self.ema.swap()

    def sample_deterministic(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        return sample_deterministic(self.model, prompts, seeds, self.sampler.eval_steps, self.sampler.cfg)

    # -- saving and resuming ------------------------------------------------------------------
    def lora_metadata(self) -> dict[str, Any]:
        c = self.cfg
        return {"method": c.grpo.method, "schedule": dataclasses.asdict(self.schedule),
                "sampler": dataclasses.asdict(self.sampler), "steps": self.optimizer_steps, "epochs": self.epoch,
                "reward": c.reward.name, "base_model": c.model.checkpoint or c.model.name, "seed": c.run.seed}

    def _check_finite(self, tensors: dict[str, Sequence[torch.Tensor]], what: str) -> None:
        bad = [name for name, ts in tensors.items() if any(not bool(torch.isfinite(t).all()) for t in ts)]
        if bad:
            raise TrainingStopped(
                f"the {' and '.join(bad)} hold NaN or infinite values at epoch {self.epoch}; stopping without "
                f"writing {what}, so the files in {self.cfg.run.out} keep the last good state. Lower grpo.lr "
                "(or enable grpo.grad_clip) and resume from the last checkpoint.")

    def save_lora(self, path: str | Path) -> Path:
        """Write the LoRA (the EMA weights when EMA is on) as a ComfyUI LoRA file; a non-finite
        LoRA is refused (:class:`TrainingStopped`) rather than written over a good file."""
        if self.ema is not None:
            self.ema.swap()
        try:
            self._check_finite({"LoRA weights": self.adapter.parameters()}, f"the LoRA {path}")
            return self.adapter.save(path, self.lora_metadata())
        finally:
            if self.ema is not None:
                self.ema.swap()

    def _named_lora(self) -> list[tuple[str, torch.nn.Parameter]]:
        if hasattr(self.adapter, "named_parameters"):
            return list(self.adapter.named_parameters())
        return [(str(i), p) for i, p in enumerate(self.adapter.parameters())]

    def state_dict(self, wall_s: float = 0.0) -> dict[str, Any]:
        """Everything a resumed run needs, as plain tensors, numbers, strings, lists and dicts
        (readable with ``torch.load(weights_only=True)``), copied to the CPU. Describes the state
        after ``self.epoch`` completed epochs."""
        return {
            "epoch": self.epoch, "optimizer_steps": self.optimizer_steps,
            "skipped_updates": self.skipped_updates, "bad_in_row": self.bad_in_row,
            "lora": {n: p.detach().cpu().clone() for n, p in self._named_lora()},
            "optimizer": ckpt.to_cpu(self.optimizer.state_dict()),
            "ema": [s.detach().cpu().clone() for s in self.ema.shadow] if self.ema is not None else None,
            "rng": ckpt.rng_state({"trainer": self._rng}),
            "compute": {f.name: ckpt.to_cpu(getattr(self.compute, f.name)) for f in dataclasses.fields(Compute)},
            "metrics": self._metrics_text(),
            "before": {k: v for k, v in (self._before or {}).items() if k != "latents"},
            "config": self.cfg.to_dict(),
            "world_size": self.world.world_size,
            "wall_s": float(wall_s),
        }

    def _metrics_text(self) -> str:
        """The metrics rows as JSON lines (rows are never changed once appended)."""
        del self._rows_json[len(self._rows):]
        self._rows_json.extend(json.dumps(_jsonable(r)) + "\n" for r in self._rows[len(self._rows_json):])
        return "".join(self._rows_json)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the same settings are required, see ``RESUMABLE_CHANGES``)."""
        self._check_resume_config(state["config"])
        named = self._named_lora()
        saved = state["lora"]
        if sorted(saved) != sorted(n for n, _ in named):
            raise ckpt.CheckpointError(
                f"the checkpoint's LoRA has {len(saved)} tensors {sorted(saved)[:2]}…, this model's adapter has "
                f"{len(named)} {sorted(n for n, _ in named)[:2]}…; it belongs to another model or LoRA shape")
        with torch.no_grad():
            for n, p in named:
                if saved[n].shape != p.shape:
                    raise ckpt.CheckpointError(f"checkpoint tensor {n} has shape {tuple(saved[n].shape)}, "
                                               f"the adapter's is {tuple(p.shape)}")
                p.copy_(saved[n].to(p))
            if self.ema is not None:
                if state["ema"] is None or len(state["ema"]) != len(self.ema.shadow):
                    raise ckpt.CheckpointError("the checkpoint has no EMA weights but grpo.ema is on")
                for s_, v in zip(self.ema.shadow, state["ema"]):
                    s_.copy_(v.to(s_))
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.skipped_updates = int(state["skipped_updates"])
        self.bad_in_row = int(state["bad_in_row"])
        comp = dict(state["compute"])
        self.compute = Compute(**{k: (int(v) if k != "wall" else {str(a): float(b) for a, b in v.items()})
                                  for k, v in comp.items()})
        ckpt.set_rng_state(state["rng"], {"trainer": self._rng})
        self._rows = [json.loads(line) for line in state["metrics"].splitlines() if line.strip()]
        self._rows_json = []
        self._before = dict(state["before"]) or None
        self._last_checkpoint = self.epoch

    def _check_resume_config(self, saved: dict[str, dict[str, Any]]) -> None:
        now = self.cfg.to_dict()
        diffs = []
        for section in sorted(set(saved) | set(now)):
            a, b = saved.get(section, {}), now.get(section, {})
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES.get(section, set()):
                    diffs.append(f"{section}.{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now")
        if diffs:
            allowed = ", ".join(f"{s}.{k}" for s, ks in RESUMABLE_CHANGES.items() for k in sorted(ks))
            raise ckpt.CheckpointError(
                "cannot resume: settings that change the training differ from the checkpoint's:\n  "
                + "\n  ".join(diffs) + f"\nA resumed run may only change {allowed}. To train on with other "
                "settings, start a new run from the LoRA with --lora.init_from.")

    def _state_tensors(self, state: dict[str, Any] | None = None) -> dict[str, list[torch.Tensor]]:
        """The weights and optimizer moments of ``state`` (default: the live ones), by name."""
        if state is None:
            optim = self.optimizer.state_dict()
            lora = self.adapter.parameters()
            ema = self.ema.shadow if self.ema is not None else []
        else:
            optim, lora, ema = state["optimizer"], list(state["lora"].values()), state["ema"] or []
        moments = [v for st in optim["state"].values() for v in st.values() if isinstance(v, torch.Tensor)]
        return {"LoRA weights": list(lora), "EMA weights": list(ema), "optimizer state": moments}

    def check_finite_state(self) -> None:
        """Raise :class:`TrainingStopped` if the LoRA, its EMA or the optimizer state holds NaN or
        infinity (every rank checks its own copy, so all stop together)."""
        self._check_finite(self._state_tensors(), "anything more")

    def save_checkpoint(self, state: dict[str, Any] | None = None, wall_s: float = 0.0) -> Path | None:
        """Write a checkpoint of ``state`` (default: now) — on rank 0; the others return None.
        A state with non-finite weights raises :class:`TrainingStopped` and writes nothing."""
        self._check_finite(self._state_tensors(state), "the checkpoint")
        if not self.world.is_main:
            return None
        state = state if state is not None else self.state_dict(wall_s)
        path = ckpt.save_checkpoint(state, self.cfg.run.out, self.cfg.run.keep_checkpoints)
        self._last_checkpoint = int(state["epoch"])
        return path

    def _load_resume_state(self) -> dict[str, Any]:
        """Rank 0 reads the newest usable checkpoint and shares it with the other ranks."""
        out = Path(self.cfg.run.out)
        payload: Any = None
        error: Exception | None = None
        if self.world.is_main:
            try:
                path, state = ckpt.load_latest(out, warn=lambda m: warnings.warn(m, RuntimeWarning, stacklevel=2))
                for epoch, newer in ckpt.list_checkpoints(out):
                    if epoch > state["epoch"]:  # unusable newer files must not outlive the resumed run's own
                        newer.rename(newer.with_name(newer.name + ".unusable"))
                payload = (str(path), state, None)
            except ckpt.CheckpointError as e:
                error, payload = e, (None, None, str(e))
        payload = self.world.broadcast_object(payload)
        if payload[2] is not None:
            raise error if error is not None else ckpt.CheckpointError(payload[2])
        self.log(f"resuming from {payload[0]}")
        return payload[1]

    def _space_needed(self) -> tuple[int, str]:
        """An estimate of the bytes the run will write, and its breakdown."""
        c = self.cfg
        n_params = sum(p.numel() for p in self.adapter.parameters())
        lora = 4 * n_params + 65_536  # float32 + header
        sched = self.schedule
        row = 2_048 + 16 * c.grpo.prompts_per_epoch * (sched.group_size + sum(sched.keep))
        metrics = row * c.run.epochs
        state_copies = 2 + (1 if self.ema is not None else 0)  # Adam moments (+ EMA)
        one_ckpt = lora * (1 + state_copies) + metrics + 262_144
        n_ckpt = c.run.keep_checkpoints + 1  # the newest is written before the oldest is deleted
        with torch.no_grad():
            device = next(self.model.net.parameters()).device
            image = self.model.decode(torch.zeros(1, *self.model.latent_shape, device=device))
        grids = 2 * len(self.eval_prompts()[0]) * image[0].numel()  # before/after grids, raw bytes as a bound
        parts = {"LoRA": 2 * lora, "checkpoints": n_ckpt * one_ckpt, "metrics": metrics,
                 "images and plots": grids + 1_000_000}
        total = int(1.1 * sum(parts.values())) + 1_000_000
        return total, ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in parts.items())

    def check_run_folder(self) -> None:
        """Rank 0 checks the run folder before anything is trained; all ranks fail together."""
        out = Path(self.cfg.run.out)
        error: Exception | None = None
        if self.world.is_main:
            try:
                if self.cfg.run.check_disk:
                    need, breakdown = self._space_needed()
                    ckpt.check_run_folder(out, need, breakdown)
                else:
                    out.mkdir(parents=True, exist_ok=True)
            except (ckpt.RunFolderError, OSError) as e:
                error = e if isinstance(e, ckpt.RunFolderError) else ckpt.RunFolderError(
                    f"cannot use the run folder {out}: {e}")
        message = self.world.broadcast_object(None if error is None else str(error))
        if message is not None:
            raise error if error is not None else ckpt.RunFolderError(message)

    # -- the run ------------------------------------------------------------------------------
    def run(self, progress: bool = True, resume: bool = False) -> dict[str, Any]:
        """Train for ``run.epochs`` (or until ``run.max_steps`` optimizer steps); write the run folder.

        ``resume=True`` continues from the newest checkpoint in ``run.out``. Any exception
        escaping the loop — Ctrl-C, a host's interrupt, a crash — first saves a checkpoint of the
        last completed epoch (rank 0), unless the run stopped itself for a poisoned state."""
        from tqdm.auto import tqdm

        from . import plots

        c, w = self.cfg, self.world
        main = w.is_main
        out = Path(c.run.out)
        state = self._load_resume_state() if resume else None
        self.check_run_folder()
        metrics_path = out / "metrics.jsonl"
        t_start = time.perf_counter()
        n_per_prompt = c.run.eval_seeds
        if state is not None:
            self.load_state_dict(state)
            t_start -= state["wall_s"]
            if main:  # exactly the rows up to the checkpoint; later ones are recomputed
                write_text(metrics_path, state["metrics"])
            self.log(f"resumed at epoch {self.epoch} ({self.optimizer_steps} optimizer steps)")
        if main:
            write_text(out / "config.toml", to_toml(c))
        if state is None:
            if main:
                write_text(metrics_path, "")
            before = self.evaluate()
            self._before = {k: v for k, v in before.items() if k != "latents"}
            if main:
                plots.save_grid(self.model.decode(before["latents"]), n_per_prompt, out / "samples_before.png")
            self.log(f"eval reward before: {before['reward']:.4f}"
                     + (f" (gold {before['gold']:.4f})" if "gold" in before else ""))
        bar = tqdm(total=c.run.epochs, initial=self.epoch, desc=f"{c.grpo.method}", disable=not progress or not main,
                   unit="epoch")
        boundary: dict[str, Any] | None = None  # the state an interruption saves: the last completed epoch

        def elapsed() -> float:
            return time.perf_counter() - t_start

        try:
            for epoch in range(self.epoch, c.run.epochs):
                if c.run.max_steps is not None and self.optimizer_steps >= c.run.max_steps:
                    break
                boundary = self.state_dict(elapsed()) if main else None
                self.epoch = epoch + 1
                t0 = time.perf_counter()
                res = self.sample_epoch(epoch)
                self.compute.add(self._reduce_compute(res.rollout.compute))
                remaining = None if c.run.max_steps is None else c.run.max_steps - self.optimizer_steps
                tstats = self.train_on(res, epoch, max_updates=remaining)
                self.check_finite_state()  # stop before a poisoned state is logged or saved
                row = {"epoch": self.epoch, "optimizer_step": self.optimizer_steps, **res.metrics,
                       "loss": tstats["loss"], "kl": tstats["kl"], "clip_frac": tstats["clip_frac"],
                       "approx_kl": tstats["approx_kl"], "grad_norm": tstats["grad_norm"],
                       "trained_steps": tstats["trained_steps"], "skipped_updates": self.skipped_updates,
                       "bad_updates_in_row": self.bad_in_row, "nonfinite_rewards": res.nonfinite,
                       "nfe": self.compute.nfe_sample, "nfe_train_fwd": self.compute.nfe_train_fwd,
                       "nfe_train_bwd": self.compute.nfe_train_bwd,
                       "decodes": self.compute.proxy_decodes + self.compute.final_decodes,
                       "reward_calls": self.compute.proxy_rewards + self.compute.final_rewards,
                       "epoch_wall_s": round(time.perf_counter() - t0, 4),
                       "wall_s": round(elapsed(), 3)}
                last = epoch == c.run.epochs - 1 or (c.run.max_steps is not None
                                                     and self.optimizer_steps >= c.run.max_steps)
                if c.run.eval_every and self.epoch % c.run.eval_every == 0 and not last:
                    ev = self.evaluate()
                    row["eval_reward"] = ev["reward"]
                    if "gold" in ev:
                        row["eval_gold"] = ev["gold"]
                row = _jsonable(row)
                self._rows.append(row)
                if main:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                        f.flush()
                bar.set_postfix(reward=f"{row['reward_mean'] if row['reward_mean'] is not None else float('nan'):.3f}",
                                steps=self.optimizer_steps)
                bar.update(1)
                if main and c.run.save_every and self.epoch % c.run.save_every == 0:
                    self.save_lora(out / "lora.safetensors")
                if c.run.checkpoint_every and self.epoch % c.run.checkpoint_every == 0:
                    self.save_checkpoint(wall_s=elapsed())
                if last:
                    break
            boundary = self.state_dict(elapsed()) if main else None
            if c.run.checkpoint_every and self._last_checkpoint != self.epoch:
                self.save_checkpoint(boundary)
            after = self.evaluate()
        except TrainingStopped:
            raise  # never save a poisoned state; the last checkpoint stays as it is
        except BaseException:
            if main and boundary is not None:
                self._save_on_interrupt(boundary)
            raise
        finally:
            bar.close()
        lora_path = out / "lora.safetensors"
        if main:
            self.save_lora(lora_path)
            plots.save_grid(self.model.decode(after["latents"]), n_per_prompt, out / "samples_after.png")
            eval_points = [(0, self._before["reward"])] + [(r["epoch"], r["eval_reward"]) for r in self._rows
                                                           if r.get("eval_reward") is not None]
            eval_points.append((self.epoch, after["reward"]))
            plots.reward_curve([r["epoch"] for r in self._rows], [_nan(r.get("reward_mean")) for r in self._rows],
                               eval_points, out / "reward_curve.png",
                               title=f"{c.grpo.method} on {c.model.name}: {c.reward.name}",
                               loss=[_nan(r.get("loss")) for r in self._rows])
        wall = elapsed()
        summary = {
            "method": c.grpo.method, "model": c.model.checkpoint or c.model.name, "reward": c.reward.name,
            "eval_reward_before": self._before["reward"], "eval_reward_after": after["reward"],
            "epochs": self.epoch, "optimizer_steps": self.optimizer_steps, "skipped_updates": self.skipped_updates,
            "nfe_total": self.compute.nfe_sample + self.compute.nfe_train_fwd,
            "compute": self.compute.as_dict(), "compute_units": self.compute.units(),
            "wall_s": round(wall, 2), "lora": str(lora_path), "seed": c.run.seed,
            "schedule": dataclasses.asdict(self.schedule), "world_size": w.world_size,
        }
        if "gold" in after:
            summary["gold"] = c.reward.gold
            summary["eval_gold_before"], summary["eval_gold_after"] = self._before.get("gold"), after["gold"]
        summary = _jsonable(summary)
        if main:
            write_json(out / "summary.json", summary)
        self.log(f"eval reward after: {after['reward']:.4f} ({self.optimizer_steps} optimizer steps, "
                 f"{wall:.0f}s); run folder {out}")
        return summary

    def _save_on_interrupt(self, state: dict[str, Any]) -> None:
        """Save the last completed epoch on the way out; never mask the exception that is leaving."""
        try:
            path = self.save_checkpoint(state)
        except BaseException as e:  # noqa: BLE001 - a second Ctrl-C or a full disk must not hide the first
            warnings.warn(f"could not save a checkpoint while stopping: {e!r}", RuntimeWarning, stacklevel=2)
            return
        self.log(f"stopped: saved {path} (epoch {state['epoch']}); continue with "
                 f"`python -m progrpo_core train --resume {self.cfg.run.out}`")


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _finite_mean(t: torch.Tensor, what: str) -> float:
    ok = torch.isfinite(t)
    if not bool(ok.all()):
        warnings.warn(f"{what}: {int((~ok).sum())} of {t.numel()} scores are NaN or infinite; left out of the mean",
                      RuntimeWarning, stacklevel=3)
    return float(t[ok].mean()) if bool(ok.any()) else float("nan")


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _jsonable(obj: Any) -> Any:
    """NaN and infinities become ``null`` so metrics files stay valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
