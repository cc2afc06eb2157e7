"""Atomic file writes: write a temporary file beside the target, flush and fsync, then rename.
A crash at any moment leaves either the old file or the new one, never a torn one."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp (and some writers) make 0600; use the usual permissions
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_figure(fig, path: str | os.PathLike) -> Path:
    return _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """For checkpoints of plain tensors/numbers/dicts only (read back with weights_only=True)."""
    return _atomic(path, lambda tmp: torch.save(obj, tmp))
