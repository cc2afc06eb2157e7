"""The "auto" schedule: choose pruning checkpoints from measured proxy fidelity, not fixed fractions.

The paper fixes checkpoints at 50 % / 70 % of the steps. How well the one-step proxy ranks a
group depends on the model and — the bench shows — on the policy: while the base model's rewards
are bimodal any checkpoint picks a high-variance subset, but once most samples succeed only a late
proxy can find the few failures that carry the gradient. So the auto schedule re-measures:

1. probe: sample ``prompts`` full groups of ``G_max`` with the current policy, no pruning, recording
   the proxy at every step (``probe.record_probe``); its model evaluations are charged to
   the run, like any other compute;
2. replay every funnel ``G_max → K1 → K2`` over checkpoint pairs on the probe and measure its
   *selection efficiency*: the final-reward std of the kept ``K2`` divided by that of the oracle
   (OVF on the true final rewards of all ``G_max``);
3. take the cheapest funnel (sampling evaluations per prompt) whose efficiency reaches
   ``efficiency``; if none does, the most efficient one.

``criterion="rho"`` instead places checkpoint ``i`` at the first step whose within-group Spearman ρ
reaches ``rho[i]`` (ρ thresholds rather than a replayed funnel).

The trainer then samples with that schedule until the next re-probe.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from . import probe as P
from ..compute import Compute
from ..denoiser import cfg_rows
from ..methods import PruneSchedule


def candidate_schedules(steps: int, group: int, keep: tuple[int, ...], selector: str = "ovf") -> list[PruneSchedule]:
    """Every increasing placement of ``len(keep)`` checkpoints in the core's steps ``1..T−1``."""
    out = []
    for cps in itertools.combinations(range(1, steps), len(keep)):
        s = PruneSchedule(group, tuple(cps), tuple(keep), selector=selector)
        s.validate(steps)
        out.append(s)
    return out


def selection_efficiency(probe: P.Probe, schedule: PruneSchedule, oracle_std: np.ndarray, seed: int = 0) -> float:
    """Mean over groups (with a non-constant oracle subset) of std(kept) / std(oracle kept)."""
    kept = P.replay_funnel(probe, schedule, seed)
    r = np.take_along_axis(probe.final, kept, axis=1).std(axis=1)  # (B,)
    ok = oracle_std > 1e-9
    return float((r[ok] / oracle_std[ok]).mean()) if ok.any() else 1.0


def schedule_table(probe: P.Probe, steps: int, group: int, keep: tuple[int, ...]) -> list[dict]:
    """Every candidate funnel with its sampling cost per prompt and its selection efficiency."""
    oracle = P.replay_funnel(probe, PruneSchedule(group, final_keep=keep[-1]))
    oracle_std = np.take_along_axis(probe.final, oracle, axis=1).std(axis=1)
    rows = []
    for s in candidate_schedules(steps, group, keep):
        rows.append({"checkpoints": list(s.checkpoints), "nfe": s.sampling_nfe(steps),
                     "efficiency": selection_efficiency(probe, s, oracle_std)})
    return rows


def pick(rows: list[dict], efficiency: float) -> dict:
    """The cheapest row reaching ``efficiency`` (ties: the more efficient); else the most efficient."""
    ok = [r for r in rows if r["efficiency"] >= efficiency]
    if ok:
        return min(ok, key=lambda r: (r["nfe"], -r["efficiency"]))
    return max(rows, key=lambda r: (r["efficiency"], -r["nfe"]))


def pick_by_rho(fid: list[dict], thresholds: tuple[float, ...], steps: int) -> list[int]:
    """Checkpoints (prune after ``c`` model calls): checkpoint ``i`` after the first call count (past the
    previous checkpoint) whose proxy has ρ ≥ ``thresholds[i]``; the latest admissible one if none does."""
    out: list[int] = []
    for i, th in enumerate(thresholds):
        lo = (out[-1] + 1) if out else 1
        hi = steps - (len(thresholds) - i)  # leave room for the later checkpoints
        pick = next((r["calls"] for r in fid if lo <= r["calls"] <= hi and r["rho_mean"] is not None
                     and r["rho_mean"] >= th), hi)
        out.append(pick)
    return out


def choose_schedule(trainer, seed: int = 0, group: int = 48, keep: tuple[int, ...] = (24, 12),
                    prompts: int = 6, efficiency: float = 0.9, tag: int = 0, criterion: str = "efficiency",
                    rho: tuple[float, ...] = (0.9, 0.95), **_: Any) -> dict:
    """Probe the trainer's current policy and return ``{"schedule", "compute", "table", "fidelity"}``.
    ``compute`` holds the probe's model evaluations and reward calls (charge it to the run)."""
    s = trainer.sampler
    names = [trainer.prompts[(tag * prompts + i) % len(trainer.prompts)] for i in range(prompts)]
    seeds = [900_000_000 + 10_000 * seed + 100 * tag + i for i in range(prompts)]
    probe = P.record_probe(trainer.model, trainer.reward, names, seeds, s.steps, group, s.sampler,
                           s.noise_level, s.cfg)
    comp = Compute(nfe_sample=probe.nfe, model_calls=s.steps * cfg_rows(s.cfg),
                   proxy_decodes=group * prompts * s.steps, proxy_rewards=group * prompts * s.steps,
                   final_decodes=group * prompts, final_rewards=group * prompts)
    rows = schedule_table(probe, s.steps, group, tuple(keep))
    fid = P.fidelity(probe)
    if criterion == "efficiency":
        best = pick(rows, efficiency)
    elif criterion == "rho":
        cps = pick_by_rho(fid, tuple(rho), s.steps)
        best = next(r for r in rows if r["checkpoints"] == cps)
    else:
        raise ValueError(f"auto criterion {criterion!r} unknown; expected 'efficiency' or 'rho'")
    schedule = PruneSchedule(group, tuple(best["checkpoints"]), tuple(keep))
    return {"schedule": schedule, "compute": comp, "choice": best, "table": rows, "fidelity": fid}
