"""What an update changes: the LoRA, its AdamW optimizer, its EMA and fp16's loss scaler.

The LoRA's parameters, their gradients, the optimizer state and the EMA are float32 on the
parameters' device whatever the model computes in (docs/GPU.md). A host may move the model between
epochs; :meth:`Learner.rehome` keeps the optimizer state and the EMA beside the parameters.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..lora import LoraWeights
from ..spec import RunSpec
from .averages import EMA, OldPolicy, ema_applied


class Learner:
    """The trained state of a run: ``adapter`` (the LoRA), ``optimizer``, ``ema`` (None when off)
    and ``scaler`` (fp16's ``GradScaler``, else None)."""

    def __init__(self, adapter: LoraWeights, spec: RunSpec):
        g = spec.grpo
        self.adapter = adapter
        self.optimizer = torch.optim.AdamW(adapter.parameters(), lr=spec.lr, weight_decay=g.weight_decay)
        self.ema = EMA(adapter.parameters(), g.ema_decay) if g.ema else None
        self.scaler = spec.precision.scaler(spec.device)
        self.old = OldPolicy(adapter.parameters()) if spec.objective == "nft" else None  # DiffusionNFT's θ_old

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.adapter.parameters()

    def rehome(self) -> None:
        """Keep the optimizer state and the EMA beside the LoRA parameters (a host may have moved
        the model between epochs)."""
        for p in self.adapter.parameters():
            for k, v in self.optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.dim() and v.device != p.device:
                    self.optimizer.state[p][k] = v.to(p.device)
        if self.ema is not None:
            self.ema.follow()

    def tensors(self, snap: dict[str, Any] | None = None) -> dict[str, Sequence[torch.Tensor]]:
        """The LoRA, EMA, optimizer (and NFT's old policy) tensors by name (of ``snap`` when given),
        for finite checks."""
        out = state_tensors(self.adapter, self.optimizer, self.ema, snap)
        old = (snap or {}).get("old") if snap is not None else (self.old.values if self.old is not None else None)
        if old:
            out["old-policy weights"] = list(old)
        return out

    def sampling_weights(self):
        """Inside, the parameters hold what rollouts sample with: NFT's old policy, else the LoRA."""
        return self.old.applied() if self.old is not None else contextlib.nullcontext()

    @torch.no_grad()
    def norm(self) -> float:
        return float(torch.stack([p.detach().float().norm() for p in self.adapter.parameters()]).norm())

    def saved_weights(self):
        """Inside, the parameters hold what a save writes: the EMA weights when EMA is on."""
        return ema_applied(self.ema)

    def lora_file(self, metadata: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The LoRA's ComfyUI tensors and file header, as the parameters hold them now."""
        return self.adapter.comfy_state_dict(), self.adapter.header(metadata)

    def save(self, path: str | Path, metadata: dict[str, Any]) -> Path:
        return self.adapter.save(path, metadata)

    @contextlib.contextmanager
    def with_values(self, values: Sequence[torch.Tensor]) -> Iterator[list[torch.nn.Parameter]]:
        """Inside, the parameters hold ``values`` (in ``named_parameters`` order); back after."""
        named = self.adapter.named_parameters()
        live = [p.detach().clone() for _, p in named]
        with torch.no_grad():
            for (_, p), v in zip(named, values):
                p.copy_(v.to(p))
        try:
            yield [p for _, p in named]
        finally:
            with torch.no_grad():
                for (_, p), v in zip(named, live):
                    p.copy_(v)


def state_tensors(adapter: LoraWeights, optimizer: torch.optim.Optimizer, ema: EMA | None,
                  snap: dict[str, Any] | None = None) -> dict[str, list[torch.Tensor]]:
    """The weights and optimizer moments of snapshot ``snap`` (default: the live ones), by name."""
    if snap is None:
        optim, lora, shadow = optimizer.state_dict(), adapter.parameters(), ema.shadow if ema is not None else []
    else:
        optim, lora, shadow = snap["optimizer"], list(snap["lora"].values()), snap["ema"] or []
    moments = [v for st in optim["state"].values() for v in st.values() if isinstance(v, torch.Tensor)]
    return {"LoRA weights": list(lora), "EMA weights": list(shadow), "optimizer state": moments}
