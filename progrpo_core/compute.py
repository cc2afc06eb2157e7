"""Exact compute accounting, in one place.

Counts are in *rows* (one latent through the network once); a classifier-free-guided call counts
two rows. A backward pass is weighted ``backward_weight`` forward evaluations (2 by the usual
rule of thumb). Decodes and reward calls are counted per image; their cost relative to one model
evaluation is given per model (0 for the built-in pixel-space digits model, which has no VAE).
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from typing import Callable, Iterator


@dataclasses.dataclass
class Compute:
    nfe_sample: int = 0        # model evaluations (rows) while sampling rollouts
    nfe_train_fwd: int = 0     # forward evaluations (rows) in training, including the reference
    nfe_train_bwd: int = 0     # backward evaluations (rows) in training
    model_calls: int = 0       # batched network calls (any phase)
    proxy_decodes: int = 0     # images decoded at pruning checkpoints
    proxy_rewards: int = 0     # images scored at pruning checkpoints
    final_decodes: int = 0     # images decoded at the end of rollouts
    final_rewards: int = 0     # images scored at the end of rollouts
    wall: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per phase

    def add(self, other: "Compute") -> None:
        for f in dataclasses.fields(self):
            if f.name == "wall":
                for k, v in other.wall.items():
                    self.wall[k] = self.wall.get(k, 0.0) + v
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @contextmanager
    def phase(self, name: str, device=None) -> Iterator[None]:
        """Add the seconds of the work inside to ``wall[name]``. A GPU runs its work after the Python
        call that queued it returns: give the ``device`` and the clock starts once the work queued
        before has run and stops once the phase's own has (else a phase's kernels are paid by
        whichever later code waits for the GPU first, another phase or none)."""
        wait_for(device)
        t0 = time.perf_counter()
        try:
            yield
            wait_for(device)
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - t0

    def units(self, backward_weight: float = 2.0, decode_cost: float = 0.0,
              reward_cost: float = 0.0) -> float:
        """Total compute in model-evaluation equivalents."""
        return (self.nfe_sample + self.nfe_train_fwd + backward_weight * self.nfe_train_bwd
                + decode_cost * (self.proxy_decodes + self.final_decodes)
                + reward_cost * (self.proxy_rewards + self.final_rewards))

    def flops(self, costs: "FlopCosts") -> dict[str, float]:
        """A FLOPs estimate from the counts, broken down as the paper's Table 4 (sampling, training
        forward, training backward, decodes, reward calls, total)."""
        out = {
            "sampling": self.nfe_sample * costs.model_fwd,
            "train_fwd": self.nfe_train_fwd * costs.model_fwd,
            "train_bwd": self.nfe_train_bwd * costs.backward_weight * costs.model_fwd,
            "decode": (self.proxy_decodes + self.final_decodes) * costs.decode,
            "reward": (self.proxy_rewards + self.final_rewards) * costs.reward,
        }
        out["total"] = sum(out.values())
        return out

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["wall"] = {k: round(v, 4) for k, v in self.wall.items()}
        return d


@dataclasses.dataclass(frozen=True)
class FlopCosts:
    """Atomic costs in FLOPs: one model evaluation of one row, one decode and one reward call of one
    image; a backward row costs ``backward_weight`` forward rows. For SD3.5-M the paper gives
    decode 2.49e12 and reward 0.34e12 (docs/METHOD.md §7)."""

    model_fwd: float
    decode: float = 0.0
    reward: float = 0.0
    backward_weight: float = 2.0

    def unit_kw(self) -> dict[str, float]:
        """Keyword arguments of :meth:`Compute.units` expressing decodes and rewards in model rows."""
        if self.model_fwd <= 0:
            raise ValueError(f"model_fwd={self.model_fwd} FLOPs must be > 0 to express costs in model rows")
        return {"backward_weight": self.backward_weight, "decode_cost": self.decode / self.model_fwd,
                "reward_cost": self.reward / self.model_fwd}


def wait_for(device) -> None:
    """Wait for the work queued on ``device`` if it is a GPU (CUDA): timing it needs this."""
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn`` as counted by ``torch.utils.flop_counter`` (matmuls and
    convolutions; element-wise work is not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())
