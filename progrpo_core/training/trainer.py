"""GRPO training of a LoRA with the expand-and-prune sampler: the one training loop.

One epoch: pick ``B`` prompts; sample ``G_max`` trajectories each with the current policy,
pruning at the schedule's checkpoints (``pro-grpo``), or none (``grpo``), optionally selecting on
the final reward (``ovf``); score the finished images; normalise advantages over each prompt's
trained trajectories; then take the per-step clipped policy-gradient updates on their stored
steps (docs/METHOD.md).

:meth:`Trainer.epochs` is the loop every entry point drives — the command line (:meth:`Trainer.run`),
the ComfyUI trainer node and the bench. It owns, once: step caps, compute totals (reduced over
``torchrun`` processes), skipping updates whose reward, loss or gradient is not finite, refusing to
go on with (or save) non-finite weights, periodic evaluation, metrics rows, LoRA saves, checkpoint
rotation, and a checkpoint of the last completed epoch when anything stops it early.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from .. import checkpoint as ckpt
from .. import distributed, grad_checkpoint, planner
from ..config import TrainConfig
from ..denoiser import Denoiser
from ..lora import LoraAdapter, LoraWeights, lora_from_file
from ..methods import auto_lr
from ..devices import auto_reward_dtype, check_memory_budget, memory_info, resolve_device, resolve_precision
from ..models import load_model, load_prompts
from ..planner import Plan, Target
from ..rewards import OffloadedReward, Reward, build_reward
from . import evaluation, rollouts, state, update
from .records import EpochRecord, UpdateStats
from .guard import check_collapse
from .rollouts import RolloutBatch
from .run_folder import RunFolder, disk_full, space_needed
from .state import EMA, RunState, TrainingStopped, ema_applied


class Trainer:
    """Pro-GRPO / GRPO on any :class:`~progrpo_core.denoiser.Denoiser`.

    ``model``, ``reward``, ``gold``, ``prompts`` and ``adapter`` default to what ``cfg`` names;
    a host passes its own (the ComfyUI node passes its MODEL's denoiser and weight-wrapper LoRA)."""

    def __init__(self, cfg: TrainConfig, model: Denoiser | None = None, reward: Reward | None = None,
                 gold: Reward | None = None, prompts: Sequence[str] | None = None,
                 adapter: LoraWeights | None = None, log: Callable[[str], None] = print,
                 words: state.Words = state.CLI_WORDS):
        self.cfg = cfg
        self.words = words  # how messages name settings and resuming (the node passes its widgets')
        B, W = cfg.grpo.prompts_per_epoch, distributed.world_size()
        if B % W:
            raise ValueError(
                f"grpo.prompts_per_epoch={B} is the global batch and must be divisible by the {W} processes "
                f"(WORLD_SIZE); use {(B // W) * W or W} or {(B // W + 1) * W} prompts, or "
                f"{_divisors(B)} processes")
        self.device = _model_device(model) or resolve_device(cfg.run.device)
        self.world = distributed.setup(str(self.device))
        self.log = log if self.world.is_main else (lambda s: None)
        self.model = model if model is not None else load_model(cfg, self.device)
        _check_model_device(self.model, self.device)
        self.precision = resolve_precision(cfg.run.precision, self.device)
        self.sampler = cfg.sampler.resolved(self.model.family, getattr(self.model, "default_cfg", 1.0))
        if self.sampler.sampler == "ode" or not self.sampler.noise_level:
            raise ValueError(f"sampler.sampler={self.sampler.sampler}, sampler.noise_level={self.sampler.noise_level:g}: "
                             "every sampling step is deterministic, so there is no policy to train; use a noise level "
                             "> 0 with an exploration sampler (the default noise when you leave it out)")
        self.schedule = cfg.prune_schedule(self.model.family)
        rdev, rdtype = self._reward_placement()
        self.reward = reward if reward is not None else build_reward(cfg.reward.name, cfg.reward.path, device=rdev,
                                                                     dtype=rdtype)
        if gold is None and cfg.reward.gold:
            gold = build_reward(cfg.reward.gold, device=rdev, dtype=rdtype)
        self.gold = gold
        self.prompts = list(prompts) if prompts is not None else load_prompts(cfg.run.prompts, self.model)
        if not self.prompts:
            raise ValueError("the prompt list is empty; give at least one prompt")
        if adapter is not None:
            self.adapter = adapter
        elif cfg.lora.init_from:
            self.adapter = lora_from_file(self.model, cfg.lora.init_from)
        else:
            self.adapter = LoraAdapter(self.model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, seed=cfg.run.seed)
        if hasattr(self.model, "set_precision"):  # after the adapter: its parameters stay float32
            self.model.set_precision(self.precision.dtype)
        depth = cfg.run.gradient_checkpointing
        self._checkpointed = grad_checkpoint.enable(
            self.model.net, (0 if getattr(self.model, "builtin", False) else 1) if depth is None else depth)
        self.world.broadcast_(self.adapter.parameters())  # every rank starts from rank 0's LoRA
        g = cfg.grpo
        if g.lr is None:  # auto, written into the config (and so into the run folder and its resume check)
            g.lr = auto_lr(g.method, getattr(self.model, "builtin", False))
        self.optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=g.lr, weight_decay=g.weight_decay)
        self.ema = EMA(self.adapter.parameters(), g.ema_decay) if g.ema else None
        self.scaler = self.precision.scaler(self.device)
        self.plan: Plan | None = None
        self.micro: dict[str, int | None] = {"sample": cfg.run.sample_micro_batch, "train": cfg.run.train_micro_batch,
                                             "decode": cfg.run.decode_micro_batch}
        self.state = RunState()
        self._rng = torch.Generator().manual_seed(cfg.run.seed * 7 + 3)
        self._boundary: dict[str, Any] | None = None  # snapshot of the last completed epoch (rank 0)
        self._folder: RunFolder | None = None  # the run folder this trainer opened (and locked)
        self._lora_norm: float | None = None     # the LoRA's norm after the last epoch (divergence guard)
        self._warned_flat = False
        self._t_start = time.perf_counter()

    def _reward_placement(self) -> tuple[str, str]:
        """The reward's device and dtype (``auto``: the generator's device; float32 on the CPU,
        bfloat16 or float16 on a GPU)."""
        r = self.cfg.reward
        device = self.device if r.device == "auto" else resolve_device(r.device, "reward.device")
        return str(device), r.dtype if r.dtype != "auto" else auto_reward_dtype(device)

    # -- memory: the plan and the micro-batches ---------------------------------------------------
    def ensure_plan(self, refuse: bool = True) -> Plan | None:
        """Measure the per-row costs once and choose every micro-batch left on auto (see
        :mod:`progrpo_core.planner`); offload the reward when memory is short. A run that cannot
        fit is refused here, before anything is sampled (``refuse=False``: the caller decides).
        None when every micro-batch was given."""
        if self.plan is not None or all(v is not None for v in self.micro.values()):
            return self.plan
        self.plan = self.make_plan()
        if refuse and not self.plan.fits:
            raise ValueError(f"this run does not fit in memory: {'; '.join(self.plan.problems)}\n{self.plan.text()}\n"
                             "Lower grpo.prompts_per_epoch or the group size, set smaller micro-batches "
                             "(--run.sample_micro_batch, --run.train_micro_batch), keep --run.gradient_checkpointing "
                             "on, or give the run more memory (--run.memory_gib)")
        for k in self.micro:
            if self.micro[k] is None:
                self.micro[k] = getattr(self.plan, f"{k}_micro_batch")
        offload = self.cfg.reward.offload if self.cfg.reward.offload is not None else self.plan.reward_offload
        if offload and self.device.type == "cuda":
            self.reward = OffloadedReward(self.reward, self.device)
            if self.gold is not None:
                self.gold = OffloadedReward(self.gold, self.device)
        self.log(self.plan.summary())
        return self.plan

    def make_plan(self, target: Target | None = None, costs: planner.Costs | None = None) -> Plan:
        """The plan of this run on ``target`` (default: this device and the memory budget), from
        ``costs`` or from costs measured now (memory and FLOPs only when the target has its own speed)."""
        measured = costs is None
        if costs is None:
            costs = planner.measure_costs(self.model, self.adapter, self.reward, self.sampler, self.device,
                                          self.precision.name, self.prompts[0],
                                          timed=target is None or not target.tflops)
        if target is None:
            check_memory_budget(self.cfg.run.memory_gib, self.device)
            budget = (self.cfg.run.memory_gib * planner.GiB if self.cfg.run.memory_gib
                      else 0.9 * memory_info(self.device)[0] + costs.weights + costs.reward_weights)
            target = Target(str(self.device), int(budget))
        B = self.cfg.grpo.prompts_per_epoch // self.world.world_size

        def plan(c: planner.Costs) -> Plan:
            return planner.make_plan(c, self.cfg, self.schedule, self.sampler, B, len(self.eval_prompts()[0]), target,
                                     given=dict(self.micro), reward_offload=self.cfg.reward.offload)

        first = plan(costs)
        if measured and not target.tflops and first.fits:  # time each phase at its chosen micro-batch
            return plan(planner.retime(costs, first, self.model, self.adapter, self.reward, self.sampler, self.device,
                                       self.prompts[0]))
        return first

    def rehome(self) -> None:
        """Keep the optimizer state and the EMA beside the LoRA parameters (a host may have moved
        the model between epochs)."""
        for p in self.adapter.parameters():
            for k, v in self.optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.dim() and v.device != p.device:
                    self.optimizer.state[p][k] = v.to(p.device)
        if self.ema is not None:
            self.ema.follow()

    # -- the run's counters, as attributes ---------------------------------------------------------
    epoch = property(lambda self: self.state.epoch, lambda self, v: setattr(self.state, "epoch", v))
    optimizer_steps = property(lambda self: self.state.optimizer_steps)
    skipped_updates = property(lambda self: self.state.skipped_updates)
    compute = property(lambda self: self.state.compute)

    @property
    def metrics_rows(self) -> list[dict[str, Any]]:
        """The metrics rows so far, one per epoch (kept in checkpoints)."""
        return self.state.rows

    def close(self) -> None:
        """Undo gradient checkpointing, release the run folder and leave the process group this
        trainer joined."""
        grad_checkpoint.disable(self._checkpointed)
        self._checkpointed = []
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
        schedule, sde_steps = self.schedule.for_epoch(self.sampler.steps, epoch, self.cfg.run.seed)
        return rollouts.collect(self.model, self.reward, prompts, seeds, schedule, self.sampler, self.cfg.grpo,
                                self.world, self.cfg.run.seed * 31 + epoch, callback, self.micro, sde_steps)

    def train_on(self, batch: RolloutBatch, epoch: int, max_updates: int | None = None) -> UpdateStats:
        """The policy update on one epoch's trajectories (skipped, and counted, when its rewards
        were not finite)."""
        if batch.nonfinite:
            self._skip_update(epoch, f"{batch.nonfinite} reward(s) are NaN or infinite")
            return UpdateStats()
        seed = self.cfg.run.seed
        self.rehome()  # sampling may have loaded (moved) the model and its LoRA
        steps = update.train_steps(batch.rollout, self.cfg.grpo.timestep_fraction, seed * 131 + epoch,
                                   self.cfg.grpo.train_step_order)

        def on_update() -> None:
            self.state.optimizer_steps += 1
            self.state.bad_in_row = 0

        stats, comp = update.policy_update(
            self.model, self.adapter, self.optimizer, self.ema, batch, steps, self.sampler, self.cfg.grpo, self.world,
            seed * 977 + epoch, on_update, lambda why: self._skip_update(epoch, why), max_updates,
            micro_batch=self.micro.get("train"), scaler=self.scaler)
        self.state.compute.add(self.world.reduce_compute(comp))
        return stats

    def _skip_update(self, epoch: int, why: str) -> None:
        self.state.count_skip(epoch, why, self.cfg.run.max_bad_updates, self.cfg.run.out, self.words)

    # -- evaluation -------------------------------------------------------------------------------
    @property
    def eval_seeds(self) -> int:
        """Seeds per evaluation prompt: ``run.eval_seeds``, default 8 for the built-in models, 2 for real ones."""
        return self.cfg.run.eval_seeds or (8 if getattr(self.model, "builtin", False) else 2)

    def eval_prompts(self) -> tuple[list[str], list[int]]:
        """The evaluation set: ``run.eval_prompts`` prompts at most, :attr:`eval_seeds` seeds each."""
        return evaluation.eval_set(self.prompts, self.eval_seeds, self.cfg.run.eval_prompts)

    def evaluate(self, use_ema: bool = True) -> dict[str, Any]:
        """Deterministic sampling on fixed prompts and seeds (with the EMA weights when kept)."""
        self.ensure_plan()
        with ema_applied(self.ema if use_ema else None):
            prompts, seeds = self.eval_prompts()
            return evaluation.evaluate(self.model, self.reward, self.gold, prompts, seeds, self.sampler.eval_steps,
                                       self.sampler.cfg, self.world, self.micro)

    # -- the state and its files ------------------------------------------------------------------
    def lora_metadata(self) -> dict[str, Any]:
        c = self.cfg
        return {"method": c.grpo.method, "schedule": dataclasses.asdict(self.schedule),
                "sampler": dataclasses.asdict(self.sampler), "steps": self.optimizer_steps, "epochs": self.epoch,
                "reward": c.reward.name, "base_model": c.model.checkpoint or c.model.name, "seed": c.run.seed,
                "architecture": getattr(self.model, "architecture", None),
                "title": Path(c.run.out).name if c.run.out else None}

    def _check_finite(self, tensors: dict[str, Sequence[torch.Tensor]], what: str) -> None:
        bad = state.nonfinite_parts(tensors)
        if bad:
            raise TrainingStopped(
                f"the {' and '.join(bad)} hold NaN or infinite values at epoch {self.epoch}; stopping without "
                f"writing {what}. " + state.last_good(self.state.last_checkpoint, self.cfg.run.out, self.words)
                + f" Lower {self.words.setting('grpo.lr')} (now {self.cfg.grpo.lr:g}) or keep "
                f"{self.words.setting('grpo.grad_clip')} on.")

    def check_divergence(self) -> None:
        """Stop (:class:`TrainingStopped`, nothing saved) when the LoRA's norm jumped by more than
        100x in one epoch: the learning rate is far too high and its weights, though finite, would
        render NaN or noise."""
        prev, norm = self._lora_norm, self._norm()
        self._lora_norm = norm
        if prev and norm > 100 * prev:
            raise TrainingStopped(
                f"the LoRA's norm jumped from {prev:.3g} to {norm:.3g} in epoch {self.epoch} (x{norm / prev:.3g}): "
                f"{self.words.setting('grpo.lr')}={self.cfg.grpo.lr:g} is far too high for this model; nothing of "
                "this epoch was saved. " + state.last_good(self.state.last_checkpoint, self.cfg.run.out, self.words)
                + f" Lower {self.words.setting('grpo.lr')} (try a tenth).")

    def check_finite_state(self) -> None:
        """Raise :class:`TrainingStopped` if the LoRA, its EMA or the optimizer state holds NaN or
        infinity (every rank checks its own copy, so all stop together)."""
        self._check_finite(state.state_tensors(self.adapter, self.optimizer, self.ema), "anything more")

    def lora_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The LoRA as saved — the EMA weights when EMA is on — and its file header. A non-finite
        LoRA raises :class:`TrainingStopped`."""
        with ema_applied(self.ema):
            self._check_finite({"LoRA weights": self.adapter.parameters()}, "the LoRA")
            return self.adapter.comfy_state_dict(), self.adapter.header(self.lora_metadata())

    def save_lora(self, path: str | Path) -> Path:
        """Write the LoRA (the EMA weights when EMA is on) as a ComfyUI LoRA file; a non-finite
        LoRA is refused (:class:`TrainingStopped`) rather than written over a good file."""
        with ema_applied(self.ema):
            self._check_finite({"LoRA weights": self.adapter.parameters()}, f"the LoRA {path}")
            return self.adapter.save(path, self.lora_metadata())

    def save_boundary_lora(self, path: str | Path) -> dict[str, Any] | None:
        """Write the LoRA of the last completed epoch (its EMA when kept) — what a stopped run keeps,
        with a header counting that epoch — and return ``{"epoch", "steps", "path"}``; None when no
        epoch was completed in this session or the trainer writes no folder."""
        snap = self._boundary
        if snap is None or not snap["epoch"]:
            return None
        named = self.adapter.named_parameters()
        values = snap["ema"] if snap["ema"] is not None else [snap["lora"][n] for n, _ in named]
        live = [p.detach().clone() for _, p in named]
        meta = dict(self.lora_metadata(), steps=snap["optimizer_steps"], epochs=snap["epoch"])
        with torch.no_grad():
            for (_, p), v in zip(named, values):
                p.copy_(v.to(p))
            try:
                self._check_finite({"LoRA weights": [p for _, p in named]}, f"the LoRA {path}")
                written = self.adapter.save(path, meta)
            finally:
                for (_, p), v in zip(named, live):
                    p.copy_(v)
        return {"epoch": snap["epoch"], "steps": snap["optimizer_steps"], "path": written}

    def _generators(self) -> dict[str, torch.Generator]:
        return {"trainer": self._rng}

    def state_dict(self, wall_s: float = 0.0) -> dict[str, Any]:
        """A resumable snapshot of the state after ``self.epoch`` completed epochs."""
        return state.snapshot(self.state, self.adapter, self.optimizer, self.ema, self._generators(), self.cfg,
                              self.world.world_size, wall_s, self.device)

    def load_state_dict(self, snap: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the same settings are required, see ``state.RESUMABLE_CHANGES``)."""
        self.state = state.restore(snap, self.adapter, self.optimizer, self.ema, self._generators(), self.cfg,
                                   self.device)

    def save_checkpoint(self, folder: RunFolder, snap: dict[str, Any] | None = None) -> Path | None:
        """Write a checkpoint of ``snap`` (default: now) — on rank 0; the others return None.
        A state with non-finite weights raises :class:`TrainingStopped` and writes nothing."""
        self._check_finite(state.state_tensors(self.adapter, self.optimizer, self.ema, snap), "the checkpoint")
        if not self.world.is_main:
            return None
        snap = snap if snap is not None else self.state_dict(self.elapsed())
        path = folder.save_checkpoint(snap, self.cfg.run.keep_checkpoints)
        self.state.last_checkpoint = int(snap["epoch"])
        return path

    def save_on_interrupt(self, folder: RunFolder) -> Path | None:
        """Save the last completed epoch on the way out (rank 0); never raises, so the exception
        that is leaving is not hidden."""
        if not self.world.is_main or self._boundary is None:
            return None
        snap = self._boundary
        try:
            path = self.save_checkpoint(folder, snap)
        except BaseException as e:  # noqa: BLE001 - a second Ctrl-C or a full disk must not hide the first
            warnings.warn(f"could not save a checkpoint while stopping: {e!r}", RuntimeWarning, stacklevel=2)
            return None
        self.log(f"stopped: saved {path} (epoch {snap['epoch']}); continue with "
                 f"`python -m progrpo_core train --resume {self.cfg.run.out}`")
        return path

    def _space_needed(self) -> tuple[int, str]:
        """An estimate of the bytes the run will write, and its breakdown."""
        c, sched = self.cfg, self.schedule
        with torch.no_grad():
            image = self.model.decode(torch.zeros(1, *self.model.latent_shape, device=self.device))
        grid_bytes = 2 * len(self.eval_prompts()[0]) * image[0].numel()  # before/after grids, raw bytes as a bound
        epochs = c.run.epochs
        if c.run.max_steps is not None:  # a step cap ends the run sooner
            minibatches = math.ceil(c.grpo.prompts_per_epoch * sched.trained / c.grpo.train_batch_size)
            epochs = min(epochs, math.ceil(c.run.max_steps / math.ceil(minibatches / c.grpo.grad_accum)))
        return space_needed(sum(p.numel() for p in self.adapter.parameters()), c.grpo.prompts_per_epoch,
                            sched.group_size + sum(sched.keep), epochs, c.run.keep_checkpoints,
                            self.ema is not None, grid_bytes)

    def open(self, folder: RunFolder, resume: bool = False, overwrite: bool = False) -> bool:
        """Prepare ``folder`` for this run before anything is trained, on every rank together:
        lock it (one process per folder); refuse a folder holding another run unless ``overwrite``;
        with ``resume``, restore its newest checkpoint (and its metrics rows), which must be this
        folder's run; check the folder (writable, room for the run); write the config. Returns
        whether the run resumed. :meth:`close` releases the lock."""
        self._folder = folder
        self.world.run_on_main(folder.lock, (ckpt.RunFolderError,))
        self.world.run_on_main(lambda: folder.claim(resume, overwrite), (ckpt.RunFolderError,))
        snap = self._load_resume_state(folder) if resume else None
        self.world.run_on_main(lambda: folder.check(*self._space_needed(), check_disk=self.cfg.run.check_disk),
                               (ckpt.RunFolderError,))
        if snap is not None:
            self.load_state_dict(snap)
            self._t_start = time.perf_counter() - snap["wall_s"]
            if self.world.is_main:  # exactly the rows up to the checkpoint; later ones are recomputed
                folder.write_metrics(snap["metrics"])
            self.log(f"resumed at epoch {self.epoch} ({self.optimizer_steps} optimizer steps)")
        if self.world.is_main:
            folder.write_config(self.cfg)
            if snap is None:
                folder.write_identity(self.state.run_id)
                folder.write_metrics("")
        return snap is not None

    def _load_resume_state(self, folder: RunFolder) -> dict[str, Any]:
        """Rank 0 reads the newest usable checkpoint and shares it with the other ranks."""
        box: dict[str, Any] = {}

        def load() -> None:
            box["path"], box["snap"] = folder.load_latest(
                warn=lambda m: warnings.warn(m, RuntimeWarning, stacklevel=2))
            mine, theirs = (folder.identity() or {}).get("run_id"), box["snap"].get("run_id")
            if mine and theirs and mine != theirs:
                raise ckpt.CheckpointError(
                    f"{box['path']} belongs to another run ({theirs}) than the one in {folder.out} ({mine}); it was "
                    "copied or left here from an earlier run. Move it away, or resume the run it belongs to")

        self.world.run_on_main(load, (ckpt.CheckpointError,))
        path, snap = self.world.broadcast_object((str(box.get("path")), box.get("snap")))
        self.log(f"resuming from {path}")
        return snap

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
        self.ensure_plan()
        self._lora_norm = self._norm()
        self._boundary = self.state_dict(self.elapsed()) if main and folder is not None else None
        try:
            for epoch in range(self.epoch, c.run.epochs):
                if c.run.max_steps is not None and self.optimizer_steps >= c.run.max_steps:
                    break
                record = self._one_epoch(epoch, on_sample_step)
                last = epoch == c.run.epochs - 1 or (c.run.max_steps is not None
                                                     and self.optimizer_steps >= c.run.max_steps)
                if c.run.eval_every and self.epoch % c.run.eval_every == 0 and not last:
                    ev = self.evaluate()
                    record.eval_reward, record.eval_gold = ev["reward"], ev.get("gold")
                row = record.to_row()
                if folder is not None:  # (the bench, which keeps no folder, measures collapses instead)
                    check_collapse(self.state.rows + [row], self.state.before, c.grpo.lr, c.run.out, self.words)
                self.state.rows.append(row)
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

    def _one_epoch(self, epoch: int, on_sample_step: Callable[[dict], None] | None) -> EpochRecord:
        c = self.cfg
        self.epoch = epoch + 1
        t0, c0 = time.perf_counter(), time.process_time()
        batch = self.sample_epoch(epoch, on_sample_step)
        self.state.compute.add(self.world.reduce_compute(batch.rollout.compute))
        c1 = time.process_time()
        remaining = None if c.run.max_steps is None else c.run.max_steps - self.optimizer_steps
        stats = self.train_on(batch, epoch, max_updates=remaining)
        cpu = {"sampling": c1 - c0, "training": time.process_time() - c1}
        self.check_finite_state()  # stop before a poisoned state is logged or saved
        self.check_divergence()
        self._warn_if_flat(batch, epoch)
        comp = self.state.compute
        return EpochRecord(
            epoch=self.epoch, optimizer_step=self.optimizer_steps, sample=batch.stats, update=stats,
            skipped_updates=self.state.skipped_updates, bad_updates_in_row=self.state.bad_in_row,
            compute={"nfe": comp.nfe_sample, "nfe_train_fwd": comp.nfe_train_fwd, "nfe_train_bwd": comp.nfe_train_bwd,
                     "decodes": comp.proxy_decodes + comp.final_decodes,
                     "reward_calls": comp.proxy_rewards + comp.final_rewards},
            epoch_wall_s=round(time.perf_counter() - t0, 4), wall_s=round(self.elapsed(), 3), batch=batch, cpu_s=cpu)

    @torch.no_grad()
    def _norm(self) -> float:
        return float(torch.stack([p.detach().float().norm() for p in self.adapter.parameters()]).norm())

    def _warn_if_flat(self, batch: RolloutBatch, epoch: int) -> None:
        """Warn (once) when every group's rewards were equal: no advantage, nothing learnt."""
        if self._warned_flat or batch.nonfinite or bool((batch.advantages != 0).any()):
            return
        self._warned_flat = True
        warnings.warn(f"epoch {epoch + 1}: every trajectory of every prompt got the same reward, so every advantage is 0 "
                      f"and the epoch teaches nothing; check that the reward ({self.cfg.reward.name}) responds to the "
                      "images and prompts", RuntimeWarning, stacklevel=3)

    def _write_epoch(self, folder: RunFolder, row: dict[str, Any]) -> None:
        """The epoch's files: its metrics row, the LoRA and a checkpoint when they are due."""
        c = self.cfg
        if self.world.is_main:
            folder.append_metrics(row)
            if c.run.save_every and self.epoch % c.run.save_every == 0:
                self.save_lora(folder.lora_path)
        if c.run.checkpoint_every and self.epoch % c.run.checkpoint_every == 0:
            self.save_checkpoint(folder)
        self._boundary = self.state_dict(self.elapsed()) if self.world.is_main else None

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


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
