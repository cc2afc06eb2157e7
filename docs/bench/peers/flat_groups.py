"""How much of a run goes to groups with no reward spread (docs/BENCHMARKS.md, "2026-12-04,
evening"): one peers-bench run (``peers.spec_for``, ``runs.run_method``: its budget, 10 evaluations
on 32 seeds, one thread), with each epoch's per-group standard deviation of the final rewards
recorded. A group whose trajectories all get the same reward has advantages of 0: its sampling and
training teach nothing. Prints the share of such groups (std < 0.01) in each tenth of the run and
before the run reaches the sweep's GRPO final; writes the log to OUT as JSON.

    python docs/bench/peers/flat_groups.py OUT --task eps --method mixgrpo --lr 3.5e-3 --seed 11
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from progrpo_core.bench import peers  # noqa: E402
from progrpo_core.bench.runs import run_method  # noqa: E402
from progrpo_core.training import trainer as T  # noqa: E402

SWEEP_TARGET = {"flow": 0.759, "eps": 0.926}  # the sweep's GRPO finals on seeds 11-12 (rates.json)
FLAT = 0.01


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a JSON file to write")
    ap.add_argument("--task", choices=sorted(SWEEP_TARGET), default="eps")
    ap.add_argument("--method", default="mixgrpo")
    ap.add_argument("--lr", type=float, default=3.5e-3)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    stds: list[list[float]] = []
    one_epoch = T.Trainer._one_epoch

    def recorded(self, epoch, *args, **kwargs):
        rec = one_epoch(self, epoch, *args, **kwargs)
        total = sum(rec.batch.scores.values())
        stds.append(total.view(len(rec.batch.rollout.prompts), -1).float().std(1, unbiased=False).tolist())
        return rec

    T.Trainer._one_epoch = recorded
    torch.set_num_threads(1)
    out = run_method(peers.spec_for(a.task, a.method, a.lr), a.seed, peers.TASKS[a.task][1], n_evals=10,
                     eval_seeds=32)
    flat = np.array([np.mean(np.array(s) < FLAT) for s in stds])
    target = SWEEP_TARGET[a.task]
    stable = peers.stable_reach(out["curve"], target)
    first = next((c["units"] for c in out["curve"] if c["reward"] >= target), None)
    cut = stable if stable is not None else first  # where the run reaches (for good, else first)
    before = flat[: int(np.ceil(cut / (out["curve"][-1]["units"] / len(flat))))] if cut else flat
    print(f"{a.task} {a.method} lr {a.lr:g} seed {a.seed}: reaches {target} for good at "
          f"{None if stable is None else round(stable)} units, first at {None if first is None else round(first)}")
    print("share of flat groups by tenth of the run:", [round(float(c.mean()), 2) for c in np.array_split(flat, 10)])
    print(f"before it reaches: {before.mean():.2f} over {len(before)} epochs")
    a.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "curve": out["curve"],
                                 "group_stds": stds}))


if __name__ == "__main__":
    main()
