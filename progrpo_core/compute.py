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
from typing import Iterator


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
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - t0

    def units(self, backward_weight: float = 2.0, decode_cost: float = 0.0,
              reward_cost: float = 0.0) -> float:
        """Total compute in model-evaluation equivalents."""
        return (self.nfe_sample + self.nfe_train_fwd + backward_weight * self.nfe_train_bwd
                + decode_cost * (self.proxy_decodes + self.final_decodes)
                + reward_cost * (self.proxy_rewards + self.final_rewards))

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["wall"] = {k: round(v, 4) for k, v in self.wall.items()}
        return d
