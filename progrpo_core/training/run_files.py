"""The part of the :class:`~progrpo_core.training.trainer.Trainer` that keeps a run on disk: its
LoRA, its resumable checkpoints and its run folder — opened (locked, claimed, resumed, checked),
written at the end of epochs and when anything stops the run early."""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt
from . import state
from .run_folder import RunFolder, space_needed


class RunFiles:
    """Mixed into the Trainer: needs its ``spec``, ``parts``, ``learner``, ``guards``, ``state``,
    ``world``, ``log`` and ``_folder``/``_boundary``/``_rng``/``_t_start``."""

    def lora_metadata(self) -> dict[str, Any]:
        c = self.cfg
        return {"method": c.grpo.method, "schedule": dataclasses.asdict(self.schedule),
                "sampler": dataclasses.asdict(self.sampler), "steps": self.optimizer_steps, "epochs": self.epoch,
                "reward": c.reward.name, "base_model": c.model.checkpoint or c.model.name, "seed": c.run.seed,
                "architecture": getattr(self.model, "architecture", None),
                "title": Path(self.out).name if self.out else None}

    def check_finite_state(self) -> None:
        """Raise :class:`TrainingStopped` if the LoRA, its EMA or the optimizer state holds NaN or
        infinity (every rank checks its own copy, so all stop together)."""
        self.guards.finite(self.learner.tensors(), "anything more", self.state)

    def lora_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The LoRA as saved — the EMA weights when EMA is on — and its file header. A non-finite
        LoRA raises :class:`TrainingStopped`."""
        with self.learner.saved_weights():
            self.guards.finite({"LoRA weights": self.adapter.parameters()}, "the LoRA", self.state)
            return self.learner.lora_file(self.lora_metadata())

    def save_lora(self, path: str | Path) -> Path:
        """Write the LoRA (the EMA weights when EMA is on) as a ComfyUI LoRA file; a non-finite
        LoRA is refused (:class:`TrainingStopped`) rather than written over a good file."""
        with self.learner.saved_weights():
            self.guards.finite({"LoRA weights": self.adapter.parameters()}, f"the LoRA {path}", self.state)
            return self.learner.save(path, self.lora_metadata())

    def save_boundary_lora(self, path: str | Path) -> dict[str, Any] | None:
        """Write the LoRA of the last completed epoch (its EMA when kept) — what a stopped run keeps,
        with a header counting that epoch — and return ``{"epoch", "steps", "path"}``; None when no
        epoch was completed in this session or the trainer writes no folder."""
        snap = self._boundary
        if snap is None or not snap["epoch"]:
            return None
        named = self.adapter.named_parameters()
        values = snap["ema"] if snap["ema"] is not None else [snap["lora"][n] for n, _ in named]
        meta = dict(self.lora_metadata(), steps=snap["optimizer_steps"], epochs=snap["epoch"])
        with self.learner.with_values(values) as params:
            self.guards.finite({"LoRA weights": params}, f"the LoRA {path}", self.state)
            written = self.learner.save(path, meta)
        return {"epoch": snap["epoch"], "steps": snap["optimizer_steps"], "path": written}

    def state_dict(self, wall_s: float = 0.0) -> dict[str, Any]:
        """A resumable snapshot of the state after ``self.epoch`` completed epochs."""
        return state.snapshot(self.state, self.learner, {"trainer": self._rng}, self.spec, self.world.world_size,
                              wall_s)

    def load_state_dict(self, snap: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the same settings are required, see ``spec.RESUMABLE_CHANGES``)."""
        self.state = state.restore(snap, self.learner, {"trainer": self._rng}, self.spec)

    def save_checkpoint(self, folder: RunFolder, snap: dict[str, Any] | None = None) -> Path | None:
        """Write a checkpoint of ``snap`` (default: now) — on rank 0; the others return None.
        A state with non-finite weights raises :class:`TrainingStopped` and writes nothing."""
        self.guards.finite(self.learner.tensors(snap), "the checkpoint", self.state)
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
                 f"`python -m progrpo_core train --resume {self.out}`")
        return path

    def open(self, folder: RunFolder, resume: bool = False, overwrite: bool = False) -> bool:
        """Prepare ``folder`` for this run before anything is trained, on every rank together:
        lock it (one process per folder); refuse a folder holding another run unless ``overwrite``;
        with ``resume``, restore its newest checkpoint (and its metrics rows), which must be this
        folder's run; check the folder (writable, room for the run); write the config and the
        settled spec. Returns whether the run resumed. :meth:`close` releases the lock."""
        self._folder = folder
        self.guards.out = str(folder.out)
        self.world.run_on_main(folder.lock, (ckpt.RunFolderError,))
        self.world.run_on_main(lambda: folder.claim(resume, overwrite), (ckpt.RunFolderError,))
        snap = self._load_resume_state(folder) if resume else None
        need = self._space_needed()
        self.world.run_on_main(lambda: folder.check(*need, check_disk=self.cfg.run.check_disk), (ckpt.RunFolderError,))
        if snap is not None:
            self.load_state_dict(snap)
            self._t_start = time.perf_counter() - snap["wall_s"]
            if self.world.is_main:  # exactly the rows up to the checkpoint; later ones are recomputed
                folder.write_metrics(snap["metrics"])
            self.log(f"resumed at epoch {self.epoch} ({self.optimizer_steps} optimizer steps)")
        if self.world.is_main:
            folder.write_config(self.cfg.replace(run={"out": str(folder.out)}))
            if snap is None:
                folder.write_identity(self.state.run_id, self.spec.settled())
                folder.write_metrics("")
        return snap is not None

    def _space_needed(self) -> tuple[int, str]:
        """An estimate of the bytes the run will write, and its breakdown."""
        c, sched = self.cfg, self.schedule
        with torch.no_grad():
            image = self.model.decode(torch.zeros(1, *self.model.latent_shape, device=self.device))
        grid_bytes = 2 * len(self.spec.eval_prompts) * image[0].numel()  # before/after grids, raw bytes as a bound
        epochs = c.run.epochs
        if c.run.max_steps is not None:  # a step cap ends the run sooner
            minibatches = math.ceil(c.grpo.prompts_per_epoch * sched.trained / c.grpo.train_batch_size)
            epochs = min(epochs, math.ceil(c.run.max_steps / math.ceil(minibatches / c.grpo.grad_accum)))
        return space_needed(sum(p.numel() for p in self.adapter.parameters()), c.grpo.prompts_per_epoch,
                            sched.group_size + sum(sched.keep), epochs, c.run.keep_checkpoints,
                            self.ema is not None, grid_bytes)

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

