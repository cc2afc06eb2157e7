"""Fixtures for host tests: the pack running inside a real ComfyUI server.

Host tests need a ComfyUI checkout and a python that can run it; they are skipped, with the
reason shown by ``pytest -rs``, unless ``PROGRPO_COMFYUI`` is set (see README.md here):

``PROGRPO_COMFYUI``         ComfyUI checkout (the directory with main.py).
``PROGRPO_COMFYUI_PYTHON``  python of ComfyUI's venv (default: the python running pytest).
``PROGRPO_TINY_MODELS``     cache directory for the tiny models (default: pytest's cache,
                            ``.pytest_cache/d/progrpo_tiny_models``, or ``~/.cache/progrpo/
                            tiny_models`` without the cache plugin; ~650 MB, built once).
``PROGRPO_COMFYUI_GGUF``    a ComfyUI-GGUF checkout (city96; not on PyPI): linked into the server's
                            custom_nodes like the pack; the GGUF tests are skipped without it.

Fixtures (all session-scoped):

``comfy_env``     ``HostEnv(comfyui: Path, python: str)``.
``comfy_models``  Path of the tiny model tree; file names in ``tiny_models.FILES``.
``comfy_server``  a ``client.ComfyClient`` for one server shared by the whole session.
                  A failing test that used it gets the server log written during that
                  test appended to its report.
``comfy_dirs``    that server's ``launcher.ComfyServer`` (models_dir, output_dir, input_dir, log…).

Every test using one of these fixtures is marked ``host`` (deselect with ``-m "not host"``);
tests here that need no ComfyUI (e.g. test_ui_to_api.py) run everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# The helper modules sit next to this file; make them importable under any --import-mode.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from launcher import ComfyServer, ComfyServerError  # after the sys.path line above

SKIP_REASON = ("set PROGRPO_COMFYUI=/path/to/ComfyUI (and PROGRPO_COMFYUI_PYTHON=/path/to/its/python) "
               "to run host tests")
_SERVER = pytest.StashKey[ComfyServer]()


@dataclass(frozen=True)
class HostEnv:
    comfyui: Path  # ComfyUI checkout
    python: str  # interpreter with ComfyUI's dependencies


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name.startswith("comfy_") for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.host)


@pytest.fixture(scope="session")
def comfy_env() -> HostEnv:
    root = os.environ.get("PROGRPO_COMFYUI")
    if not root:
        pytest.skip(SKIP_REASON)
    comfyui = Path(root).expanduser().resolve()
    if not (comfyui / "main.py").is_file():
        pytest.fail(f"PROGRPO_COMFYUI={root}: no main.py there; point it at a ComfyUI checkout", pytrace=False)
    python = os.environ.get("PROGRPO_COMFYUI_PYTHON") or sys.executable
    if not Path(python).is_file():
        pytest.fail(f"PROGRPO_COMFYUI_PYTHON={python}: not a file; point it at the ComfyUI venv's python",
                    pytrace=False)
    return HostEnv(comfyui, python)


@pytest.fixture(scope="session")
def comfy_models(comfy_env: HostEnv, request) -> Path:
    """The tiny-model tree (built by tiny_models.py in the ComfyUI python; cached)."""
    out = os.environ.get("PROGRPO_TINY_MODELS")
    if not out and getattr(request.config, "cache", None) is not None:
        out = request.config.cache.mkdir("progrpo_tiny_models")
    if not out:  # pytest run with -p no:cacheprovider
        out = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "progrpo" / "tiny_models"
    cmd = [comfy_env.python, str(HERE / "tiny_models.py"), "--comfyui", str(comfy_env.comfyui), "--out", str(out)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"building tiny models failed ({' '.join(cmd)}):\n{done.stdout}\n{done.stderr}", pytrace=False)
    return Path(out)


@pytest.fixture(scope="session")
def comfy_server(comfy_env: HostEnv, comfy_models: Path, tmp_path_factory, request):
    """One ComfyUI server for the session: tiny models, this repo as a custom node pack."""
    server = ComfyServer(comfy_env.comfyui, comfy_env.python, tmp_path_factory.mktemp("comfyui"),
                         comfy_models, pack=REPO_ROOT, extra_packs=extra_packs())
    try:
        client = server.start()
    except ComfyServerError as e:  # carries the log tail
        pytest.fail(str(e), pytrace=False)
    request.config.stash[_SERVER] = server
    try:
        yield client
    finally:
        server.stop()
        del request.config.stash[_SERVER]


def gguf_checkout() -> Path | None:
    """The ComfyUI-GGUF checkout named by ``PROGRPO_COMFYUI_GGUF`` (None: not set)."""
    path = os.environ.get("PROGRPO_COMFYUI_GGUF")
    if not path:
        return None
    root = Path(path).expanduser().resolve()
    if not (root / "nodes.py").is_file() or not (root / "__init__.py").is_file():
        pytest.fail(f"PROGRPO_COMFYUI_GGUF={path}: not a ComfyUI-GGUF checkout (no nodes.py/__init__.py)",
                    pytrace=False)
    return root


def extra_packs() -> dict[str, Path]:
    """Custom node packs the test server loads beside this one: the tests' own nodes (a tiny-model
    loader and synthetic conditioning, host_test_nodes/) and ComfyUI-GGUF when it is given."""
    packs = {"progrpo-host-test-nodes": HERE / "host_test_nodes"}
    gguf = gguf_checkout()
    if gguf is not None:
        packs["ComfyUI-GGUF"] = gguf
    return packs


@pytest.fixture
def comfy_dirs(comfy_server, request) -> ComfyServer:
    return request.config.stash[_SERVER]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Append the server log written during a failed test to its report."""
    outcome = yield
    report = outcome.get_result()
    server = item.config.stash.get(_SERVER, None)
    if server is None or "comfy_server" not in getattr(item, "fixturenames", ()):
        return
    if report.failed:
        report.sections.append((f"ComfyUI server log ({server.log_path})", server.log_since_mark()))
    if report.when == "teardown":
        server.mark_log()
