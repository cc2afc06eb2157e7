"""Rows of several prompts share a model call (nodes/host/packing.py), on the tiny real models."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_rows_of_several_prompts_share_calls_and_match_each_row_alone(comfy_env, comfy_models):
    """Three prompts × 5 rows, interleaved, calls of at most 8 rows: SD1.5 (CLIP, CFG 4.5), SD3
    (CLIP-L, CFG 4.5) and Flux (guidance) pack them into 2 calls instead of one per prompt (3) and
    give every row the x0 it gets alone, to float32 rounding — far below what another prompt's
    conditioning changes; prompts whose token counts differ are called one prompt at a time."""
    cmd = [comfy_env.python, str(HERE / "packed_calls.py"), "--comfyui", str(comfy_env.comfyui), "--models",
           str(comfy_models), "sd15", "sd3", "flux", "flux_ragged"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["kind"]: r for r in map(json.loads, done.stdout.strip().splitlines())}
    print(json.dumps(rows, indent=1), file=sys.stderr)
    for kind, r in rows.items():
        assert r["calls_per_prompt"] == 3 * math.ceil(5 / 8)
        assert r["calls_packed"] == (math.ceil(15 / 8) if kind != "flux_ragged" else 3), kind
        tol = 1e-5 * max(1.0, r["scale"])
        assert r["diff_packed"] <= tol and r["diff_per_prompt"] <= tol, r
        assert r["prompt_effect"] > 1000 * tol, r
