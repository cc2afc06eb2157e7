"""GRPO training of a LoRA with the expand-and-prune sampler: the one training loop.

One epoch: pick ``B`` prompts; sample ``G_max`` trajectories each with the current policy,
pruning at the schedule's checkpoints (``pro-grpo``), or none (``grpo``), optionally selecting on
the final reward (``ovf``); score the finished images; normalise advantages over each prompt's
trained trajectories; then take the per-step clipped policy-gradient updates on their stored
steps (docs/METHOD.md).

:meth:`Trainer.build` is how every front end — the command line, the ComfyUI trainer node, the
bench — makes a trainer: it loads what the config names (or takes the front end's own model,
reward and adapter), settles every ``auto`` (:func:`progrpo_core.spec.resolve`), plans the
micro-batches and hands the frozen :class:`~progrpo_core.spec.RunSpec` to the constructor, which
only wires. :meth:`Trainer.epochs` is the loop they all drive. It owns, once: step caps, compute
totals (reduced over ``torchrun`` processes), skipping updates whose reward, loss or gradient is
not finite, refusing to go on with (or save) non-finite weights, periodic evaluation, metrics rows,
LoRA saves, checkpoint rotation, and a checkpoint of the last completed epoch when anything stops
it early.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator, Sequence

import torch

from .. import distributed
from ..compute import wait_for
from ..config import TrainConfig
from ..denoiser import Denoiser
from ..devices import resolve_device
from ..lora import LoraWeights
from ..models import load_model, load_prompts
from ..planner import Plan, Target
from ..rewards import Reward
from ..spec import RunSpec, resolve
from . import evaluation, nft, rollouts, state, update
from .averages import ema_applied
from .guards import Guards, check_collapse, saturated
from .learner import Learner
from .parts import RunParts, assemble
from .planning import plan_for, planned
from .records import EpochRecord, UpdateStats
from .rollouts import RolloutBatch
from .run_files import RunFiles
from .run_folder import RunFolder, disk_full
from .state import RunState, TrainingStopped


class Trainer(RunFiles):
    """Pro-GRPO / GRPO on any :class:`~progrpo_core.denoiser.Denoiser`, as ``spec`` says."""

    def __init__(self, spec: RunSpec, parts: RunParts, world: distributed.World, log: Callable[[str], None] = print,
                 words: state.Words = state.CLI_WORDS):
        self.spec, self.parts, self.world = spec, parts, world
        self.words = words  # how messages name settings and resuming (the node passes its widgets')
        self.log = log if world.is_main else (lambda s: None)
        self.learner = Learner(parts.adapter, spec)
        self.guards = Guards(spec.lr, words, spec.reward.name)
        self.state = RunState()
        self._rng = torch.Generator().manual_seed(spec.run.seed * 7 + 3)
        self._boundary: dict[str, Any] | None = None  # snapshot of the last completed epoch (rank 0)
        self._folder: RunFolder | None = None  # the run folder this trainer opened (and locked)
        self._t_start = time.perf_counter()

    @classmethod
    def build(cls, cfg: TrainConfig, *, model: Denoiser | None = None, reward: Reward | None = None,
              gold: Reward | None = None, prompts: Sequence[str] | None = None, adapter: LoraWeights | None = None,
              log: Callable[[str], None] = print, words: state.Words = state.CLI_WORDS, plan: bool = True,
              refuse: bool = True) -> "Trainer":
        """A trainer for ``cfg``: the model, reward, gold reward, prompts and adapter are the given
        ones or those ``cfg`` names; every auto is settled and, with ``plan``, the micro-batches left
        on auto are planned (``refuse``: a run that cannot fit raises; else ``trainer.plan.fits`` says)."""
        B, W = cfg.grpo.prompts_per_epoch, distributed.world_size()
        if B % W:
            raise ValueError(
                f"grpo.prompts_per_epoch={B} is the global batch and must be divisible by the {W} processes "
                f"(WORLD_SIZE); use {(B // W) * W or W} or {(B // W + 1) * W} prompts, or "
                f"{', '.join(str(d) for d in range(1, B + 1) if B % d == 0)} processes")
        device = _model_device(model) or resolve_device(cfg.run.device)
        world = distributed.setup(str(device))
        try:
            model = model if model is not None else load_model(cfg, device)
            _check_model_device(model, device)
            prompts = list(prompts) if prompts is not None else load_prompts(cfg.run.prompts, model)
            spec = resolve(cfg, model, device, prompts)
            parts = assemble(spec, model, prompts, reward, gold, adapter)
            world.broadcast_(parts.adapter.parameters())  # every rank starts from rank 0's LoRA
            if plan and not spec.micro.complete:
                spec = planned(spec, parts, world, refuse)
                if world.is_main:
                    log(spec.plan.summary())
            return cls(spec, parts.offloaded(spec), world, log, words)
        except BaseException:
            distributed.shutdown(world)
            raise

    # -- what the trainer works with, read through the spec and the parts --------------------------
    cfg = property(lambda self: self.spec.config)
    device = property(lambda self: self.spec.device)
    sampler = property(lambda self: self.spec.sampler)
    schedule = property(lambda self: self.spec.schedule)
    precision = property(lambda self: self.spec.precision)
    plan: Plan | None = property(lambda self: self.spec.plan)
    micro = property(lambda self: self.spec.micro.as_dict())
    model = property(lambda self: self.parts.model)
    reward = property(lambda self: self.parts.reward)
    gold = property(lambda self: self.parts.gold)
    prompts = property(lambda self: self.parts.prompts)
    adapter = property(lambda self: self.parts.adapter)
    optimizer = property(lambda self: self.learner.optimizer)
    ema = property(lambda self: self.learner.ema)
    scaler = property(lambda self: self.learner.scaler)
    # the run's counters
    epoch = property(lambda self: self.state.epoch)
    optimizer_steps = property(lambda self: self.state.optimizer_steps)
    skipped_updates = property(lambda self: self.state.skipped_updates)
    compute = property(lambda self: self.state.compute)
    metrics_rows = property(lambda self: self.state.rows, doc="The metrics rows so far, one per epoch.")

    @property
    def out(self) -> str | None:
        """The run folder: the one :meth:`open` took, else ``run.out``."""
        return str(self._folder.out) if self._folder is not None else self.cfg.run.out

    def ensure_plan(self) -> Plan | None:
        """The plan the trainer was built with (None when every micro-batch was given)."""
        return self.plan

    def make_plan(self, target: Target | None = None, costs=None) -> Plan:
        """This run's plan on ``target`` (default: its device and memory budget)."""
        return plan_for(self.spec, self.parts, self.world, target, costs)

    def adopt_schedule(self, schedule, cost=None) -> None:
        """Sample the coming epochs with ``schedule`` (a funnel chosen while training, as the bench's
        probed "auto" schedules are; validated for the run's steps) and charge ``cost`` (the
        :class:`~progrpo_core.compute.Compute` of choosing it) to the run."""
        schedule.validate(self.sampler.steps)
        self.spec = dataclasses.replace(self.spec, schedule=schedule)
        if cost is not None:
            self.state.compute.add(cost)

    def rehome(self) -> None:
        """Keep the optimizer state and the EMA beside the LoRA (a host may have moved the model)."""
        self.learner.rehome()

    def close(self) -> None:
        """Undo gradient checkpointing, release the run folder and leave the process group this
        trainer joined."""
        self.parts.close()
        if self._folder is not None:
            self._folder.unlock()
        distributed.shutdown(self.world)

    def elapsed(self) -> float:
        """Seconds this run has trained (a resumed run counts its earlier time too)."""
        return time.perf_counter() - self._t_start

    def restart_clock(self) -> None:
        self._t_start = time.perf_counter()

    # -- one epoch's parts --------------------------------------------------------------------------
    def epoch_prompts(self, epoch: int) -> tuple[list[str], list[int]]:
        return rollouts.epoch_prompts(self.prompts, self.cfg.grpo.prompts_per_epoch, self.cfg.run.seed, epoch)

    def sample_epoch(self, epoch: int, callback: Callable[[dict], None] | None = None) -> RolloutBatch:
        """Sample, score and select one epoch's trajectories; no gradient step."""
        prompts, seeds = self.epoch_prompts(epoch)
        schedule, sde_steps = self.schedule.for_epoch(self.sampler.steps, epoch, self.cfg.run.seed, seeds)
        with self.learner.sampling_weights():
            return rollouts.collect(self.model, self.reward, prompts, seeds, schedule, self.sampler, self.spec.grpo,
                                    self.world, self.cfg.run.seed * 31 + epoch, callback, self.micro, sde_steps,
                                    reference=self.adapter.disabled)

    def train_on(self, batch: RolloutBatch, epoch: int, max_updates: int | None = None) -> UpdateStats:
        """The policy update on one epoch's trajectories (skipped, and counted, when its rewards
        were not finite)."""
        if batch.nonfinite:
            self._skip_update(epoch, f"{batch.nonfinite} reward(s) are NaN or infinite")
            return UpdateStats()
        seed = self.cfg.run.seed
        self.learner.rehome()  # sampling may have loaded (moved) the model and its LoRA

        def on_update() -> None:
            self.state.optimizer_steps += 1
            self.state.bad_in_row = 0

        hooks = update.Hooks(on_update, lambda why: self._skip_update(epoch, why), max_updates)
        if self.spec.objective == "nft":
            stats, comp = nft.nft_update(self.model, self.learner, batch, self.spec, self.world, seed * 977 + epoch,
                                         hooks)
            self.learner.old.follow(self.optimizer_steps)
        else:
            mask = update.train_mask(batch.rollout, self.spec.grpo.timestep_fraction, seed * 131 + epoch,
                                     self.spec.grpo.train_step_order)
            stats, comp = update.policy_update(self.model, self.learner, batch, mask, self.spec, self.world,
                                               seed * 977 + epoch, hooks)
        self.state.compute.add(self.world.reduce_compute(comp))
        return stats

    def _skip_update(self, epoch: int, why: str) -> None:
        self.state.count_skip(epoch, why, self.cfg.run.max_bad_updates, self.out, self.words)

    # -- evaluation -------------------------------------------------------------------------------
    @property
    def eval_seeds(self) -> int:
        """Seeds per evaluation prompt: ``run.eval_seeds``, default 8 for the built-in models, 2 for real ones."""
        return self.spec.eval_seeds_per_prompt

    def eval_prompts(self) -> tuple[list[str], list[int]]:
        """The evaluation set: ``run.eval_prompts`` prompts at most, :attr:`eval_seeds` seeds each."""
        return list(self.spec.eval_prompts), list(self.spec.eval_seeds)

    def evaluate(self, use_ema: bool = True) -> dict[str, Any]:
        """Deterministic sampling on fixed prompts and seeds (with the EMA weights when kept)."""
        with ema_applied(self.ema if use_ema else None):
            prompts, seeds = self.eval_prompts()
            return evaluation.evaluate(self.model, self.reward, self.gold, prompts, seeds, self.sampler.eval_steps,
                                       self.sampler.cfg, self.world, self.micro)

    # -- the loop -----------------------------------------------------------------------------------
    def epochs(self, folder: RunFolder | None = None,
               on_sample_step: Callable[[dict], None] | None = None) -> Iterator[EpochRecord]:
        """Train from the current epoch to ``run.epochs`` (or ``run.max_steps`` optimizer steps),
        yielding an :class:`EpochRecord` after each epoch.

        With a ``folder``, each record is appended to its ``metrics.jsonl``, the LoRA is saved every
        ``run.save_every`` epochs and a checkpoint written every ``run.checkpoint_every`` epochs and
        at the end; if anything stops the loop early — Ctrl-C, a host's interrupt, a crash, the
        caller leaving the loop — the last completed epoch is saved as a checkpoint, unless the run
        stopped itself for a poisoned state. ``on_sample_step`` is called after each model call
        while sampling (progress bars, previews)."""
        c, main = self.cfg, self.world.is_main
        self.guards.start(self.learner.norm())
        self._boundary = self.state_dict(self.elapsed()) if main and folder is not None else None
        try:
            for epoch in range(self.epoch, c.run.epochs):
                if self._steps_done():
                    break
                record = self._one_epoch(epoch, on_sample_step)
                last = epoch == c.run.epochs - 1 or self._steps_done()
                if c.run.eval_every and self.epoch % c.run.eval_every == 0 and not last:
                    ev = self.evaluate()
                    record.eval_reward, record.eval_gold = ev["reward"], ev.get("gold")
                row = record.to_row()
                if folder is not None:  # (the bench, which keeps no folder, measures collapses instead)
                    check_collapse(self.state.rows + [row], self.state.before, self.spec.lr, str(folder.out), self.words)
                self.state.rows.append(row)
                self._on_saturation()
                if folder is not None:
                    self._write_epoch(folder, row)
                yield record
                if last:
                    break
            if folder is not None and c.run.checkpoint_every and self.state.last_checkpoint != self.epoch:
                self.save_checkpoint(folder, self._boundary)
        except TrainingStopped:
            raise  # never save a poisoned state; the last checkpoint stays as it is
        except BaseException as e:
            if folder is not None:
                self.save_on_interrupt(folder)
                disk_full(e, folder, self.words)
            raise

    def _on_saturation(self) -> None:
        """``grpo.saturated_lr``: lower the learning rate once the policy has saturated the reward."""
        factor = self.spec.grpo.saturated_lr
        groups = self.learner.optimizer.param_groups
        if factor == 1 or groups[0]["lr"] != self.spec.lr or saturated(self.state.rows) is None:
            return
        for g in groups:
            g["lr"] = self.spec.lr * factor

    def _steps_done(self) -> bool:
        return self.cfg.run.max_steps is not None and self.optimizer_steps >= self.cfg.run.max_steps

    def _one_epoch(self, epoch: int, on_sample_step: Callable[[dict], None] | None) -> EpochRecord:
        c = self.cfg
        self.state.epoch = epoch + 1
        wait_for(self.device)  # the clock times this epoch's GPU work, not what was queued before
        t0, c0 = time.perf_counter(), time.process_time()
        batch = self.sample_epoch(epoch, on_sample_step)
        self.state.compute.add(self.world.reduce_compute(batch.rollout.compute))
        c1 = time.process_time()
        remaining = None if c.run.max_steps is None else c.run.max_steps - self.optimizer_steps
        stats = self.train_on(batch, epoch, max_updates=remaining)
        cpu = {"sampling": c1 - c0, "training": time.process_time() - c1}
        self.check_finite_state()  # stop before a poisoned state is logged or saved
        self.guards.divergence(self.learner.norm(), self.state)
        self.guards.flat(batch, epoch)
        comp = self.state.compute
        wait_for(self.device)
        return EpochRecord(
            epoch=self.epoch, optimizer_step=self.optimizer_steps, sample=batch.stats, update=stats,
            skipped_updates=self.state.skipped_updates, bad_updates_in_row=self.state.bad_in_row,
            compute={"nfe": comp.nfe_sample, "nfe_train_fwd": comp.nfe_train_fwd, "nfe_train_bwd": comp.nfe_train_bwd,
                     "decodes": comp.proxy_decodes + comp.final_decodes,
                     "reward_calls": comp.proxy_rewards + comp.final_rewards},
            epoch_wall_s=round(time.perf_counter() - t0, 4), wall_s=round(self.elapsed(), 3), batch=batch, cpu_s=cpu)

    def _write_epoch(self, folder: RunFolder, row: dict[str, Any]) -> None:
        """The epoch's files: its metrics row, the LoRA and a checkpoint when they are due. The
        epoch becomes the one an interrupt saves *before* its row is written, so a run stopped once
        ``metrics.jsonl`` shows an epoch never saves an earlier one."""
        c = self.cfg
        self._boundary = self.state_dict(self.elapsed()) if self.world.is_main else None
        if self.world.is_main:
            folder.append_metrics(row)
            if c.run.save_every and self.epoch % c.run.save_every == 0:
                self.save_lora(folder.lora_path)
        if c.run.checkpoint_every and self.epoch % c.run.checkpoint_every == 0:
            self.save_checkpoint(folder, self._boundary)

    # -- the command line's run ------------------------------------------------------------------
    def run(self, progress: bool = True, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train and write the whole run folder ``run.out`` (:func:`.cli_run.run`); ``resume``
        continues from its newest checkpoint, ``overwrite`` replaces a run already there. Returns
        the summary."""
        from .cli_run import run

        return run(self, progress=progress, resume=resume, overwrite=overwrite)


def _model_device(model) -> torch.device | None:
    device = getattr(model, "device", None) if model is not None else None
    return torch.device(device) if device is not None else None


def _check_model_device(model: Denoiser, device: torch.device) -> None:
    """A model its loader put on another device than ``run.device`` would be metered, sampled and
    trained on the wrong GPU: refuse it."""
    actual = _model_device(model)
    if actual is None:
        return

    def index(d: torch.device) -> int | None:
        return d.index if d.index is not None or d.type != "cuda" else torch.cuda.current_device()

    if actual.type != device.type or index(actual) != index(device):
        raise ValueError(f"the model was loaded on {actual}, but run.device={device}: its loader did not put it on the "
                         "device the run names. Set --run.device to where the model is, or fix the loader")
