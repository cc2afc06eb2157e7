"""The LoRA file format: what ComfyUI's stock LoraLoader reads, plus the run's metadata.

Per adapted module ``<path>`` of the network (``P`` = the denoiser's ``lora_prefix``,
``"diffusion_model."``)::

    P<path>.lora_down.weight   (rank, in)       = peft lora_A
    P<path>.lora_up.weight     (out, rank)      = peft lora_B
    P<path>.alpha              0-d float32      scale = alpha / rank (peft and ComfyUI agree)

The safetensors header holds ``progrpo.format``, ``progrpo.rank``, ``progrpo.alpha``,
``progrpo.targets``, ``progrpo.base_model_hash`` and the run's metadata as ``progrpo.<key>``
(JSON-encoded unless a string) — never in the file name. For model browsers (ComfyUI's asset
metadata reads ``ss_base_model_version`` / ``modelspec.base_model``; others the SAI ModelSpec) it
also holds ``modelspec.sai_model_spec``, ``modelspec.architecture`` (``<base>/lora``),
``modelspec.title``, ``modelspec.description``, ``modelspec.base_model`` and
kohya's ``ss_base_model_version``, where the base model's architecture is known. Every writer and reader of LoRA files
(the core's peft adapter, the host's weight-wrapper adapter, the nodes) goes through here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from .io import save_safetensors

SUFFIX_DOWN, SUFFIX_UP, SUFFIX_ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
FORMAT = "comfyui-lora"
HEADER_PREFIX = "progrpo."

Pairs = Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (down (r, in), up (out, r))


class LoraFileError(ValueError):
    """A LoRA file that does not fit the model it is applied to."""


def check_rank_alpha(rank: int, alpha: float) -> tuple[int, float]:
    """Validated ``(rank, alpha)`` of a LoRA (scale = alpha / rank)."""
    if rank < 1:
        raise ValueError(f"LoRA rank={rank} must be >= 1")
    if alpha <= 0:
        raise ValueError(f"LoRA alpha={alpha} must be > 0")
    return int(rank), float(alpha)


def to_comfy(pairs: Pairs, alpha: float, prefix: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``{module: (down, up)}`` as ComfyUI LoRA tensors (copies on the CPU, never views of the
    parameters, which go on training)."""
    out = {}
    for path, (down, up) in pairs.items():
        key = prefix + path
        out[key + SUFFIX_DOWN] = down.detach().to("cpu", dtype, copy=True).contiguous()
        out[key + SUFFIX_UP] = up.detach().to("cpu", dtype, copy=True).contiguous()
        out[key + SUFFIX_ALPHA] = torch.tensor(alpha, dtype=torch.float32)
    return out


def keys_of(paths, prefix: str) -> set[str]:
    """Every key a LoRA of the modules ``paths`` has."""
    return {prefix + p + s for p in paths for s in (SUFFIX_DOWN, SUFFIX_UP, SUFFIX_ALPHA)}


def modules_of(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The module paths a ComfyUI LoRA adapts, each with its ``lora_down`` tensor."""
    return {k[len(prefix):-len(SUFFIX_DOWN)]: v for k, v in tensors.items()
            if k.startswith(prefix) and k.endswith(SUFFIX_DOWN)}


def copy_into(pairs: Pairs, alpha: float, prefix: str, tensors: Mapping[str, torch.Tensor], source: str,
              describe: str) -> None:
    """Copy a ComfyUI-format LoRA into the parameters ``pairs``; every key, shape and the alpha
    must match (``describe`` says what the receiving adapter is, for the error)."""
    expected = keys_of(pairs, prefix)
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise LoraFileError(
            f"{source} does not fit this model's adapters: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:3]}; was it trained on another base model or "
            f"with other targets/rank? ({describe})")
    with torch.no_grad():
        for path, (down, up) in pairs.items():
            key = prefix + path
            for suffix, param in ((SUFFIX_DOWN, down), (SUFFIX_UP, up)):
                t = tensors[key + suffix]
                if t.shape != param.shape:
                    raise LoraFileError(f"{source}: {key + suffix} has shape {tuple(t.shape)}, the model expects "
                                        f"{tuple(param.shape)}; it belongs to another model")
                param.copy_(t.to(param))
            a = float(tensors[key + SUFFIX_ALPHA])
            if abs(a - alpha) > 1e-6:
                raise LoraFileError(f"{source}: alpha {a} differs from the adapter's {alpha}")


# ComfyUI model config class -> (kohya's ss_base_model_version, ModelSpec architecture id)
BASE_MODELS = {
    "SD15": ("sd_v1", "stable-diffusion-v1"),
    "SD20": ("sd_v2", "stable-diffusion-v2-768-v"), "SD21UnclipL": ("sd_v2", "stable-diffusion-v2-768-v"),
    "SDXL": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base"), "SDXLRefiner": ("sdxl_refiner_v1-0",
                                                                              "stable-diffusion-xl-v1-refiner"),
    "SD3": ("sd3", "stable-diffusion-v3-medium"),
    "Flux": ("flux1", "flux-1-dev"), "FluxSchnell": ("flux1", "flux-1-schnell"),
}
MODELSPEC_VERSION = "1.0.0"


def modelspec(metadata: Mapping[str, Any]) -> dict[str, str]:
    """ModelSpec / kohya entries from the run's metadata (``architecture``, ``title``, ``method``,
    ``reward``, ``base_model``); only those that are known. No date: the same seed gives the same file."""
    out = {"modelspec.sai_model_spec": MODELSPEC_VERSION, "modelspec.implementation": "comfyui",
           "modelspec.title": str(metadata.get("title") or f"ProGRPO {metadata.get('method', '')} LoRA".replace("  ", " "))}
    arch = metadata.get("architecture")
    if arch in BASE_MODELS:
        kohya, spec = BASE_MODELS[arch]
        out.update({"modelspec.architecture": f"{spec}/lora", "modelspec.base_model": kohya,
                    "ss_base_model_version": kohya})
    if metadata.get("method"):
        out["modelspec.description"] = (f"LoRA trained with ProGRPO ({metadata['method']}) on the reward "
                                        f"{metadata.get('reward', '?')}" + (f" from {metadata['base_model']}"
                                                                           if metadata.get("base_model") else ""))
    return out


def header(rank: int, alpha: float, targets: list[str], base_model_hash: str,
           metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The safetensors header of a LoRA file (values as strings)."""
    meta = {"progrpo.format": FORMAT, "progrpo.rank": str(rank), "progrpo.alpha": str(alpha),
            "progrpo.targets": json.dumps(list(targets)), "progrpo.base_model_hash": base_model_hash}
    for k, v in (metadata or {}).items():
        if v is not None:
            meta[HEADER_PREFIX + k] = v if isinstance(v, str) else json.dumps(v)
    meta.update(modelspec(metadata or {}))
    return meta


def retitled(meta: Mapping[str, str], title: str) -> dict[str, str]:
    """A header with ``modelspec.title`` (and ``progrpo.title``) set to ``title``: a saved file's name."""
    return {**meta, "modelspec.title": title, HEADER_PREFIX + "title": title}


def decode_header(meta: Mapping[str, str]) -> dict[str, Any]:
    """The ``progrpo.*`` entries of a header, without the prefix, JSON-decoded where possible."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if k.startswith(HEADER_PREFIX):
            try:
                out[k[len(HEADER_PREFIX):]] = json.loads(v)
            except ValueError:
                out[k[len(HEADER_PREFIX):]] = v
    return out


def save_lora_file(tensors: Mapping[str, torch.Tensor], path: str | Path, meta: Mapping[str, str]) -> Path:
    """Write a LoRA file atomically."""
    return save_safetensors(dict(tensors), path, dict(meta))


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, header)`` of a LoRA file; a missing or unreadable file gets a clear error."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from .io import input_file

    path = input_file(path, "LoRA file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    except (SafetensorError, OSError) as e:
        raise LoraFileError(f"{path} is not a readable safetensors LoRA file ({e})") from e
