"""The one-shot GPU check (tests/gpu/device_check.sh) keeps working: its steps that need no
ComfyUI, as a dry run on this machine (the built-in model on the emulated GPU)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_check_runs_its_steps_and_prints_one_table(tmp_path):
    done = subprocess.run([sys.executable, "tests/gpu/device_check.py", "--cpu", "--only", "builtin,lora,sd15,wall15",
                           "--epochs", "4", "--out", str(tmp_path), "--budget", "300"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    rows = json.loads((tmp_path / "table.json").read_text())
    assert [r[0] for r in rows] == ["built-in", "lora effect", "sd15 64", "wall sd15 64"], done.stdout + done.stderr
    assert [r[1] for r in rows[:2]] == ["ok", "ok"], done.stdout + done.stderr
    for row in rows[2:]:  # no checkout given: said, not failed
        assert row[1] == "skipped" and "no ComfyUI" in row[2]
    assert "planned" in rows[0][2] and "eval reward" in rows[1][2]
    assert done.stdout.splitlines()[1].split() == ["step", "status", "seconds", "result"]
    assert done.returncode == 0
