"""Two cheaper epochs for ``pro-mixgrpo-8`` on the one-digit tasks, screened on the sweep seeds
(docs/BENCHMARKS.md, "2026-12-04"):

- ``--prune-call window``: prune at the window's last model call (the proxy from the output that
  makes the window's last SDE transition) instead of the call after it: the 16 pruned rows skip one
  model call; the cut then sees only the first window step's noise.
- ``--half``: train one of the window's two steps, drawn per epoch (``grpo.timestep_fraction = 0.5``,
  ``grpo.train_step_order = "random"``): half the training.

Each run is the peers bench's job (``peers._job``: one thread, its budget, 10 evaluations on 32
seeds); the runs are appended to OUT as JSON lines, and the table printed is the compute at which each
seed reaches the sweep's GRPO final for good (``peers.stable_reach``).

    python docs/bench/peers/cheaper_epoch.py OUT --prune-call window
    python docs/bench/peers/cheaper_epoch.py OUT --half
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from progrpo_core import methods  # noqa: E402
from progrpo_core.bench import peers  # noqa: E402

_for_epoch = methods.PruneSchedule.for_epoch


def _prune_at_window_call(self, steps, epoch, seed, prompt_seeds=None):
    sched, sde = _for_epoch(self, steps, epoch, seed, prompt_seeds)
    if self.prune_after_window and sde and self.checkpoints:  # one call earlier than the preset's
        sched = dataclasses.replace(self, checkpoints=(min(sde[-1] + 1, steps - 1),))
    return sched, sde


def job(task: str, method: str, lr: float, seed: int, early: bool, overrides: dict) -> dict:
    # set in the worker: each spawned process imports this module afresh
    methods.PruneSchedule.for_epoch = _prune_at_window_call if early else _for_epoch
    spec = peers.spec_for(task, method, lr)
    for section, values in overrides.items():
        spec.table.setdefault(section, {}).update(values)
    tag = ("+window-call" if early else "") + "".join(f"+{k}={v}" for d in overrides.values() for k, v in d.items())
    spec = dataclasses.replace(spec, name=spec.name + tag)
    return peers._job(spec, seed, peers.TASKS[task][1], 10, 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--prune-call", choices=("after", "window"), default="after")
    ap.add_argument("--half", action="store_true")
    ap.add_argument("--methods", default="pro-mixgrpo-8,pro-mixgrpo")
    ap.add_argument("--rates", default="0.0025,0.0035,0.005")
    a = ap.parse_args()
    over = {"grpo": {"timestep_fraction": 0.5, "train_step_order": "random"}} if a.half else {}
    jobs = [(t, m, float(lr), s, a.prune_call == "window", over) for t in peers.SWEEP_FINALS
            for m in a.methods.split(",") for lr in a.rates.split(",") for s in peers.SWEEP_SEEDS]
    print("\n".join(peers.screen(job, jobs, a.out)))


if __name__ == "__main__":
    main()
