"""GRPO advantages and the per-step clipped objective, as pure tensor functions.

Shapes: ``B`` prompts, ``K`` trained trajectories per prompt, ``N = B·K`` rows.
"""
from __future__ import annotations

import torch

ADV_NORMS = ("group", "batch")


def advantages(rewards: torch.Tensor, norm: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages of rewards (B, K).

    ``norm="group"``: ``(R − μ_b)/(σ_b + eps)`` per prompt (the paper);
    ``norm="batch"``: per-prompt mean, batch std (Flow-GRPO's default). Std is the population std.
    A group whose rewards are all equal gets zero advantage (never NaN).
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be (B prompts, K trajectories), got shape {tuple(rewards.shape)}")
    if norm not in ADV_NORMS:
        raise ValueError(f"advantage normalisation {norm!r} unknown; expected one of {ADV_NORMS}")
    if not torch.isfinite(rewards).all():
        raise FloatingPointError("rewards contain NaN or infinite values; cannot compute advantages")
    r = rewards.double()
    centred = r - r.mean(dim=1, keepdim=True)  # (B, K)
    if norm == "group":
        std = r.std(dim=1, unbiased=False, keepdim=True)  # (B, 1)
    else:
        std = r.std(unbiased=False).expand(r.shape[0], 1)
    return (centred / (std + eps)).float()


def combined_advantages(components: dict[str, torch.Tensor], weights: dict[str, float],
                        norm: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Weighted sum of each reward's separately normalised advantages (each (B, K))."""
    missing = set(weights) - set(components)
    if missing:
        raise ValueError(f"no scores for reward component(s) {sorted(missing)}")
    return sum(w * advantages(components[name], norm, eps) for name, w in weights.items())


def clustered_fraction(adv: torch.Tensor, delta: float = 0.5) -> float:
    """Fraction of trajectories with ``|A| ≤ δ``: the reward-clustering metric."""
    return float((adv.abs() <= delta).float().mean()) if adv.numel() else 0.0


def clipped_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor,
                 clip_range: float, adv_clip: float) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-style clipped policy loss of one step for rows (N,):
    ``r = exp(logp − logp_old)``, ``L = mean(max(−A·r, −A·clip(r, 1−ε, 1+ε)))``, A clipped to ±adv_clip."""
    a = adv.clamp(-adv_clip, adv_clip)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -a * ratio
    clipped = -a * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "clip_frac": float(((ratio - 1).abs() > clip_range).float().mean()),
            "approx_kl": float(0.5 * ((log_prob - old_log_prob) ** 2).mean()),
            "ratio_mean": float(ratio.mean()),
        }
    return loss, stats


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor,
                    dt: torch.Tensor | float | None = None) -> torch.Tensor:
    """KL between the policy and reference Gaussian transitions of equal std, per row (N,):
    ``mean over elements of (μ_θ − μ_ref)²`` divided by ``2·std²`` — the exact KL of the two
    transitions (``kl_form="transition"``). With ``dt`` (the step's |Δσ|) it is divided by
    ``2·std²/|dt|`` instead: Flow-GRPO's convention for its SDE, whose ``std_dev_t`` is the noise
    coefficient ``s = a·sqrt(σ/(1−σ))`` without the ``sqrt(|dt|)`` (``kl_form="flow-grpo"``, the
    default; it is ``|dt|`` times the transition KL)."""
    kl = ((mean - ref_mean) ** 2).flatten(1).mean(1) / (2 * std.flatten(1)[:, 0] ** 2)
    return kl if dt is None else kl * torch.as_tensor(dt, dtype=kl.dtype, device=kl.device)
