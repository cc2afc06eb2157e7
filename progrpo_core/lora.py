"""Trainable LoRA adapters, saved in the format ComfyUI's stock LoraLoader loads
(:mod:`progrpo_core.lora_format`).

:class:`LoraWeights` is what the trainer sees of any adapter: its ``(down, up)`` parameter pairs
by module path, a switch to run the reference policy without them, and the ComfyUI file format.
Two implementations exist: :class:`LoraAdapter` here (``peft`` layers injected in place into
``denoiser.net``, for the built-in models and headless training) and the host's weight-wrapper
adapter in ``nodes/host`` (ComfyUI's own mechanism, inside a ComfyUI graph).
"""
from __future__ import annotations

import abc
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from . import lora_format as fmt
from .lora_format import LoraFileError, check_rank_alpha, read_lora_file  # noqa: F401  (re-exported)

_ADAPTER = "default"


class LoraWeights(abc.ABC):
    """A trainable LoRA on ``denoiser.net``: ``rank``, ``alpha``, ``targets`` (module paths)."""

    denoiser: Any
    rank: int
    alpha: float
    targets: list[str]

    @abc.abstractmethod
    def pairs(self) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        """``{module path: (down (r, in), up (out, r))}`` — the trainable parameters."""

    @abc.abstractmethod
    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters with stable names (the keys of resumable checkpoints)."""

    @abc.abstractmethod
    def disabled(self) -> Iterator[None]:
        """Context: run the reference policy (the same network without the LoRA)."""

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def describe(self) -> str:
        return f"this model: rank {self.rank}, {len(self.targets)} target modules, e.g. {self.targets[:2]}"

    def comfy_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        return fmt.to_comfy(self.pairs(), self.alpha, self.denoiser.lora_prefix, dtype)

    def load_comfy_state_dict(self, tensors: Mapping[str, torch.Tensor], source: str = "LoRA") -> None:
        """Copy a ComfyUI-format LoRA into these adapters; every key and shape must match."""
        fmt.copy_into(self.pairs(), self.alpha, self.denoiser.lora_prefix, tensors, source, self.describe())

    def header(self, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
        return fmt.header(self.rank, self.alpha, self.targets, self.denoiser.fingerprint(), metadata)

    def save(self, path: str | Path, metadata: Mapping[str, Any] | None = None,
             dtype: torch.dtype = torch.float32) -> Path:
        return fmt.save_lora_file(self.comfy_state_dict(dtype), path, self.header(metadata))


class LoraAdapter(LoraWeights):
    """``peft`` LoRA layers injected in place into ``denoiser.net`` (module paths stay the
    network's own, so the denoiser keeps working unchanged)."""

    def __init__(self, denoiser, rank: int, alpha: float, targets: Sequence[str] | None = None,
                 seed: int = 0):
        from peft import LoraConfig, inject_adapter_in_model

        self.denoiser = denoiser
        self.rank, self.alpha = check_rank_alpha(rank, alpha)
        self.targets = list(targets or denoiser.lora_targets)
        _check_rank(self.rank, denoiser.net, self.targets)
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=self.targets,
                            lora_dropout=0.0, bias="none")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                inject_adapter_in_model(config, denoiser.net, adapter_name=_ADAPTER)
            except ValueError as e:
                raise ValueError(f"cannot attach LoRA to modules {self.targets}: {e}") from e
        self.modules = self._lora_modules()
        if not self.modules:
            raise ValueError(f"no module of the network matches LoRA targets {self.targets}")
        for name, p in denoiser.net.named_parameters():
            p.requires_grad_(".lora_" in name)
            if ".lora_" in name and p.dtype != torch.float32:  # peft follows a half-precision base layer
                p.data = p.data.float()

    def _lora_modules(self) -> dict[str, nn.Module]:
        from peft.tuners.lora import LoraLayer

        return {name: m for name, m in self.denoiser.net.named_modules() if isinstance(m, LoraLayer)}

    def pairs(self) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        return {name: (m.lora_A[_ADAPTER].weight, m.lora_B[_ADAPTER].weight) for name, m in self.modules.items()}

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.denoiser.net.named_parameters() if ".lora_" in n]

    @contextmanager
    def disabled(self) -> Iterator[None]:
        for m in self.modules.values():
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in self.modules.values():
                m.enable_adapters(True)

    def remove(self) -> None:
        """Take the adapters out, leaving the base network as it was."""
        net = self.denoiser.net
        for name, m in self.modules.items():
            parent_name, _, child = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            setattr(parent, child, m.base_layer)
        self.modules = {}
        for p in net.parameters():
            p.requires_grad_(False)


def _check_rank(rank: int, net: nn.Module, targets: Sequence[str]) -> None:
    """Refuse a rank no targeted layer can use: a layer's LoRA adds at most min(in, out) directions,
    so a larger rank only costs memory (rank × (in + out) floats per layer, and as much again for
    the optimizer)."""
    useful = 0
    for name, m in net.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if isinstance(m, nn.Linear):
            useful = max(useful, min(m.in_features, m.out_features))
        elif isinstance(m, nn.modules.conv._ConvNd):
            k = int(torch.tensor(m.kernel_size).prod())
            useful = max(useful, min(m.in_channels // m.groups * k, m.out_channels))
    if useful and rank > useful:
        raise ValueError(f"lora.rank={rank} is more than any adapted layer can use: a layer's LoRA adds at most "
                         f"min(in, out) directions, {useful} for the largest here ({', '.join(targets)}); a higher "
                         f"rank only costs memory. Use a rank of at most {useful}")


def _check_lora_values(path, tensors: Mapping[str, torch.Tensor], prefix: str, downs: Mapping[str, torch.Tensor],
                       modules: Mapping[str, nn.Module], scale: float, max_ratio: float = 100.0) -> None:
    """Refuse a LoRA file with NaN/infinite values, or one whose change to a layer is more than
    ``max_ratio`` times that layer's own weights (a diverged run's, or scaled by mistake): either
    would make every image NaN or noise, and training from it would be blamed on the learning rate."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise LoraFileError(f"{path} holds NaN or infinite values ({len(bad)} tensor(s), e.g. {bad[0]}): it was saved "
                            "from a diverged run or is damaged; use another LoRA file")
    for name, down in downs.items():
        up = tensors.get(prefix + name + fmt.SUFFIX_UP)
        weight = getattr(modules[name], "weight", None)
        if up is None or weight is None or up.dim() != 2 or down.dim() != 2:
            continue
        delta = float(torch.linalg.matrix_norm(up.double() @ down.double())) * abs(scale)  # ||ΔW||_F
        base = float(weight.detach().double().norm())
        if not math.isfinite(delta) or delta > max_ratio * max(base, 1e-12):
            raise LoraFileError(
                f"{path} changes layer {name} by {delta:.3g} (Frobenius norm) where the layer's own weights measure "
                f"{base:.3g}: more than {max_ratio:g} times the layer, so it would replace the model, not adapt it "
                "(saved from a diverged run, or scaled by mistake). Use another LoRA file")


def lora_from_file(denoiser, path: str | Path, check_base: bool = True) -> LoraAdapter:
    """Attach adapters shaped like the file's and load it (for evaluation or continued training)."""
    tensors, meta = read_lora_file(path)
    prefix = denoiser.lora_prefix
    downs = fmt.modules_of(tensors, prefix)
    if not downs:
        raise LoraFileError(f"{path} has no '{prefix}<module>{fmt.SUFFIX_DOWN}' keys; it is not a LoRA for this "
                            f"model ({len(tensors)} keys, e.g. {sorted(tensors)[:2]})")
    base = meta.get("progrpo.base_model_hash")
    if check_base and base and base != denoiser.fingerprint():
        raise LoraFileError(
            f"{path} was trained on base model {base}, but this model is {denoiser.fingerprint()}; "
            "use it with the model it was trained on, or start a new LoRA without it (drop --lora.init_from)")
    modules = dict(denoiser.net.named_modules())
    absent = sorted(m for m in downs if m not in modules)
    if absent:
        raise LoraFileError(f"{path}: {len(absent)} module(s) not in this model, e.g. {absent[:3]}; "
                            "the LoRA belongs to another model")
    ranks = {int(v.shape[0]) for v in downs.values()}
    if len(ranks) != 1:
        raise LoraFileError(f"{path}: mixed ranks {sorted(ranks)} are not supported")
    rank = ranks.pop()
    alpha_key = prefix + next(iter(downs)) + fmt.SUFFIX_ALPHA
    alpha = float(tensors[alpha_key]) if alpha_key in tensors else float(rank)  # no alpha: scale 1
    _check_lora_values(path, tensors, prefix, downs, modules, alpha / rank)
    adapter = LoraAdapter(denoiser, rank, alpha, targets=list(downs))
    adapter.load_comfy_state_dict(tensors, source=str(path))
    return adapter
