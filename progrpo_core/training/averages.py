"""Moving copies of the LoRA's parameters: the EMA that evaluation and saves use, and DiffusionNFT's
θ_old that its rollouts sample with (training/nft.py). Both live beside the parameters, in float32."""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch


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

    @torch.no_grad()
    def follow(self) -> None:
        """Move the averages to their parameters' devices (after a host moved the model)."""
        self.shadow = [s if s.device == p.device else s.to(p.device) for s, p in zip(self.shadow, self.params)]

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside, the parameters hold the averaged weights; the live ones come back on exit."""
        self.swap()
        try:
            yield
        finally:
            self.swap()


def ema_applied(ema: EMA | None):
    """:meth:`EMA.applied`, or nothing when the run keeps no EMA."""
    return ema.applied() if ema is not None else contextlib.nullcontext()


OLD_DECAY_RATE, OLD_DECAY_MAX = 0.001, 0.5  # the reference's decay type 1: min(0.001·step, 0.5)


class OldPolicy:
    """θ_old: a copy of the LoRA's parameters that rollouts sample with, following the trained
    ones by ``old ← d·old + (1 − d)·θ`` after each epoch, ``d = min(0.001·steps, 0.5)``."""

    def __init__(self, params: Sequence[torch.nn.Parameter]):
        self.params = list(params)
        self.values = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def follow(self, optimizer_steps: int) -> float:
        d = min(OLD_DECAY_RATE * optimizer_steps, OLD_DECAY_MAX)
        for v, p in zip(self.values, self.params):
            v.mul_(d).add_(p.detach().to(v), alpha=1 - d)
        return d

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside, the LoRA holds θ_old; the trained values come back on exit."""
        live = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, v in zip(self.params, self.values):
                p.copy_(v.to(p))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, live):
                    p.copy_(v)
