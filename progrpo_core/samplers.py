"""Exploration samplers with log-probabilities, as pure step functions.

Each step either draws the next latent (``prev_sample=None``) or re-scores a given one under the
current model output, computing in float32, and returns ``(prev_sample, mean, std, log_prob)``:

* ``prev_sample``, ``mean``: (N, C, H, W);
* ``std``: (N, 1, 1, 1), the per-row standard deviation of the Gaussian transition;
* ``log_prob``: (N,), the Gaussian log-density of ``prev_sample`` **averaged over latent
  elements** (as Flow-GRPO and DanceGRPO do); for ``cps``, Flow-GRPO's ``−(x − mean)²`` instead
  (``cps_gaussian`` keeps the density).

A step whose std is 0 (the ODE, or the last step of DDIM/CPS) is deterministic: its log-prob is
reported as 0 and it carries no policy gradient; the trainer skips such steps.

``generator`` is one ``torch.Generator`` for the whole batch or a list with one per row; ``noise``
(standard normal, shaped like ``x``) is used as given instead. The group sampler passes noise it
draws per prompt, so a trajectory's noise never depends on the batch around it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

from .denoiser import alpha_bar, epsilon, velocity

Generators = torch.Generator | Sequence[torch.Generator] | None
StepOut = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def randn_rows(shape: Sequence[int], generator: Generators, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise of ``shape``; with a list of generators, row ``i`` uses ``generator[i]``."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for {shape[0]} rows; pass one per row")
    rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=torch.float32) for g in generator]
    return torch.stack(rows).to(device)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std²) averaged over all but the first dim → (N,). Zero where std == 0."""
    std = std.expand_as(x) if std.shape != x.shape else std
    safe = torch.where(std > 0, std, torch.ones_like(std))
    lp = -((x.detach() - mean) ** 2) / (2 * safe**2) - torch.log(safe) - _LOG_SQRT_2PI
    lp = torch.where(std > 0, lp, torch.zeros_like(lp))
    return lp.flatten(1).mean(1)


def squared_error_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Flow-GRPO's CPS log-prob: ``−(x − mean)²`` averaged over all but the first dim → (N,), the
    Gaussian's constants and its ``1/(2·std²)`` dropped. Zero where std == 0."""
    std = std.expand_as(x) if std.shape != x.shape else std
    lp = torch.where(std > 0, -((x.detach() - mean) ** 2), torch.zeros_like(x))
    return lp.flatten(1).mean(1)


def _finish(mean: torch.Tensor, std: torch.Tensor, prev_sample: torch.Tensor | None,
            generator: Generators, noise: torch.Tensor | None = None,
            log_prob: Callable[..., torch.Tensor] = gaussian_log_prob) -> StepOut:
    std = std.expand(mean.shape[0], *([1] * (mean.ndim - 1))).to(mean)
    if prev_sample is None:
        if noise is None:
            noise = randn_rows(mean.shape, generator, mean.device)
        prev_sample = mean + std * noise.to(mean)
    else:
        prev_sample = prev_sample.float()
    return prev_sample, mean, std, log_prob(prev_sample, mean, std)


def _col(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-row (N,) value as a float32 column broadcastable over (N, C, H, W)."""
    v = torch.as_tensor(v, dtype=torch.float32, device=like.device)
    return v.reshape(-1, *([1] * (like.ndim - 1))) if v.ndim else v.reshape(1, *([1] * (like.ndim - 1)))


def flow_sde_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, noise_level: float,
                  prev_sample: torch.Tensor | None = None, generator: Generators = None,
                  noise: torch.Tensor | None = None) -> StepOut:
    """Flow-GRPO SDE step for ``x_σ = (1−σ)x0 + σε`` with velocity ``v`` (N, C, H, W).

    ``dt = σ_next − σ < 0``, ``s = a·sqrt(σ/(1−σ))`` (at σ = 1 the denominator uses σ_next, as
    Flow-GRPO uses the schedule's second sigma there),
    ``mean = x·(1 + s²·dt/(2σ)) + v·(1 + s²(1−σ)/(2σ))·dt``, ``std = s·sqrt(−dt)``.
    """
    x, v = x.float(), v.float()
    s_t, s_n = _col(sigma, x), _col(sigma_next, x)
    dt = s_n - s_t
    denom_sigma = torch.where(s_t >= 1, s_n, s_t)
    s = noise_level * torch.sqrt(s_t / (1 - denom_sigma))
    mean = x * (1 + s**2 / (2 * s_t) * dt) + v * (1 + s**2 * (1 - s_t) / (2 * s_t)) * dt
    std = s * torch.sqrt(-dt)
    return _finish(mean, std, prev_sample, generator, noise)


def _cps(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, noise_level: float) -> tuple[torch.Tensor, torch.Tensor]:
    x, v = x.float(), v.float()
    s_t, s_n = _col(sigma, x), _col(sigma_next, x)
    std = s_n * math.sin(noise_level * math.pi / 2)
    x0 = x - s_t * v
    x1 = x + (1 - s_t) * v
    return x0 * (1 - s_n) + x1 * torch.sqrt((s_n**2 - std**2).clamp_min(0)), std


def cps_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, noise_level: float,
             prev_sample: torch.Tensor | None = None, generator: Generators = None,
             noise: torch.Tensor | None = None) -> StepOut:
    """Coefficients-Preserving Sampling: ``std = σ_next·sin(a·π/2)``,
    ``mean = x0̂·(1−σ_next) + x1̂·sqrt(σ_next² − std²)`` with ``x0̂ = x − σv``, ``x1̂ = x + (1−σ)v``;
    log-prob as Flow-GRPO's CPS branch, ``−(x − mean)²`` (:func:`squared_error_log_prob`)."""
    mean, std = _cps(x, v, sigma, sigma_next, noise_level)
    return _finish(mean, std, prev_sample, generator, noise, squared_error_log_prob)


def cps_gaussian_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, noise_level: float,
                      prev_sample: torch.Tensor | None = None, generator: Generators = None,
                      noise: torch.Tensor | None = None) -> StepOut:
    """:func:`cps_step` with the full Gaussian log-density: every log-ratio is the reference's
    divided by ``2·std²``, so the PPO clip range acts on the true likelihood ratio."""
    mean, std = _cps(x, v, sigma, sigma_next, noise_level)
    return _finish(mean, std, prev_sample, generator, noise)


def dance_sde_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, noise_level: float,
                   prev_sample: torch.Tensor | None = None, generator: Generators = None,
                   noise: torch.Tensor | None = None) -> StepOut:
    """DanceGRPO's flow SDE with constant η (``noise_level``): with ``Δ = σ − σ_next > 0``,
    score ``∇log p ≈ −(x − (1−σ)x0̂)/σ²``, ``mean = x − Δ·v + ½η²·Δ·score``, ``std = η·sqrt(Δ)``."""
    x, v = x.float(), v.float()
    s_t, s_n = _col(sigma, x), _col(sigma_next, x)
    delta = s_t - s_n
    x0 = x - s_t * v
    score = -(x - x0 * (1 - s_t)) / s_t**2
    mean = x - delta * v + 0.5 * noise_level**2 * delta * score
    std = noise_level * torch.sqrt(delta)
    return _finish(mean, std, prev_sample, generator, noise)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_bar, alpha_bar_prev, eta: float,
              prev_sample: torch.Tensor | None = None, generator: Generators = None,
              noise: torch.Tensor | None = None) -> StepOut:
    """DDIM with η (DDPO / DanceGRPO) for ``x_t = sqrt(ᾱ)x0 + sqrt(1−ᾱ)ε``:
    ``x0̂ = (x − sqrt(1−ᾱ)ε̂)/sqrt(ᾱ)``, ``var = (1−ᾱ_prev)/(1−ᾱ)·(1 − ᾱ/ᾱ_prev)``,
    ``std = η·sqrt(var)``, ``mean = sqrt(ᾱ_prev)·x0̂ + sqrt(1−ᾱ_prev−std²)·ε̂``."""
    x, eps = x.float(), eps.float()
    ab, ab_prev = _col(alpha_bar, x), _col(alpha_bar_prev, x)
    x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    std = eta * var.clamp_min(0).sqrt()
    mean = ab_prev.sqrt() * x0 + (1 - ab_prev - std**2).clamp_min(0).sqrt() * eps
    return _finish(mean, std, prev_sample, generator, noise)


# ---- the sampler table, and one entry point from the x0 estimate --------------------------------

@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """One exploration sampler: the model families it fits, its default noise level (the SDE's
    ``a``/``η`` or DDIM's ``η``) and its step function in its family's own terms — for flow models
    ``step(x, v, σ, σ_next, noise, prev_sample, generator, noise_tensor)`` with the velocity ``v``,
    for ε models ``step(x, ε, ᾱ, ᾱ_next, noise, …)`` — or ``None`` for ``ode``, the deterministic
    step of either family. ``kl_per_unit_time``: its Flow-GRPO-style KL divides by the SDE's noise
    coefficient (``std²/|dt|``), not by the transition's variance (docs/METHOD.md §6).

    A new sampler is a step function and a row in :data:`SAMPLER_SPECS`: the config, the nodes'
    choices, their tooltips and the README's table follow from the table."""

    name: str
    families: tuple[str, ...]
    default_noise: float
    step: Callable[..., StepOut] | None
    summary: str
    kl_per_unit_time: bool = False


SAMPLER_SPECS: dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec("flow_sde", ("flow",), 0.7, flow_sde_step, "Flow-GRPO's SDE", kl_per_unit_time=True),
    SamplerSpec("cps", ("flow",), 0.7, cps_step, "coefficients-preserving sampling (Flow-GRPO's log-prob -(x-mean)^2)"),
    SamplerSpec("cps_gaussian", ("flow",), 0.7, cps_gaussian_step,
                "coefficients-preserving sampling with the full Gaussian log-density"),
    SamplerSpec("dance_sde", ("flow",), 0.3, dance_sde_step, "DanceGRPO's flow SDE with constant eta",
                kl_per_unit_time=True),
    SamplerSpec("ddim", ("eps",), 1.0, ddim_step, "DDIM with eta (DDPO, DanceGRPO)"),
    SamplerSpec("ode", ("flow", "eps"), 0.0, None, "deterministic: Euler (flow) or DDIM eta = 0 (eps)"),
)}
DEFAULT_SAMPLER = {"flow": "flow_sde", "eps": "ddim"}
ODE_STEPS = {"flow": flow_sde_step, "eps": ddim_step}  # ``ode``: the family's step at noise 0


def samplers_for(family: str) -> tuple[str, ...]:
    """The samplers that fit a ``family`` model."""
    return tuple(n for n, s in SAMPLER_SPECS.items() if family in s.families)


def sampler_help() -> str:
    """Every sampler and the families it fits, for help texts and tooltips."""
    return "; ".join(f"{n} ({'/'.join(s.families)}): {s.summary}" for n, s in SAMPLER_SPECS.items())


def samplers_markdown() -> str:
    """The README's sampler table (a test keeps the README equal to it)."""
    rows = ["| `--sampler.sampler` | model family | default noise level | what it is |", "|---|---|---|---|"]
    for n, s in SAMPLER_SPECS.items():
        rows.append(f"| `{n}` | {', '.join(s.families)} | {s.default_noise:g} | {s.summary} |")
    return "\n".join(rows)


def sampler_names() -> str:
    """Every sampler and the families it fits, in a few words: ``"flow_sde, cps (flow), ddim (eps), …"``."""
    return ", ".join(f"{n} ({'/'.join(s.families)})" for n, s in SAMPLER_SPECS.items())


def noise_help() -> str:
    """Every sampler's default noise level, for help texts and tooltips."""
    return ", ".join(f"{n} {s.default_noise:g}" for n, s in SAMPLER_SPECS.items() if n != "ode")


def check_sampler(family: str, sampler: str) -> None:
    if family not in DEFAULT_SAMPLER:
        raise ValueError(f"model family {family!r} is not supported; expected 'flow' or 'eps'")
    if sampler not in samplers_for(family):
        raise ValueError(
            f"sampler {sampler!r} does not fit a {family!r} model; expected one of "
            f"{', '.join(samplers_for(family))}")


def step_from_x0(family: str, sampler: str, x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
                 sigma_next: torch.Tensor, noise_level: float, prev_sample: torch.Tensor | None = None,
                 generator: Generators = None, noise: torch.Tensor | None = None) -> StepOut:
    """Take (or re-score) one step given the model's x0 estimate. ``sampler="ode"`` is the
    deterministic Euler (flow) / DDIM η=0 (eps) step used for evaluation. ``noise`` (standard
    normal, shaped like ``x``) is used instead of drawing from ``generator``."""
    spec = SAMPLER_SPECS[sampler]
    step, level = (ODE_STEPS[family], 0.0) if spec.step is None else (spec.step, noise_level)
    if family == "flow":
        return step(x, velocity(x.float(), x0.float(), sigma), sigma, sigma_next, level, prev_sample, generator, noise)
    eps = epsilon(x.float(), x0.float(), sigma)
    return step(x, eps, alpha_bar(torch.as_tensor(sigma)).float(), alpha_bar(torch.as_tensor(sigma_next)).float(),
                level, prev_sample, generator, noise)


def sample_ode(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback=None, disable=None) -> torch.Tensor:
    """Deterministic sampling for evaluation (k-diffusion signature).

    ``model`` is a :class:`~progrpo_core.denoiser.Denoiser`; ``extra_args`` carries ``cond``
    and ``cfg``. Returns the final latent (the x0 at σ = 0)."""
    extra_args = extra_args or {}
    cond, cfg = extra_args.get("cond"), extra_args.get("cfg", 1.0)
    n = x.shape[0]
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = model.denoise(x, s.expand(n), cond, cfg)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": s, "denoised": x0})
        x = x0 if float(s_next) == 0 else step_from_x0(model.family, "ode", x, x0, s, s_next, 0.0)[0]
    return x
