"""LoRA adapters through ``peft``, saved in the format ComfyUI's stock LoraLoader loads.

Adapters are injected in place into ``denoiser.net`` (``peft.inject_adapter_in_model``), so the
denoiser keeps working unchanged and module paths stay the network's own. Files hold, per adapted
module ``<path>`` of the network (``P = denoiser.lora_prefix``, ``"diffusion_model."``)::

    P<path>.lora_down.weight   (rank, in)       = peft lora_A
    P<path>.lora_up.weight     (out, rank)      = peft lora_B
    P<path>.alpha              0-d float        scale = alpha / rank (peft and ComfyUI agree)

and the run's metadata (method, schedule, steps, reward, base-model hash …) in the safetensors
header, never in the file name.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from .io import save_safetensors

SUFFIX_DOWN, SUFFIX_UP, SUFFIX_ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_ADAPTER = "default"


class LoraFileError(ValueError):
    """A LoRA file that does not fit the model it is applied to."""


def check_rank_alpha(rank: int, alpha: float) -> tuple[int, float]:
    """Validated ``(rank, alpha)`` of a LoRA (scale = alpha / rank)."""
    if rank < 1:
        raise ValueError(f"LoRA rank={rank} must be >= 1")
    if alpha <= 0:
        raise ValueError(f"LoRA alpha={alpha} must be > 0")
    return int(rank), float(alpha)


class LoraAdapter:
    """Trainable LoRA layers on a denoiser's network."""

    def __init__(self, denoiser, rank: int, alpha: float, targets: Sequence[str] | None = None,
                 seed: int = 0):
        from peft import LoraConfig, inject_adapter_in_model

        self.denoiser = denoiser
        self.rank, self.alpha = check_rank_alpha(rank, alpha)
        self.targets = list(targets or denoiser.lora_targets)
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

    def _lora_modules(self) -> dict[str, nn.Module]:
        from peft.tuners.lora import LoraLayer

        return {name: m for name, m in self.denoiser.net.named_modules() if isinstance(m, LoraLayer)}

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.denoiser.net.named_parameters() if ".lora_" in n]

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the reference policy: the same network with the adapters switched off."""
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

    # -- ComfyUI format ------------------------------------------------------------------------
    def comfy_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        prefix = self.denoiser.lora_prefix
        out = {}
        for name, m in self.modules.items():
            down = m.lora_A[_ADAPTER].weight.detach()
            up = m.lora_B[_ADAPTER].weight.detach()
            out[prefix + name + SUFFIX_DOWN] = down.to(dtype).cpu().contiguous()
            out[prefix + name + SUFFIX_UP] = up.to(dtype).cpu().contiguous()
            out[prefix + name + SUFFIX_ALPHA] = torch.tensor(self.alpha, dtype=torch.float32)
        return out

    def load_comfy_state_dict(self, tensors: dict[str, torch.Tensor], source: str = "LoRA") -> None:
        """Copy a ComfyUI-format LoRA into these adapters; every key and shape must match."""
        prefix = self.denoiser.lora_prefix
        expected = set(self.comfy_state_dict())
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise LoraFileError(
                f"{source} does not fit this model's adapters: {len(missing)} missing key(s) "
                f"{missing[:3]}, {len(unexpected)} unexpected key(s) {unexpected[:3]}; was it trained "
                f"on another base model or with other targets/rank? (this model: rank {self.rank}, "
                f"targets {self.targets})")
        with torch.no_grad():
            for name, m in self.modules.items():
                for key, param in ((SUFFIX_DOWN, m.lora_A[_ADAPTER].weight), (SUFFIX_UP, m.lora_B[_ADAPTER].weight)):
                    t = tensors[prefix + name + key]
                    if t.shape != param.shape:
                        raise LoraFileError(f"{source}: {prefix + name + key} has shape {tuple(t.shape)}, "
                                            f"the model expects {tuple(param.shape)}; it belongs to another model")
                    param.copy_(t.to(param))
                a = float(tensors[prefix + name + SUFFIX_ALPHA])
                if abs(a - self.alpha) > 1e-6:
                    raise LoraFileError(f"{source}: alpha {a} differs from the adapter's {self.alpha}")

    def save(self, path: str | Path, metadata: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
        meta = {"progrpo.format": "comfyui-lora", "progrpo.rank": str(self.rank),
                "progrpo.alpha": str(self.alpha), "progrpo.targets": json.dumps(self.targets),
                "progrpo.base_model_hash": self.denoiser.fingerprint()}
        for k, v in (metadata or {}).items():
            meta[f"progrpo.{k}"] = v if isinstance(v, str) else json.dumps(v)
        return save_safetensors(self.comfy_state_dict(dtype), path, meta)


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    except (SafetensorError, OSError) as e:
        raise LoraFileError(f"{path} is not a readable safetensors LoRA file ({e})") from e


def lora_from_file(denoiser, path: str | Path, check_base: bool = True) -> LoraAdapter:
    """Attach adapters shaped like the file's and load it (for evaluation or continued training)."""
    tensors, meta = read_lora_file(path)
    prefix = denoiser.lora_prefix
    downs = {k[len(prefix):-len(SUFFIX_DOWN)]: v for k, v in tensors.items()
             if k.startswith(prefix) and k.endswith(SUFFIX_DOWN)}
    if not downs:
        raise LoraFileError(f"{path} has no '{prefix}<module>{SUFFIX_DOWN}' keys; it is not a LoRA for this model "
                            f"({len(tensors)} keys, e.g. {sorted(tensors)[:2]})")
    base = meta.get("progrpo.base_model_hash")
    if check_base and base and base != denoiser.fingerprint():
        raise LoraFileError(
            f"{path} was trained on base model {base}, but this model is {denoiser.fingerprint()}; "
            "load it with the model it was trained on (or pass check_base=False to force)")
    modules = dict(denoiser.net.named_modules())
    absent = sorted(m for m in downs if m not in modules)
    if absent:
        raise LoraFileError(f"{path}: {len(absent)} module(s) not in this model, e.g. {absent[:3]}; "
                            "the LoRA belongs to another model")
    ranks = {int(v.shape[0]) for v in downs.values()}
    if len(ranks) != 1:
        raise LoraFileError(f"{path}: mixed ranks {sorted(ranks)} are not supported")
    rank = ranks.pop()
    alpha_key = prefix + next(iter(downs)) + SUFFIX_ALPHA
    alpha = float(tensors[alpha_key]) if alpha_key in tensors else float(rank)  # no alpha: scale 1
    adapter = LoraAdapter(denoiser, rank, alpha, targets=[f"{m}" for m in downs])
    adapter.load_comfy_state_dict(tensors, source=str(path))
    return adapter
