"""The pack installed the way ComfyUI-Manager and the Comfy Registry install it: ``pip install -r
requirements.txt`` into ComfyUI's venv, which already has torch. Torch must stay as it was, and
every module of the pack must import there."""
from __future__ import annotations

import json
import subprocess

from conftest import REPO_ROOT


def _torch_version(python: str) -> str:
    done = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_manager_style_install_keeps_torch_and_imports_every_module(comfy_env):
    before = _torch_version(comfy_env.python)
    pip = subprocess.run([comfy_env.python, "-m", "pip", "install", "-q", "-r", str(REPO_ROOT / "requirements.txt")],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-3000:]
    assert _torch_version(comfy_env.python) == before
    done = subprocess.run([comfy_env.python, str(REPO_ROOT / "tests" / "import_all.py")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    assert done.returncode == 0 and not result["failed"], result
    assert result["modules"] > 50
