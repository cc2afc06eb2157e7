"""Screens for training on the previews' rewards (``schedule.preview_reward``), on the sweep seeds
(docs/BENCHMARKS.md, "2026-12-04, night"): each run is the peers bench's job (``peers._job``: one
thread, its budget, 10 evaluations on 32 seeds) with schedule settings on top of a method's; the runs
are appended to OUT as JSON lines, and the table printed is the compute at which each seed reaches
the sweep's GRPO final for good (``peers.stable_reach``).

    python docs/bench/peers/preview_screen.py OUT --over '{"schedule": {"preview_reward": 0}}'
    python docs/bench/peers/preview_screen.py OUT --tasks eps --rates 0.0025,0.0035 --over '{"schedule": {"preview_reward": 2}}'
    python docs/bench/peers/preview_screen.py OUT --methods pro-mixgrpo-8 --tasks flow --rates 0.001,0.00175 \\
        --over '{"schedule": {"preview_reward": 0, "sde_window": 1}}'
    python docs/bench/peers/preview_screen.py OUT --methods pro-mixgrpo-8-preview --tasks flow --rates 0.0025 \\
        --seeds 13,14,15,16,17,18 --over '{"grpo": {"saturated_lr": 0.1}}'
    python docs/bench/peers/preview_screen.py OUT --report
    python docs/bench/peers/preview_screen.py - --trace --methods pro-mixgrpo-8-preview --tasks flow --rates 0.0025 \\
        --seeds 6 --over '{"grpo": {"saturated_lr": 1}}'
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from progrpo_core.bench import peers  # noqa: E402


def job(task: str, method: str, lr: float, seed: int, overrides: dict, std_floor: float = 0.0,
        flat_top: tuple[float, float] | None = None) -> dict:
    spec = peers.spec_for(task, method, lr)
    for section, values in overrides.items():
        spec.table.setdefault(section, {}).update(values)
    tag = "".join(f"+{k}={v}" for d in overrides.values() for k, v in d.items())
    if std_floor:  # a screen, not a setting: this worker's group advantages divide by max(std, floor)
        from progrpo_core import grpo

        plain = grpo.advantages

        def floored(rewards, norm="group", eps=1e-4):
            if norm != "group":
                return plain(rewards, norm, eps)
            r = rewards.double()
            std = r.std(dim=1, unbiased=False, keepdim=True).clamp_min(std_floor)
            return ((r - r.mean(dim=1, keepdim=True)) / (std + eps)).float()

        grpo.advantages = floored
        tag += f"+std_floor={std_floor}"
    if flat_top:  # a screen: a group whose rewards' std is below flat_top[0] at a mean above flat_top[1] teaches nothing
        from progrpo_core import grpo

        plain_adv = grpo.advantages

        def gated(rewards, norm="group", eps=1e-4):
            adv = plain_adv(rewards, norm, eps)
            r = rewards.double()
            flat = (r.std(dim=1, unbiased=False) < flat_top[0]) & (r.mean(dim=1) > flat_top[1])
            return adv.masked_fill(flat[:, None], 0.0)

        grpo.advantages = gated
        tag += f"+flat_top={flat_top[0]},{flat_top[1]}"
    return peers._job(dataclasses.replace(spec, name=spec.name + tag), seed, peers.TASKS[task][1], 10, 32)


def trace(task: str, method: str, lr: float, seed: int, overrides: dict) -> None:
    """One run with 30 evaluations, printed with the mean trained reward of the epochs before each
    (a diagnosis: what the epochs trained on against what held-out evaluation saw)."""
    import torch

    from progrpo_core.bench.runs import run_method

    torch.set_num_threads(1)
    spec = peers.spec_for(task, method, lr)
    for section, values in overrides.items():
        spec.table.setdefault(section, {}).update(values)
    out = run_method(spec, seed, peers.TASKS[task][1], n_evals=30, eval_seeds=32)
    trained = {e["epoch"]: e["reward_mean"] for e in out["epoch_metrics"]}
    for point in out["curve"]:
        last = [trained[e] for e in range(point["epoch"] - 5, point["epoch"] + 1) if e in trained]
        print(f"epoch {point['epoch']:4d}  held-out {point['reward']:.3f}"
              + (f"  trained, last {len(last)} epochs: " + " ".join(f"{v:.3f}" for v in last) if last else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--methods", default="pro-mixgrpo-8,pro-mixgrpo")
    ap.add_argument("--rates", default="0.0025,0.0035,0.005,0.007")
    ap.add_argument("--tasks", default="flow,eps")
    ap.add_argument("--seeds", default=",".join(map(str, peers.SWEEP_SEEDS)))
    ap.add_argument("--over", default='{"schedule": {"preview_reward": 0}}', help="settings on top, as JSON")
    ap.add_argument("--std-floor", type=float, default=0.0, help="a screen: group advantages divided by "
                    "max(the group's reward std, this), in reward units (0: as the trainer does)")
    ap.add_argument("--flat-top", help="a screen: 'STD,MEAN' — a group whose rewards' std is below STD at a mean "
                    "above MEAN (reward units) gets zero advantages")
    ap.add_argument("--report", action="store_true", help="only print the table of the runs in OUT")
    ap.add_argument("--trace", action="store_true", help="run the first task, method, rate and seed once with "
                    "30 evaluations and print them beside the epochs' trained rewards (OUT is not written)")
    a = ap.parse_args()
    over = json.loads(a.over)
    if a.trace:
        first = lambda v: v.split(",")[0]  # noqa: E731
        return trace(first(a.tasks), first(a.methods), float(first(a.rates)), int(first(a.seeds)), over)
    flat_top = tuple(float(x) for x in a.flat_top.split(",")) if a.flat_top else None
    jobs = [] if a.report else [(t, m, float(lr), int(s), over, a.std_floor, flat_top) for t in a.tasks.split(",")
                                for m in a.methods.split(",") for lr in a.rates.split(",") for s in a.seeds.split(",")]
    print("\n".join(peers.screen(job, jobs, a.out)))


if __name__ == "__main__":
    main()
