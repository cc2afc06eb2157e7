"""Seeds 5-9 for every (method, rate) of the one-digit tasks that the final runs hold — the chosen
rates and the others earlier rate choices left there, which the best peer may use (docs/BENCHMARKS.md,
"2026-12-04"). OUT holds ``rates.json`` and ``final/runs.jsonl`` (``final_runs.jsonl.gz`` unpacked);
the runs are appended there, then

    python docs/bench/peers/more_seeds.py OUT
    python -m progrpo_core bench --peers --out OUT --stage report --seeds 0-9 --tasks flow,eps
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from progrpo_core.bench import peers  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    runs = [json.loads(line) for line in (out / "final" / "runs.jsonl").read_text().splitlines()]
    held = sorted({(r["task"], r["base_method"], r["lr"]) for r in runs if r["task"] in ("flow", "eps")})
    jobs = [(peers.spec_for(t, m, lr), seed) for t, m, lr in held for seed in range(5, 10)]
    peers.run_jobs(jobs, out / "final", 10, 32, 2, lambda s: print(s, flush=True))
