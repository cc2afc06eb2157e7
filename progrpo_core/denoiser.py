"""The one interface samplers, projection and training talk to: a denoiser.

Two model families, each sampled in its own native space:

* ``"flow"`` (rectified flow / flow matching; SD3.x, Flux):  ``x_σ = (1−σ)·x0 + σ·ε``, σ from 1
  (noise) to 0 (clean); velocity ``v = (x − x0)/σ``.
* ``"eps"`` (ε-prediction VP diffusion; SD1.x, SDXL):  ``x_t = sqrt(ᾱ)·x0 + sqrt(1−ᾱ)·ε``.
  Steps are addressed by the k-diffusion sigma ``σ = sqrt((1−ᾱ)/ᾱ)`` (ComfyUI's sigma), so
  ``ᾱ = 1/(1+σ²)``; the model's own ``alphas_cumprod`` table fixes which sigmas exist.

A denoiser returns the x0 estimate ``D(x, σ, c)`` for latents in that native space (with
classifier-free guidance when ``cfg != 1``). Everything else — the velocity, the ε estimate,
the one-step proxy — is derived from x0 here, so a backend implements only ``denoise``.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

FAMILIES = ("flow", "eps")


@runtime_checkable
class Denoiser(Protocol):
    """What a backend (the built-in digits models, a ComfyUI MODEL, …) provides.

    Attributes:
        family: ``"flow"`` or ``"eps"``.
        latent_shape: ``(C, H, W)`` of one latent.
        net: the ``nn.Module`` that LoRA adapters are attached to.
        lora_prefix: prefix of ``net``'s module paths in ComfyUI LoRA keys (``"diffusion_model."``).
        lora_targets: names (suffixes) of the Linear/Conv modules that get adapters.
        device: where the model computes; latents and noise live there.
        builtin: True for the built-in digits models (small: cheap defaults for evaluation and memory).
        default_cfg: the guidance scale ``sampler.cfg auto`` means for this model (optional, 1).
        architecture: what the base model is, as ComfyUI's model config names it (``"SD15"``,
            ``"SDXL"``, ``"SD3"``, ``"Flux"``, …; optional): LoRA headers name the base model with it.

    Optional: ``set_precision(dtype)`` makes the model compute in ``dtype`` (its ``denoise`` still
    takes and returns float32); ``decode_proxy(x0)``, a cheaper decode for the pruning checkpoints'
    one-step previews (e.g. ComfyUI's TAESD), same contract as ``decode`` (:func:`proxy_decoder`).
    """

    family: str
    latent_shape: tuple[int, int, int]
    net: nn.Module
    lora_prefix: str
    lora_targets: Sequence[str]
    device: torch.device

    def sigmas(self, steps: int) -> torch.Tensor:
        """The sampling schedule: ``steps + 1`` descending float32 sigmas ending in 0."""

    def encode_prompts(self, prompts: Sequence[str]) -> Any:
        """Conditioning for a batch of rows, one prompt each (selectable with ``select_cond``)."""

    def select_cond(self, cond: Any, index: torch.Tensor) -> Any:
        """The rows ``index`` (a 1-D long tensor) of a batched conditioning."""

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any, cfg: float = 1.0) -> torch.Tensor:
        """x0 estimate, float32, same shape as ``x`` (N, C, H, W); ``sigma`` is (N,)."""

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, H, W) to images (N, 3, H', W') float in [0, 1]."""

    def fingerprint(self) -> str:
        """A short hash of the base weights, written into LoRA headers."""


def proxy_decoder(model: Denoiser):
    """How the pruning previews of ``model`` are decoded: its ``decode_proxy`` when it has one (a
    cheaper decoder for the previews only), else ``decode``. Final images always use ``decode``."""
    return getattr(model, "decode_proxy", None) or model.decode


def cfg_rows(cfg: float) -> int:
    """Network rows one latent row costs at guidance scale ``cfg``: a guided row (cfg ≠ 1) runs the
    model twice, conditioned and unconditioned."""
    return 1 if cfg == 1.0 else 2


def call_slices(n: int, micro_batch: int | None, cfg: float = 1.0) -> list[slice]:
    """``n`` rows cut into consecutive model calls of at most ``micro_batch`` network rows each (a
    guided row counts two); one call for all of them when ``micro_batch`` is None."""
    per = max(1, n if not micro_batch else micro_batch // cfg_rows(cfg))
    return [slice(lo, min(lo + per, n)) for lo in range(0, n, per)]


def alpha_bar(sigma: torch.Tensor) -> torch.Tensor:
    """ᾱ for a VP sigma: ``1/(1+σ²)``."""
    return 1.0 / (1.0 + sigma.double() ** 2)


def velocity(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Flow velocity ``v = (x − x0)/σ`` (σ broadcast over (N, C, H, W))."""
    return (x - x0) / _b(sigma, x)


def epsilon(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ε estimate of a VP latent: ``(x − sqrt(ᾱ)·x0)/sqrt(1−ᾱ)``."""
    ab = alpha_bar(_b(sigma, x)).float()
    return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


def noise_to_start(noise: torch.Tensor, sigma_max: torch.Tensor, family: str) -> torch.Tensor:
    """The first latent of a rollout from pure-noise ``ε``: flow at σ=1 is ``ε`` itself; a VP
    latent at ``σ_max`` is ``sqrt(ᾱ)·0 + sqrt(1−ᾱ)·ε``."""
    if family == "flow":
        return noise * float(sigma_max)
    ab = float(alpha_bar(torch.as_tensor(sigma_max)))
    return noise * (1 - ab) ** 0.5


def flow_sigmas(steps: int, shift: float = 1.0) -> torch.Tensor:
    """Linear flow schedule 1 → 0 in ``steps`` steps, with the SD3 time shift
    ``σ' = shift·σ/(1 + (shift−1)·σ)``."""
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if shift != 1.0:
        s = shift * s / (1 + (shift - 1) * s)
    return s.float()


def vp_sigmas(alphas_cumprod: torch.Tensor, steps: int) -> torch.Tensor:
    """DDIM's evenly spaced ("leading"-free, trailing) timesteps of a VP table, as sigmas, ending in 0."""
    n = alphas_cumprod.shape[0]
    t = torch.linspace(n - 1, 0, steps).round().long()
    ab = alphas_cumprod.double()[t]
    sig = ((1 - ab) / ab).sqrt()
    return torch.cat([sig, sig.new_zeros(1)]).float()


def _b(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return sigma.reshape(-1, *([1] * (like.ndim - 1))) if sigma.ndim else sigma
