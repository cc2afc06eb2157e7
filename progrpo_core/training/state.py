"""The training state a run carries from epoch to epoch, and its resumable snapshot.

:class:`RunState` holds the counters, the compute totals, the metrics rows and the evaluation
before training; :func:`snapshot` turns it, with the LoRA, the optimizer, the EMA and the random
generators, into plain data a checkpoint can hold (read back with ``torch.load(weights_only=True)``),
and :func:`restore` puts a snapshot back after checking that it continues the same run.
"""
from __future__ import annotations

import dataclasses
import json
import uuid
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .. import checkpoint as ckpt
from ..compute import Compute
from ..spec import RESUMABLE_CHANGES, check_resume
from .records import jsonable

if TYPE_CHECKING:
    from ..spec import RunSpec
    from .learner import Learner



@dataclasses.dataclass(frozen=True)
class Words:
    """How the loop's messages name a setting and the way to continue a run: the command line's by
    default; a front end with other controls (the ComfyUI node's widgets) passes its own."""

    settings: dict[str, str] = dataclasses.field(default_factory=dict)   # "grpo.lr" -> what the user sets
    resume_how: str = "`train --resume {out}`"
    restart_how: str = "start it over with `train --config {out}/config.toml --overwrite`"

    def setting(self, name: str) -> str:
        return self.settings.get(name, name)

    def resume(self, out: str | None) -> str:
        return self.resume_how.format(out=out)

    def restart(self, out: str | None) -> str:
        return self.restart_how.format(out=out)


CLI_WORDS = Words()


class TrainingStopped(RuntimeError):
    """The run stopped itself rather than train on (or save) a poisoned state: too many skipped
    updates in a row, or LoRA weights that are no longer finite."""




@dataclasses.dataclass
class RunState:
    """Counters and records of a run (everything but the tensors)."""

    epoch: int = 0              # epochs completed (during an epoch: its 1-based number)
    optimizer_steps: int = 0
    skipped_updates: int = 0    # updates skipped for non-finite rewards, losses or gradients
    bad_in_row: int = 0         # skipped updates since the last good one
    compute: Compute = dataclasses.field(default_factory=Compute)  # whole-run totals over all ranks
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # metrics rows, one per epoch
    before: dict[str, Any] | None = None  # the evaluation before training
    last_checkpoint: int = -1
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])  # this run, in its files
    _rows_json: list[str] = dataclasses.field(default_factory=list, repr=False)

    def count_skip(self, epoch: int, why: str, limit: int, out: str, words: Words = CLI_WORDS) -> None:
        """Count a skipped update; raise :class:`TrainingStopped` after ``limit`` in a row (0 = never)."""
        self.skipped_updates += 1
        self.bad_in_row += 1
        warnings.warn(f"epoch {epoch + 1}: {why}; update skipped ({self.bad_in_row} in a row, "
                      f"{self.skipped_updates} in total)", RuntimeWarning, stacklevel=4)
        if limit and self.bad_in_row >= limit:
            raise TrainingStopped(
                f"stopped at epoch {epoch + 1}: {self.bad_in_row} updates in a row were skipped (the last: {why}); "
                f"{words.setting('run.max_bad_updates')}={limit}. Nothing was saved from the poisoned epochs. "
                + last_good(self.last_checkpoint, out, words) + " Check the reward model (dtype, inputs) and lower "
                + words.setting("grpo.lr") + ".")

    def metrics_text(self) -> str:
        """The metrics rows as JSON lines, each serialised once (rows never change once appended)."""
        del self._rows_json[len(self.rows):]
        self._rows_json.extend(json.dumps(jsonable(r)) + "\n" for r in self.rows[len(self._rows_json):])
        return "".join(self._rows_json)


def last_good(last_checkpoint: int, out: str | None, words: Words = CLI_WORDS) -> str:
    """What the run folder holds to go on from, in words."""
    if last_checkpoint > 0:
        return (f"The newest checkpoint in {out} (epoch {last_checkpoint}) is the last good state: continue from it "
                f"with {words.resume(out)}.")
    return f"No checkpoint was written before this ({words.setting('run.checkpoint_every')}): start the run again."


def nonfinite_parts(tensors: dict[str, Sequence[torch.Tensor]]) -> list[str]:
    """The names whose tensors hold NaN or infinity."""
    return [name for name, ts in tensors.items() if any(not bool(torch.isfinite(t).all()) for t in ts)]


def snapshot(state: RunState, learner: "Learner", generators: dict[str, torch.Generator], spec: "RunSpec",
             world_size: int, wall_s: float = 0.0) -> dict[str, Any]:
    """Everything a resumed run needs, as plain tensors, numbers, strings, lists and dicts, copied
    to the CPU. Describes the state after ``state.epoch`` completed epochs; ``spec`` is recorded
    settled (every auto as it was resolved), which is what a resume compares."""
    ema = learner.ema
    return {
        "epoch": state.epoch, "optimizer_steps": state.optimizer_steps,
        "skipped_updates": state.skipped_updates, "bad_in_row": state.bad_in_row,
        "lora": {n: p.detach().cpu().clone() for n, p in learner.adapter.named_parameters()},
        "optimizer": ckpt.to_cpu(learner.optimizer.state_dict()),
        "ema": [s.detach().cpu().clone() for s in ema.shadow] if ema is not None else None,
        **({"old": [v.detach().cpu().clone() for v in learner.old.values]} if learner.old is not None else {}),
        "rng": ckpt.rng_state(generators, spec.device),
        "compute": {f.name: ckpt.to_cpu(getattr(state.compute, f.name)) for f in dataclasses.fields(Compute)},
        "metrics": state.metrics_text(),
        "before": {k: v for k, v in (state.before or {}).items() if k != "latents"},
        "config": spec.config.to_dict(),
        "spec": spec.settled(),
        "run_id": state.run_id,
        "world_size": world_size,
        "wall_s": float(wall_s),
    }


class ResumeSettingsError(ckpt.CheckpointError):
    """Resuming with settings that change the training. ``diffs``: ``(section, key, in the
    checkpoint, now)``; ``allowed``: the ``section.key`` names a resumed run may change. The message
    speaks of the command line; other front ends phrase their own from these fields."""

    def __init__(self, diffs: list[tuple[str, str, Any, Any]], allowed: list[str]):
        self.diffs, self.allowed = diffs, allowed
        super().__init__(
            "cannot resume: settings that change the training differ from the checkpoint's:\n  "
            + "\n  ".join(f"{s}.{k}: {a!r} in the checkpoint, {b!r} now" for s, k, a, b in diffs)
            + f"\nA resumed run may only change {', '.join(allowed)}. To train on with other settings, start a "
            "new run from the LoRA with --lora.init_from.")


class EpochsDoneError(ckpt.CheckpointError):
    """Resuming with ``run.epochs`` below the epochs the run has done (it counts the whole run)."""

    def __init__(self, done: int, asked: int):
        self.done, self.asked = done, asked
        super().__init__(f"run.epochs={asked}, but the run has done {done} epochs already (run.epochs counts the whole "
                         f"run, not the epochs to add): give --run.epochs {done + 1} or more to train on")


def check_resume_config(saved: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]) -> None:
    """Refuse to resume with settings that change the training (see ``spec.RESUMABLE_CHANGES``)."""
    diffs = check_resume(saved, now)
    if diffs:
        raise ResumeSettingsError(diffs, [f"{s}.{k}" for s, ks in RESUMABLE_CHANGES.items() for k in sorted(ks)])


def restore(snap: dict[str, Any], learner: "Learner", generators: dict[str, torch.Generator],
            spec: "RunSpec") -> RunState:
    """Put :func:`snapshot` ``snap`` back into the learner (LoRA, optimizer, EMA) and generators and
    return its :class:`RunState`. The settings must be the same (``spec.RESUMABLE_CHANGES``): the
    settled spec's, or for a checkpoint without one the config's."""
    if "spec" in snap:
        check_resume_config(snap["spec"], spec.settled())
    else:
        check_resume_config(snap["config"], spec.config.to_dict())
    if spec.config.run.epochs < int(snap["epoch"]):
        raise EpochsDoneError(int(snap["epoch"]), spec.config.run.epochs)
    adapter, optimizer, ema = learner.adapter, learner.optimizer, learner.ema
    named = adapter.named_parameters()
    saved = snap["lora"]
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
        if ema is not None:
            if snap["ema"] is None or len(snap["ema"]) != len(ema.shadow):
                raise ckpt.CheckpointError("the checkpoint has no EMA weights but grpo.ema is on")
            for s_, v in zip(ema.shadow, snap["ema"]):
                s_.copy_(v.to(s_))
        if learner.old is not None:
            if len(snap.get("old") or []) != len(learner.old.values):
                raise ckpt.CheckpointError("the checkpoint has no old-policy weights, which DiffusionNFT needs")
            for o, v in zip(learner.old.values, snap["old"]):
                o.copy_(v.to(o))
    optimizer.load_state_dict(snap["optimizer"])
    ckpt.set_rng_state(snap["rng"], generators, spec.device)
    comp = dict(snap["compute"])
    epoch = int(snap["epoch"])
    return RunState(
        epoch=epoch, optimizer_steps=int(snap["optimizer_steps"]), skipped_updates=int(snap["skipped_updates"]),
        bad_in_row=int(snap["bad_in_row"]),
        compute=Compute(**{k: (int(v) if k != "wall" else {str(a): float(b) for a, b in v.items()})
                           for k, v in comp.items()}),
        rows=[json.loads(line) for line in snap["metrics"].splitlines() if line.strip()],
        before=dict(snap["before"]) or None, last_checkpoint=epoch,
        **({"run_id": snap["run_id"]} if snap.get("run_id") else {}))
