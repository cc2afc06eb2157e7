"""The slow-collapse guard: a learning rate that is too high, but not so high that the LoRA's norm
jumps (``Trainer.check_divergence``), drives the policy onto one output — on the digits, one digit
whatever the prompt — over several epochs. Two signs, measured against the run's own start:

* the evaluation reward stays below the evaluation before training by more than ``TOLERANCE`` ×
  the first epoch's reward spread, for ``EVALS`` evaluations in a row;
* the trained rewards' spread falls below ``FLAT`` × the first epoch's for ``FLAT_EPOCHS`` epochs
  in a row while their mean sits below the first epoch's by the same tolerance: every group
  draws the same (poor) image, so there is nothing left to learn from.

A run reaching the top of its reward also loses its spread, but with a mean above the start, so it
is left alone. The spread of the first epoch sets the scale, so the guard works for any reward's
units; without a spread (a constant reward) it stays silent.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from .state import CLI_WORDS, TrainingStopped, Words

EVALS = 2           # evaluations in a row below the start
TOLERANCE = 0.25    # × the first epoch's trained-reward std
FLAT = 0.05         # spread, × the first epoch's, that counts as none
FLAT_EPOCHS = 3     # epochs in a row without spread


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _mean(row: dict[str, Any]) -> float | None:
    return _num(row.get("reward_group_mean", row.get("reward_mean")))


def evidence(rows: Sequence[dict[str, Any]], before: float | None,
             after: tuple[int, float] | None = None) -> tuple[str, bool] | None:
    """``(what was seen, firm)`` when the rows (and the evaluation ``after`` training) show a
    collapse; ``firm`` is False for a single evaluation below the start (a warning, not a stop)."""
    first = next((r for r in rows if _num(r.get("reward_std"))), None)
    if first is None:
        return None
    scale, start = float(first["reward_std"]), _mean(first)
    tol = TOLERANCE * scale
    evals = [(int(r["epoch"]), float(r["eval_reward"])) for r in rows if _num(r.get("eval_reward")) is not None]
    if after is not None and _num(after[1]) is not None:
        evals.append(after)
    before = _num(before)
    if before is not None and evals:
        low = [e for e in evals[-EVALS:] if e[1] < before - tol]
        if len(low) == EVALS or (after is not None and evals[-1:] == low):
            trail = " → ".join(f"{v:.4g} at epoch {e}" for e, v in evals[-EVALS:])
            return (f"the evaluation reward fell from {before:.4g} before training to {trail} (more than "
                    f"{tol:.3g}, a quarter of the first epoch's reward spread, below the start)", len(low) == EVALS)
    tail = rows[-FLAT_EPOCHS:]
    if start is not None and len(tail) == FLAT_EPOCHS and all(
            _num(r.get("reward_std")) is not None and r["reward_std"] < FLAT * scale
            and _mean(r) is not None and _mean(r) < start - tol for r in tail):
        last = tail[-1]
        return (f"for {FLAT_EPOCHS} epochs in a row (to epoch {last['epoch']}) every trained image got nearly the "
                f"same reward (spread {last['reward_std']:.3g}, against {scale:.3g} in epoch {first['epoch']}) at a "
                f"mean of {_mean(tail[-1]):.4g}, below the first epoch's {start:.4g}: the policy has collapsed onto "
                "one output", True)
    return None


def check_collapse(rows: Sequence[dict[str, Any]], before: dict[str, Any] | None, lr: float, out: str | None,
                   words: Words = CLI_WORDS, after: tuple[int, float] | None = None) -> str | None:
    """Raise :class:`TrainingStopped` on firm evidence of a collapse (see the module docstring);
    return a warning for a single low evaluation ``after`` training; else None."""
    found = evidence(rows, (before or {}).get("reward"), after)
    if found is None:
        return None
    what, firm = found
    lr_name, kl = words.setting("grpo.lr"), words.setting("grpo.kl_beta")
    advice = (f"{lr_name}={lr:g} is probably too high for this model: start the run again with a lower one (try "
              f"{lr / 10:g}; a resumed run keeps its learning rate), or hold the policy near the model with {kl} > 0")
    if not firm:
        return f"warning: {what}. If it persists, {advice}."
    return_to = "" if out is None else (f" The checkpoints in {out} are kept as they are; those written since the "
                                        "reward began to fall hold the collapsing policy.")
    raise TrainingStopped(f"stopped: the policy is collapsing — {what}. {advice}.{return_to}")
