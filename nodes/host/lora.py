"""The trainable LoRA inside ComfyUI: a float32 low-rank branch on each target layer's output,
behind the core's :class:`~progrpo_core.lora.LoraWeights`, and applying a finished LoRA exactly as
the stock loaders do."""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
from torch import nn

from progrpo_core.lora import LoraWeights
from progrpo_core.lora_format import check_rank_alpha

from .model import LORA_PREFIX, ComfyDenoiser


class LoraBranch(nn.Module):
    """The low-rank branch of one Linear layer: ``y = W x + (α/r)·up(down(x))``.

    ``down`` (r, in) and ``up`` (out, r) are float32 and live on the model's load device; the
    branch is computed in float32 and added to the layer's output once, in the layer's compute
    dtype (as peft and ComfyUI's bypass mode do). The layer's weight is never modified, so
    ComfyUI's casting, offloading and weight patches stay as they are."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, generator: torch.Generator,
                 device: torch.device):
        super().__init__()
        down = torch.empty(rank, in_features)
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=√5), peft's lora_A init
        down.uniform_(-bound, bound, generator=generator)
        self.down = nn.Parameter(down.to(device))
        self.up = nn.Parameter(torch.zeros(out_features, rank, device=device))
        self.scale = alpha / rank
        self.enabled = True

    def add_to(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return y
        h = (x.to(self.down) @ self.down.t()) @ self.up.t()  # (…, out) float32
        return (y + h * self.scale).to(y.dtype)

    def attach(self, layer: nn.Module) -> None:
        """Wrap ``layer.forward`` (undone by :meth:`detach`)."""
        original = layer.forward

        def forward(x, *args, **kwargs):
            return self.add_to(original(x, *args, **kwargs), x)

        layer._progrpo_lora_forward = original
        layer.forward = forward

    @staticmethod
    def detach(layer: nn.Module) -> None:
        if hasattr(layer, "_progrpo_lora_forward"):
            layer.forward = layer._progrpo_lora_forward
            del layer._progrpo_lora_forward


class _CopyWeight:
    """No-op weight function: makes ComfyUI cast a fresh copy of an inference-mode weight, so it
    can be saved for backward (only used when the MODEL cannot be deep-copied)."""

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return weight


class ComfyLoraAdapter(LoraWeights):
    """Trainable LoRA on ``denoiser.net``: one :class:`LoraBranch` per target Linear layer, attached
    to the layer's forward (the core's :class:`~progrpo_core.lora.LoraWeights`: same parameters,
    reference switch and file format). :meth:`remove` takes the branches off again."""

    def __init__(self, denoiser: ComfyDenoiser, rank: int, alpha: float, targets: Sequence[str] | None = None,
                 seed: int = 0, copy_other_weights: bool = False):
        self.denoiser = denoiser
        self.rank, self.alpha = check_rank_alpha(rank, alpha)
        self.targets = list(targets or denoiser.lora_targets)
        modules = dict(denoiser.net.named_modules())
        gen = torch.Generator().manual_seed(int(seed))
        self.modules: dict[str, LoraBranch] = {}
        self._layers: list[nn.Module] = []
        for path in self.targets:
            m = modules.get(path)
            if m is None or getattr(m, "weight", None) is None or m.weight.ndim != 2:
                raise ValueError(f"LoRA target {path!r} is not a Linear layer of this model")
            branch = LoraBranch(m.weight.shape[0], m.weight.shape[1], self.rank, self.alpha, gen, denoiser.device)
            branch.attach(m)
            self.modules[path] = branch
            self._layers.append(m)
        if copy_other_weights:
            for name, m in denoiser.net.named_modules():
                if hasattr(m, "weight_function"):
                    for p in ("weight", "bias"):
                        if getattr(m, p, None) is not None:
                            denoiser.patcher.add_weight_wrapper(f"{LORA_PREFIX}{name}.{p}", _CopyWeight())

    def remove(self) -> None:
        """Take the branches off the network's layers."""
        for layer in self._layers:
            LoraBranch.detach(layer)
        self._layers = []

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
