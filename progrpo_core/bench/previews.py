"""``python -m progrpo_core bench --previews``: do smaller pruning previews keep the proxy's ranking?

The trainer can decode its pruning previews from the x0 latent pooled to a fraction of its size
(``schedule.proxy_scale``), so that a reward model that looks at 224² is not fed a 512² or 1024²
decode it throws away. A preview that costs less is only worth it if it ranks the group as the
full-size one does. On full, unpruned groups of each built-in model (the same trajectories at every
scale: sampling never sees the scale), for each scale and each checkpoint the presets prune at:

* ``rho_final``: the within-group Spearman ρ between the preview's reward and the final reward;
* ``rho_full``: the ρ between the pooled and the full-size preview's rewards;
* ``overlap``: the fraction of the 12 trajectories OVF keeps from 24 that the full-size preview
  keeps too;
* ``kept_std``: the std of the kept trajectories' *final* rewards (what GRPO learns from), against
  the full-size preview's kept set.

The built-in models are pixel-space 8×8 digits, so a scale of 0.5 leaves 4×4 previews: a far
harsher cut than 512² → 256² on a real model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SCALES = (1.0, 0.75, 0.5, 0.25)
MODELS = {"digits-flow": ("flow_sde", 0.7), "digits-eps": ("ddim", 1.0), "digits-pair-flow": ("flow_sde", 0.7)}


def measure(model_name: str, scales=SCALES, prompts: int = 32, group: int = 24, steps: int = 10,
            checkpoints=(3, 5, 7)) -> list[dict]:
    """One row per (scale, checkpoint) for ``model_name``'s base policy (see the module's text)."""
    import torch

    from . import probe as P
    from ..embedded import load_digits_model
    from ..methods import PruneSchedule
    from ..rewards import build_reward

    torch.manual_seed(0)
    reward = build_reward("digit")
    model = load_digits_model(model_name)
    sampler, noise = MODELS[model_name]
    names = [model.default_prompts[i % len(model.default_prompts)] for i in range(prompts)]
    seeds = [900_000 + i for i in range(prompts)]
    probes = {s: P.record_probe(model, reward, names, seeds, steps, group, sampler, noise, proxy_scale=s)
              for s in scales}
    full = probes[1.0] if 1.0 in probes else P.record_probe(model, reward, names, seeds, steps, group, sampler, noise)
    rows = []
    for c in checkpoints:
        sched = PruneSchedule(group, (c,), (group // 2,))
        kept_full = P.replay_funnel(full, sched)
        for s, pr in probes.items():
            if not np.allclose(pr.final, full.final):
                raise RuntimeError("the probes' trajectories differ between scales; sampling must not see the scale")
            kept = P.replay_funnel(pr, sched)
            rho_final = [P.spearman(pr.proxy[c - 1, b], pr.final[b]) for b in range(prompts)]
            rho_full = [P.spearman(pr.proxy[c - 1, b], full.proxy[c - 1, b]) for b in range(prompts)]
            overlap = np.mean([len(set(kept[b]) & set(kept_full[b])) / kept.shape[1] for b in range(prompts)])
            rows.append({"model": model_name, "scale": s, "checkpoint": c, "of": steps,
                         "rho_final": float(np.nanmean(rho_final)), "rho_full": float(np.nanmean(rho_full)),
                         "overlap": float(overlap), "kept_std": P.selection_stats(pr, kept)["std"],
                         "kept_std_full": P.selection_stats(full, kept_full)["std"],
                         "group_std": float(full.final.std(axis=1).mean())})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | checkpoint | scale | ρ with final | ρ with full-size preview | OVF keeps the same | "
             "kept std (full-size preview's; whole group's) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['checkpoint']} of {r['of']} | {r['scale']:g} | {r['rho_final']:.3f} | "
                     f"{r['rho_full']:.3f} | {100 * r['overlap']:.0f} % | {r['kept_std']:.3f} "
                     f"({r['kept_std_full']:.3f}; {r['group_std']:.3f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m progrpo_core bench --previews", description=__doc__.split("\n\n")[0])
    ap.add_argument("--previews", action="store_true")
    ap.add_argument("--models", default=",".join(MODELS), help=f"built-in models ({', '.join(MODELS)})")
    ap.add_argument("--scales", default=",".join(f"{s:g}" for s in SCALES), help="preview scales, each in (0, 1]")
    ap.add_argument("--prompts", type=int, default=32, help="groups per model")
    ap.add_argument("--out", help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    models = [m for m in a.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            ap.error(f"--models: {m!r} is not a built-in model; expected some of {', '.join(MODELS)}")
    try:
        scales = tuple(float(s) for s in a.scales.split(","))
    except ValueError:
        ap.error(f"--scales {a.scales!r}: expected comma-separated numbers in (0, 1], e.g. 1,0.5,0.25")
    if not all(0 < s <= 1 for s in scales):
        ap.error(f"--scales {a.scales!r}: every scale must be in (0, 1]")
    rows = [r for m in models for r in measure(m, scales, a.prompts)]
    print(table(rows))
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0
