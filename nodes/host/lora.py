"""The trainable LoRA inside ComfyUI: ComfyUI's own weight-wrapper mechanism
(``ModelPatcher.add_weight_wrapper``) behind the core's :class:`~progrpo_core.lora.LoraWeights`,
and applying a finished LoRA exactly as the stock loaders do."""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
from torch import nn

from progrpo_core.lora import LoraWeights
from progrpo_core.lora_format import check_rank_alpha

from .model import LORA_PREFIX, ComfyDenoiser


class LoraDelta(nn.Module):
    """``W ↦ W + (α/r)·up @ down`` as a ComfyUI weight function (applied to the cast weight in
    every forward, so gradients reach ``down`` (r, in) and ``up`` (out, r))."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        down = torch.empty(rank, in_features)
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=√5), peft's lora_A init
        down.uniform_(-bound, bound, generator=generator)
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        self.rank, self.alpha = rank, alpha
        self.enabled = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        delta = (self.up @ self.down) * (self.alpha / self.rank)  # (out, in)
        return weight + delta.to(device=weight.device, dtype=weight.dtype)

    def move_to(self, device=None) -> int:  # called by ModelPatcher when it moves weights
        self.to(device=device)
        return sum(p.numel() * p.element_size() for p in self.parameters())


class _CopyWeight:
    """No-op weight function: makes ComfyUI cast a fresh copy of an inference-mode weight, so it
    can be saved for backward (only used when the MODEL cannot be deep-copied)."""

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return weight


class ComfyLoraAdapter(LoraWeights):
    """Trainable LoRA on ``denoiser.net`` through ``ModelPatcher.add_weight_wrapper`` (the core's
    :class:`~progrpo_core.lora.LoraWeights`: same parameters, reference switch and file format).
    Must be created before the patcher is loaded (wrappers are attached at load time)."""

    def __init__(self, denoiser: ComfyDenoiser, rank: int, alpha: float, targets: Sequence[str] | None = None,
                 seed: int = 0, copy_other_weights: bool = False):
        self.denoiser = denoiser
        self.rank, self.alpha = check_rank_alpha(rank, alpha)
        self.targets = list(targets or denoiser.lora_targets)
        modules = dict(denoiser.net.named_modules())
        gen = torch.Generator().manual_seed(int(seed))
        self.modules: dict[str, LoraDelta] = {}
        for path in self.targets:
            m = modules.get(path)
            if m is None or getattr(m, "weight", None) is None or m.weight.ndim != 2:
                raise ValueError(f"LoRA target {path!r} is not a Linear layer of this model")
            delta = LoraDelta(m.weight.shape[0], m.weight.shape[1], self.rank, self.alpha, gen)
            denoiser.patcher.add_weight_wrapper(f"{LORA_PREFIX}{path}.weight", delta)
            self.modules[path] = delta
        if copy_other_weights:
            for name, m in denoiser.net.named_modules():
                if hasattr(m, "weight_function"):
                    for p in ("weight", "bias"):
                        if getattr(m, p, None) is not None and not (p == "weight" and name in self.modules):
                            denoiser.patcher.add_weight_wrapper(f"{LORA_PREFIX}{name}.{p}", _CopyWeight())

    def pairs(self) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        return {path: (d.down, d.up) for path, d in self.modules.items()}

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"{path}.{n}", p) for path, d in self.modules.items() for n, p in d.named_parameters()]

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        for d in self.modules.values():
            d.enabled = False
        try:
            yield
        finally:
            for d in self.modules.values():
                d.enabled = True


def apply_lora(model, lora: dict[str, torch.Tensor], strength: float = 1.0):
    """A clone of MODEL with a ComfyUI-format LoRA applied, exactly as the stock loaders do."""
    import comfy.sd

    new_model, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)
    return new_model
