"""Seeds 5-9 for every (method, rate) that the final runs hold on the given tasks — the chosen rates
and the others earlier rate choices left there, which the best peer may use (docs/BENCHMARKS.md,
"2026-12-04" and "2026-12-04, afternoon"). OUT holds ``rates.json`` and ``final/runs.jsonl``
(``final_runs.jsonl.gz`` unpacked); the runs are appended there (a stopped run continues), then

    python docs/bench/peers/more_seeds.py OUT                      # the one-digit tasks, every method
    python docs/bench/peers/more_seeds.py OUT --tasks pair,pair-eps --methods grpo,mixgrpo,...
    python -m progrpo_core bench --peers --out OUT --stage report --seeds 0-9 --tasks ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from progrpo_core.bench import peers  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tasks", default="flow,eps", help="comma-separated tasks (default flow,eps)")
    ap.add_argument("--methods", default="", help="comma-separated methods (default: every one run there)")
    args = ap.parse_args()
    tasks, methods = set(args.tasks.split(",")), set(filter(None, args.methods.split(",")))
    path = args.out / "final" / "runs.jsonl"
    if not path.is_file():
        sys.exit(f"more_seeds: no {path}; expected the final runs there (unpack final_runs.jsonl.gz into it)")
    runs = [json.loads(line) for line in path.read_text().splitlines()]
    held = sorted({(r["task"], r["base_method"], r["lr"]) for r in runs
                   if r["task"] in tasks and (not methods or r["base_method"] in methods)})
    missing = sorted(tasks - {r["task"] for r in runs}) + sorted(methods - {m for _, m, _ in held})
    if missing:
        sys.exit(f"more_seeds: {', '.join(missing)} not in {path}; "
                 "expected tasks and methods its runs hold")
    jobs = [(peers.spec_for(t, m, lr), seed) for t, m, lr in held for seed in range(5, 10)]
    peers.run_jobs(jobs, args.out / "final", 10, 32, 2, lambda s: print(s, flush=True))
