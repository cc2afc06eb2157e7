"""How the pack installs: ComfyUI-Manager's requirements.txt, and every Python ComfyUI supports.

ComfyUI-Manager and the Comfy Registry pip-install a pack's ``requirements.txt`` into ComfyUI's
venv and never read ``pyproject.toml``; they refuse to touch torch. The two lists are kept equal
here (requirements without torch). The oldest and newest supported Pythons compile every source
file, find every standard-library import the code makes, and read a config file through the
pack's TOML loader — with the interpreter only, no torch (pyenv's 3.10/3.13 where present).
The Manager-style install itself runs in the host tests (tests/host/test_install_host.py).
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for top in ("progrpo_core", "nodes", "workflows", "tests") for p in (ROOT / top).rglob("*.py")
                 if "__pycache__" not in p.parts) + [ROOT / "__init__.py"]
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_requirements_txt_is_pyprojects_dependencies_without_torch():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    reqs = _requirements()
    assert [_name(r) for r in reqs] == [_name(d) for d in deps if _name(d) != "torch"]
    assert [r.replace(" ", "") for r in reqs] == [d.replace(" ", "") for d in deps if _name(d) != "torch"]
    # the Manager restores torch if a pack changes it; torchvision is the tests' alone
    assert not {"torch", "torchvision", "torchaudio"} & {_name(r) for r in reqs}
    assert "torchvision" not in {_name(d) for d in deps}


def _interpreter(version: str) -> list[str] | None:
    """A command running Python ``version`` (``3.10``), or None: PROGRPO_PYTHON_3_10-style
    variables, pyenv's versions, then ``pythonX.Y`` on PATH."""
    env = os.environ.get("PROGRPO_PYTHON_" + version.replace(".", "_"))
    candidates = [env] if env else []
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in root.glob(f"{version}.*/bin/python{version}"))
    if shutil.which(f"python{version}"):
        candidates.append(shutil.which(f"python{version}"))
    for c in candidates:
        done = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == version:
            return [c]
    return None


def _stdlib_imports() -> list[tuple[str, str, list[str]]]:
    """(file, module, names) of every standard-library import outside a try/except ImportError."""
    guarded: set[int] = set()
    out = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    for h in node.handlers):
                guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            if isinstance(node, ast.Import):
                mods = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [(node.module, [a.name for a in node.names])]
            else:
                continue
            for mod, names in mods:  # (platform modules absent here, e.g. msvcrt, are not checked)
                if mod.split(".")[0] in sys.stdlib_module_names and importlib.util.find_spec(mod) is not None:
                    out.append((str(path.relative_to(ROOT)), mod, names))
    return out


CHECK = r"""
import importlib, importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
problems = []
for path in json.loads(sys.argv[2]):
    try:
        compile(open(path, encoding="utf-8").read(), path, "exec")
    except SyntaxError as e:
        problems.append(f"{path}:{e.lineno}: {e.msg}")
for where, mod, names in json.loads(sys.argv[3]):
    try:
        m = importlib.import_module(mod)
    except ImportError as e:
        problems.append(f"{where}: import {mod}: {e}")
        continue
    problems += [f"{where}: from {mod} import {n}: missing" for n in names if n != "*" and not hasattr(m, n)
                 and importlib.util.find_spec(f"{mod}.{n}") is None]
if not problems:  # the pack's config loader on a config file, no torch involved
    from progrpo_core.toml_io import load_toml, toml_text
    table = {"grpo": {"method": "pro-grpo", "lr": 0.0003, "ema": True}, "schedule": {"keep": [24, 12]},
             "run": {"out": "runs/a \"quoted\" name"}}
    open(sys.argv[4], "w", encoding="utf-8").write(toml_text(table))
    assert load_toml(sys.argv[4]) == table, load_toml(sys.argv[4])
print(json.dumps(problems))
"""


@pytest.mark.parametrize("version", ["3.10", "3.13"])
def test_sources_work_on_the_oldest_and_newest_python(version, tmp_path):
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} here (pyenv install {version}, or set PROGRPO_PYTHON_"
                    f"{version.replace('.', '_')})")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONWARNINGS="error::SyntaxWarning")
    if version == "3.10":  # tomllib's stand-in, a dependency on 3.10, into a scratch folder
        pip = subprocess.run([*python, "-m", "pip", "install", "-q", "--target", str(tmp_path / "site"), "tomli"],
                             capture_output=True, text=True, timeout=300)
        if pip.returncode != 0:
            pytest.skip(f"cannot install tomli for Python 3.10 here: {pip.stderr[-300:]}")
        env["PYTHONPATH"] = str(tmp_path / "site")
    files = [str(p) for p in SOURCES]
    done = subprocess.run([*python, "-c", CHECK, str(ROOT), json.dumps(files), json.dumps(_stdlib_imports()),
                           str(tmp_path / "c.toml")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == []


def test_registry_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    p, comfy = project["project"], project["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", p["name"]) and len(p["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", p["version"])
    assert (ROOT / p["license"]["file"]).is_file()
    assert "MIT License" in (ROOT / p["license"]["file"]).read_text(encoding="utf-8")
    allowed = {"Operating System :: OS Independent", "Environment :: GPU :: NVIDIA CUDA",
               "License :: OSI Approved :: MIT License"}
    assert set(p["classifiers"]) <= allowed
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert all(v.startswith("https://") for v in p.get("urls", {}).values())  # no placeholders


def test_comfy_cli_validates_the_node(tmp_path):
    comfy = shutil.which("comfy")
    if comfy is None:
        pytest.skip("comfy-cli is not installed (pip install comfy-cli) to run 'comfy node validate'")
    done = subprocess.run([comfy, "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "passed" in done.stdout + done.stderr, done.stdout[-2000:] + done.stderr[-2000:]
