"""The loop's checks between epochs: a state that is no longer finite, a LoRA that diverges, and
groups whose rewards have no spread. Each stops the run (:class:`TrainingStopped`, nothing of the
epoch saved) or warns, in the words of the front end that drives the loop."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch

from . import state
from .rollouts import RolloutBatch
from .state import RunState, TrainingStopped, Words


class Guards:
    """Checks of one run: ``lr`` and the run folder ``out`` (once the trainer opened one) are named
    in the messages, ``words`` says how."""

    def __init__(self, lr: float, words: Words, reward_name: str):
        self.lr, self.words, self.reward_name = lr, words, reward_name
        self.out: str | None = None
        self._norm: float | None = None   # the LoRA's norm after the last epoch
        self._warned_flat = False

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
        if self._warned_flat or batch.nonfinite or bool((batch.advantages != 0).any()):
            return
        self._warned_flat = True
        warnings.warn(f"epoch {epoch + 1}: every trajectory of every prompt got the same reward, so every advantage is 0 "
                      f"and the epoch teaches nothing; check that the reward ({self.reward_name}) responds to the "
                      "images and prompts", RuntimeWarning, stacklevel=4)
