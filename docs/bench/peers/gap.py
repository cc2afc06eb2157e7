"""Where the gap to MixGRPO comes from, per task (docs/BENCHMARKS.md, "2026-12-03, late night").

Two measurements, both printed:

1. From the peers bench's final runs (``final_runs.jsonl.gz`` and ``summary.json`` next to this
   file): the compute to reach GRPO's final, split into compute per epoch (up to the evaluation at
   which the run reaches) × epochs, for our best method and the best peer of each task.
2. A probe of the base policies with MixGRPO's window (steps 0–1 of T = 10, one shared initial
   noise per prompt, 24 trajectories, 24 prompts): the within-group Spearman ρ between the one-step
   proxy at the pruning call (step 2) and the final reward, and the mean within-group standard
   deviation of the final rewards of 8 trajectories kept by OVF on that proxy, by a random cut and by
   OVF on the final rewards themselves (the most any selection could give).

    python docs/bench/peers/gap.py
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch

from progrpo_core import ovf
from progrpo_core.bench.peers import stable_reach
from progrpo_core.bench.probe import spearman
from progrpo_core.embedded import load_digits_model
from progrpo_core.group import sample_group
from progrpo_core.methods import PruneSchedule
from progrpo_core.rewards import build_reward

HERE = Path(__file__).resolve().parent
BEST_OF_OURS = {"flow": ("pro-mixgrpo-8", 0.0035), "eps": ("pro-mixgrpo-8", 0.0025),
                "pair": ("pro-mixgrpo-8", 0.00175), "pair-eps": ("pro-mixgrpo", 0.00175)}
MODELS = {"flow": ("digits-flow", "flow_sde", 0.7), "eps": ("digits-eps", "ddim", 1.0),
          "pair": ("digits-pair-flow", "flow_sde", 0.7), "pair-eps": ("digits-pair-eps", "ddim", 1.0)}


def per_epoch_and_epochs(runs: list[dict], target: float) -> tuple[float, float, float]:
    """Mean compute per epoch up to the reach, and mean ± std of the epochs it takes."""
    rate, epochs = [], []
    for r in runs:
        reach = stable_reach(r["curve"], target)
        point = next(p for p in r["curve"] if p["units"] >= reach - 1e-6)
        rate.append(point["units"] / point["epoch"])
        epochs.append(reach / rate[-1])
    return float(np.mean(rate)), float(np.mean(epochs)), float(np.std(epochs))


def split_the_ratio() -> None:
    summary = json.loads((HERE / "summary.json").read_text())
    with gzip.open(HERE / "final_runs.jsonl.gz", "rt") as f:
        runs = [json.loads(line) for line in f]
    for task, ours in BEST_OF_OURS.items():
        target, peer = summary[task]["target"], summary[task]["best_peer"]["units"]
        cells = []
        for method, lr in (ours, (peer["method"], peer["lr"])):
            mine = [r for r in runs if r["task"] == task and r["base_method"] == method and r["lr"] == lr]
            cells.append((method, lr, *per_epoch_and_epochs(mine, target)))
        (m, lr, rate, ep, sd), (pm, plr, prate, pep, psd) = cells
        print(f"{task}: {m} at {lr:g}: {rate:.0f} units/epoch × {ep:.1f} ± {sd:.1f} epochs; {pm} at {plr:g}: "
              f"{prate:.0f} × {pep:.1f} ± {psd:.1f}; ratio {rate / prate:.2f} per epoch × {ep / pep:.2f} in epochs "
              f"= {rate * ep / (prate * pep):.2f}")


def probe_the_window(task: str, prompts: int = 24, group: int = 24, keep: int = 8, steps: int = 10) -> None:
    name, sampler, noise = MODELS[task]
    model, reward = load_digits_model(name), build_reward("digit")
    texts = [model.default_prompts[i % len(model.default_prompts)] for i in range(prompts)]
    proxies: dict[int, np.ndarray] = {}

    def record(info: dict) -> None:
        rows = [texts[b] for b in info["row_prompt"].tolist()]
        proxies[info["step"]] = reward.evaluate(model.decode(info["x0"]), rows)[reward.total_key].view(prompts, -1).double().numpy()

    with torch.no_grad():
        ro = sample_group(model, texts, [700_000 + i for i in range(prompts)], steps,
                          PruneSchedule(group, shared_noise=True), sampler, noise, 1.0, callback=record, sde_steps=(0, 1))
        rows = [texts[b] for b in ro.prompt_index.tolist()]
        final = reward.evaluate(model.decode(ro.latents[:, -1]), rows)[reward.total_key].view(prompts, -1).double().numpy()
    proxy = proxies[2]  # the call right after the window: where pro-mixgrpo prunes
    rho = [spearman(proxy[b], final[b]) for b in range(prompts)]
    g = torch.Generator().manual_seed(0)

    def spread(selector: str, by: np.ndarray) -> float:
        return float(np.mean([final[b][ovf.select(selector, torch.from_numpy(by[b]), keep, g).numpy()].std()
                              for b in range(prompts)]))

    print(f"{task}: ρ(proxy at step 2, final) {np.nanmean(rho):.2f}; std of the final rewards: all {group} "
          f"{final.std(1).mean():.3f}, {keep} kept by OVF on the proxy {spread('ovf', proxy):.3f}, "
          f"a random {keep} {spread('random', proxy):.3f}, OVF on the finals {spread('ovf', final):.3f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    split_the_ratio()
    for t in MODELS:
        probe_the_window(t)
