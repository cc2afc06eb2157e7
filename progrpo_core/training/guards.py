"""The loop's checks between epochs: a state that is no longer finite, a LoRA that diverges, groups
whose rewards have no spread, and a slow collapse. Each stops the run (:class:`TrainingStopped`,
nothing of the epoch saved) or warns, in the words of the front end that drives the loop.

The slow collapse (:func:`check_collapse`): a learning rate that is too high, but not so high that
the LoRA's norm jumps (:meth:`Guards.divergence`), drives the policy onto one output — on the
digits, one digit whatever the prompt — over several epochs. Two signs, measured against the run's own start:

* the evaluation reward stays below the evaluation before training by more than ``TOLERANCE`` ×
  the first epoch's reward spread, for ``EVALS`` evaluations in a row;
* the trained rewards' spread falls below ``FLAT`` × the first epoch's for ``FLAT_EPOCHS`` epochs
  in a row while their mean sits below the first epoch's by the same tolerance: every group
  draws the same (poor) image, so there is nothing left to learn from.

A run reaching the top of its reward also loses its spread, but with a mean above the start, so it
is left alone: :func:`saturated` names that case, where ``grpo.saturated_lr`` lowers the learning
rate (the trainer's ``_on_saturation``). The spread of the first epoch sets the scale, so both work
for any reward's units; without a spread (a constant reward) they stay silent."""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import torch

from . import state
from .rollouts import RolloutBatch
from .state import CLI_WORDS, RunState, TrainingStopped, Words


class Guards:
    """Checks of one run: ``lr`` and the run folder ``out`` (once the trainer opened one) are named
    in the messages, ``words`` says how."""

    def __init__(self, lr: float, words: Words, reward_name: str):
        self.lr, self.words, self.reward_name = lr, words, reward_name
        self.out: str | None = None
        self._norm: float | None = None   # the LoRA's norm after the last epoch
        self._warned_flat = False
        self._spread_seen = False

    def _setting(self, name: str) -> str:
        return self.words.setting(name)

    def finite(self, tensors: dict[str, Sequence[torch.Tensor]], what: str, run: RunState) -> None:
        """Raise :class:`TrainingStopped` when any of ``tensors`` holds NaN or infinity, instead of
        writing ``what``."""
        bad = state.nonfinite_parts(tensors)
        if bad:
            raise TrainingStopped(
                f"the {' and '.join(bad)} hold NaN or infinite values at epoch {run.epoch}; stopping without "
                f"writing {what}. " + state.last_good(run.last_checkpoint, self.out, self.words)
                + f" Lower {self._setting('grpo.lr')} (now {self.lr:g}) or keep {self._setting('grpo.grad_clip')} on.")

    def start(self, norm: float) -> None:
        """The LoRA's norm before the first epoch of this session."""
        self._norm = norm

    def divergence(self, norm: float, run: RunState) -> None:
        """Stop when the LoRA's norm jumped by more than 100x in one epoch: the learning rate is far
        too high and its weights, though finite, would render NaN or noise."""
        prev, self._norm = self._norm, norm
        if prev and norm > 100 * prev:
            lr = self._setting("grpo.lr")
            raise TrainingStopped(
                f"the LoRA's norm jumped from {prev:.3g} to {norm:.3g} in epoch {run.epoch} (x{norm / prev:.3g}): "
                f"{lr}={self.lr:g} is far too high for this model; nothing of this epoch was saved. "
                + state.last_good(run.last_checkpoint, self.out, self.words) + f" Lower {lr} (try a tenth).")

    def flat(self, batch: RolloutBatch, epoch: int) -> None:
        """Warn (once) when every group's rewards were equal: no advantage, nothing learnt."""
        if batch.nonfinite:
            return
        if bool((batch.advantages != 0).any()):
            self._spread_seen = True
            return
        if self._warned_flat:
            return
        self._warned_flat = True
        what = (f"epoch {epoch + 1}: every trajectory of every prompt got the same reward, so every advantage is 0 "
                "and the epoch teaches nothing; ")
        if self._spread_seen:  # the rewards did differ before: the policy now gets the same one everywhere
            warnings.warn(what + "the groups' rewards differed in earlier epochs, so the policy has most likely "
                          f"saturated the reward ({self.reward_name}) on these prompts: more epochs add little "
                          "(compare the evaluation rewards, or train on harder prompts)", RuntimeWarning, stacklevel=4)
        else:
            warnings.warn(what + f"check that the reward ({self.reward_name}) responds to the images and prompts",
                          RuntimeWarning, stacklevel=4)


# -- the slow collapse ------------------------------------------------------------------------------

EVALS = 2           # evaluations in a row below the start
TOLERANCE = 0.25    # × the first epoch's trained-reward std
FLAT = 0.05         # spread, × the first epoch's, that counts as none
FLAT_EPOCHS = 3     # epochs in a row without spread


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _mean(row: dict[str, Any]) -> float | None:
    return _num(row.get("reward_group_mean", row.get("reward_mean")))


def _first_spread(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The first epoch whose trained rewards had a spread: it sets the scale of both signs."""
    return next((r for r in rows if _num(r.get("reward_std"))), None)


def _flat_tail(rows: Sequence[dict[str, Any]], scale: float) -> Sequence[dict[str, Any]]:
    """The last ``FLAT_EPOCHS`` rows when each had a spread below ``FLAT`` × ``scale`` and a mean,
    else nothing."""
    tail = rows[-FLAT_EPOCHS:]
    ok = len(tail) == FLAT_EPOCHS and all(_num(r.get("reward_std")) is not None and r["reward_std"] < FLAT * scale
                                          and _mean(r) is not None for r in tail)
    return tail if ok else ()


def evidence(rows: Sequence[dict[str, Any]], before: float | None,
             after: tuple[int, float] | None = None) -> tuple[str, bool] | None:
    """``(what was seen, firm)`` when the rows (and the evaluation ``after`` training) show a
    collapse; ``firm`` is False for a single evaluation below the start (a warning, not a stop)."""
    first = _first_spread(rows)
    if first is None:
        return None
    scale, start = float(first["reward_std"]), _mean(first)
    tol = TOLERANCE * scale
    evals = [(int(r["epoch"]), float(r["eval_reward"])) for r in rows if _num(r.get("eval_reward")) is not None]
    if after is not None and _num(after[1]) is not None:
        evals.append(after)
    before = _num(before)
    if before is not None and evals:
        low = [e for e in evals[-EVALS:] if e[1] < before - tol]
        if len(low) == EVALS or (after is not None and evals[-1:] == low):
            trail = " → ".join(f"{v:.4g} at epoch {e}" for e, v in evals[-EVALS:])
            return (f"the evaluation reward fell from {before:.4g} before training to {trail} (more than "
                    f"{tol:.3g}, a quarter of the first epoch's reward spread, below the start)", len(low) == EVALS)
    tail = _flat_tail(rows, scale)
    if start is not None and tail and all(_mean(r) < start - tol for r in tail):
        last = tail[-1]
        return (f"for {FLAT_EPOCHS} epochs in a row (to epoch {last['epoch']}) every trained image got nearly the "
                f"same reward (spread {last['reward_std']:.3g}, against {scale:.3g} in epoch {first['epoch']}) at a "
                f"mean of {_mean(tail[-1]):.4g}, below the first epoch's {start:.4g}: the policy has collapsed onto "
                "one output", True)
    return None


def saturated(rows: Sequence[dict[str, Any]]) -> str | None:
    """What shows that the policy has saturated the reward, or None: for ``FLAT_EPOCHS`` epochs in a
    row the trained rewards' spread was below ``FLAT`` × the first epoch's at a mean above the first
    epoch's by the collapse's tolerance — every image of every group gets the top reward, so what is
    left to learn from is the reward's noise."""
    first = _first_spread(rows)
    if first is None:
        return None
    scale, start = float(first["reward_std"]), _mean(first)
    tail = _flat_tail(rows, scale)
    if start is None or not tail or not all(_mean(r) > start + TOLERANCE * scale for r in tail):
        return None
    return (f"for {FLAT_EPOCHS} epochs in a row (to epoch {tail[-1]['epoch']}) the trained rewards' spread was "
            f"{tail[-1]['reward_std']:.3g} against {scale:.3g} in epoch {first['epoch']}, at a mean of "
            f"{_mean(tail[-1]):.4g} (the first epoch's: {start:.4g})")


def check_collapse(rows: Sequence[dict[str, Any]], before: dict[str, Any] | None, lr: float, out: str | None,
                   words: Words = CLI_WORDS, after: tuple[int, float] | None = None) -> str | None:
    """Raise :class:`TrainingStopped` on firm evidence of a collapse (see the module docstring);
    return a warning for a single low evaluation ``after`` training; else None."""
    found = evidence(rows, (before or {}).get("reward"), after)
    if found is None:
        return None
    what, firm = found
    lr_name, kl = words.setting("grpo.lr"), words.setting("grpo.kl_beta")
    advice = (f"{lr_name}={lr:g} is probably too high for this model: start the run again with a lower one (try "
              f"{lr / 10:g}; a resumed run keeps its learning rate), or hold the policy near the model with {kl} > 0")
    if not firm:
        return f"warning: {what}. If it persists, {advice}."
    return_to = "" if out is None else (f" The checkpoints in {out} are kept as they are; those written since the "
                                        "reward began to fall hold the collapsing policy.")
    raise TrainingStopped(f"stopped: the policy is collapsing — {what}. {advice}.{return_to}")
