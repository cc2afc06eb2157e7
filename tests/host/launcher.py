"""Start and stop a headless ComfyUI server in a throw-away base directory.

Standard library only. The server runs under the ComfyUI venv's python, on the CPU, bound
to 127.0.0.1 on a free port, with everything it writes (output, input, temp, user, its
sqlite database, its log) under ``base``, and sees:

- the tiny models: every file of ``models_src`` is symlinked into ``base/models/<folder>/``
  (real directories, so a test may add e.g. ``models/loras/x.safetensors`` without touching
  the shared cache);
- the pack: ``base/custom_nodes/<pack_name>`` is a symlink to the repo root (and each of
  ``extra_packs``, e.g. ComfyUI-GGUF and the tests' own nodes, is linked the same way). With
  ``--base-directory`` ComfyUI 0.33 looks for custom nodes only in ``<base>/custom_nodes``
  (and refuses to start if that directory is missing), imports each sub-directory's
  ``__init__.py`` as a package named after its full path, and does not put the pack
  directory on ``sys.path`` — so the pack must import its own modules relatively.

Usage::

    server = ComfyServer(comfyui, python, base, models_src, pack=repo_root)
    client = server.start()      # waits for GET /object_info
    ...
    server.stop()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from client import ComfyClient

#: The directory name the pack gets under custom_nodes/ (its registry name); ComfyUI
#: reports its nodes' ``python_module`` as ``custom_nodes.<PACK_NAME>``.
PACK_NAME = "comfyui-progrpo"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServerError(RuntimeError):
    """The server did not start (the message ends with the tail of its log)."""


class ComfyServer:
    """One ComfyUI server process. See the module docstring for the directory layout."""

    def __init__(self, comfyui: Path, python: str, base: Path, models_src: Path | None = None,
                 pack: Path | None = None, *, pack_name: str = PACK_NAME, port: int | None = None,
                 extra_args: tuple[str, ...] = (), extra_packs: dict[str, Path] | None = None):
        self.comfyui = Path(comfyui)
        self.python = python
        self.base = Path(base)
        self.models_src = Path(models_src) if models_src else None
        self.pack = Path(pack) if pack else None
        self.pack_name = pack_name
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.extra_packs = {k: Path(v) for k, v in (extra_packs or {}).items()}  # more custom_nodes, linked too
        self.proc: subprocess.Popen | None = None
        self.client: ComfyClient | None = None
        self._log_mark = 0

    # -- layout ---------------------------------------------------------------------------

    url = property(lambda self: f"http://127.0.0.1:{self.port}")
    models_dir = property(lambda self: self.base / "models")
    output_dir = property(lambda self: self.base / "output")
    input_dir = property(lambda self: self.base / "input")
    temp_dir = property(lambda self: self.base / "temp")
    user_dir = property(lambda self: self.base / "user")
    custom_nodes_dir = property(lambda self: self.base / "custom_nodes")
    log_path = property(lambda self: self.base / "server.log")

    def prepare(self) -> None:
        """Create the base directory tree, model symlinks and the pack symlink."""
        for d in (self.models_dir, self.output_dir, self.input_dir, self.temp_dir, self.user_dir,
                  self.custom_nodes_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.models_src is not None:
            for src in sorted(self.models_src.rglob("*")):
                rel = src.relative_to(self.models_src)
                if not src.is_file() or len(rel.parts) < 2 or src.name.startswith("."):
                    continue  # only <folder>/<file>; skips manifest.json and the lock
                dst = self.models_dir / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists():
                    dst.symlink_to(src.resolve())
        packs = {**({self.pack_name: self.pack} if self.pack is not None else {}), **self.extra_packs}
        for name, path in packs.items():
            link = self.custom_nodes_dir / name
            if not link.exists():
                link.symlink_to(path.resolve(), target_is_directory=True)

    def command(self) -> list[str]:
        """The server's command line: on the CPU, or — with ``PROGRPO_COMFYUI_GPU=1`` — as a user
        starts it on a GPU machine (no device flag: ComfyUI picks the GPU and, on NVIDIA, dynamic
        VRAM). ``PROGRPO_COMFYUI_FRONTEND_ROOT`` serves that folder as the frontend (for a server
        without the frontend package, e.g. on a machine the check's wheels travel to)."""
        device = [] if os.environ.get("PROGRPO_COMFYUI_GPU") == "1" else ["--cpu"]
        frontend = os.environ.get("PROGRPO_COMFYUI_FRONTEND_ROOT")
        return [
            self.python, str(self.comfyui / "main.py"),
            *device, *(["--front-end-root", frontend] if frontend else []),
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base),
            # the default database lives in the ComfyUI checkout (user/comfyui.db), not in base
            "--database-url", f"sqlite:///{self.base / 'comfyui.db'}",
            "--disable-auto-launch", "--disable-api-nodes", "--preview-method", "none",
            *self.extra_args,
        ]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> ComfyClient:
        """Start the server and wait until ``GET /object_info`` answers; return a client."""
        self.prepare()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.comfyui, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        t0 = time.monotonic()
        client = ComfyClient(self.url, alive=self.alive, server=self)
        while True:
            if not self.alive():
                raise ComfyServerError(f"ComfyUI exited with code {self.proc.returncode} during startup "
                                       f"(command: {' '.join(self.command())})\n{self.log_tail()}")
            try:
                client.object_info(refresh=True)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise ComfyServerError(f"ComfyUI not ready after {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.5)
        self.startup_seconds = time.monotonic() - t0
        self.client = client
        return client

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)  # start_new_session: the group is the server's own
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- log ------------------------------------------------------------------------------------

    def log_text(self, start: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log_text()
        return f"--- {self.log_path} (last {chars} chars) ---\n{text[-chars:]}"

    def mark_log(self) -> None:
        """Remember the log's current end; :meth:`log_since_mark` returns what follows it."""
        self._log_mark = self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since_mark(self) -> str:
        return self.log_text(self._log_mark)
