"""The linear MLP head shared by the LAION aesthetic predictor v2 and ImageReward.

Both use ``Linear(d, 1024) -> Dropout(0.2) -> Linear(1024, 128) -> Dropout(0.2) -> Linear(128, 64)
-> Dropout(0.1) -> Linear(64, 16) -> Linear(16, 1)`` with no activations (the ReLUs are commented
out in both reference repos), stored as ``layers.{0,2,4,6,7}.{weight,bias}``.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .weights import check_state_dict

HIDDEN = (1024, 128, 64, 16)


class LinearMLPHead(nn.Module):
    """(N, d) embedding -> (N,) score. Runs in float32 whatever the backbone's dtype."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, HIDDEN[0]), nn.Dropout(0.2),
            nn.Linear(HIDDEN[0], HIDDEN[1]), nn.Dropout(0.2),
            nn.Linear(HIDDEN[1], HIDDEN[2]), nn.Dropout(0.1),
            nn.Linear(HIDDEN[2], HIDDEN[3]),
            nn.Linear(HIDDEN[3], 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.float()).squeeze(-1)                       # (N,)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], what: str, source: str,
                        prefix: str = "", expected_download: str = "") -> "LinearMLPHead":
        """The head from ``state[prefix + 'layers.0.weight']`` ..., checked key by key and shape by shape."""
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        first = sub.get("layers.0.weight")
        head = cls(int(first.shape[1]) if first is not None and first.ndim == 2 else 768)
        check_state_dict(head, sub, what, source, expected_download=expected_download)
        head.load_state_dict({k: v.float() for k, v in sub.items()})
        return head.eval().requires_grad_(False)
