"""The built-in networks: a small class-conditional MLP denoiser for 8×8 digits and the digit
classifier behind the built-in reward. Pure torch; weights ship as safetensors."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 10
NULL_LABEL = NUM_CLASSES  # the unconditional label used for classifier-free guidance


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of times ``t`` (N,) in [0, 1] → (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class Block(nn.Module):
    """Pre-norm residual MLP block conditioned by adding the (time + label) embedding."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, 2 * hidden)
        self.fc2 = nn.Linear(2 * hidden, hidden)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h) + c)))


class DigitsNet(nn.Module):
    """Maps a noisy 8×8 digit (N, 1, 8, 8), a time in [0, 1] (N,) and a label (N,) to the
    network output (N, 1, 8, 8): the velocity for the flow model, ε for the diffusion model.

    With ``slots=2`` it draws two digits side by side, (N, 1, 8, 16) with ``pixels=128``, and
    the labels are (N, 2): left and right digit, each embedded by its own table."""

    def __init__(self, pixels: int = 64, hidden: int = 192, depth: int = 3, emb: int = 64, slots: int = 1):
        super().__init__()
        if slots not in (1, 2) or pixels != 64 * slots:
            raise ValueError(f"DigitsNet(pixels={pixels}, slots={slots}): expected slots 1 or 2 and pixels = 64 × slots")
        self.emb = emb
        self.slots = slots
        self.proj_in = nn.Linear(pixels, hidden)
        self.time_fc1 = nn.Linear(emb, hidden)
        self.time_fc2 = nn.Linear(hidden, hidden)
        self.label = nn.Embedding(NUM_CLASSES + 1, hidden)
        if slots == 2:
            self.label_right = nn.Embedding(NUM_CLASSES + 1, hidden)
        self.blocks = nn.ModuleList(Block(hidden) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, pixels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = self.proj_in(x.reshape(n, -1))  # (N, hidden)
        emb = timestep_embedding(t, self.emb).to(self.time_fc1.weight.dtype)  # the weights' (compute) dtype
        c = self.time_fc2(F.silu(self.time_fc1(emb)))
        c = c + (self.label(labels) if self.slots == 1 else self.label(labels[:, 0]) + self.label_right(labels[:, 1]))
        for blk in self.blocks:
            h = blk(h, c)
        return self.proj_out(self.norm_out(h)).reshape(x.shape)


class DigitClassifier(nn.Module):
    """8×8 grayscale digits in [0, 1] (N, 64) → logits (N, 10)."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.silu(self.fc2(F.silu(self.fc1(x)))))
