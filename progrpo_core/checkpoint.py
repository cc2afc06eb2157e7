"""Resumable checkpoints and the run folder's safety checks.

A checkpoint is one file ``RUN/checkpoints/epoch-NNNNNN.pt`` holding only plain data — tensors,
numbers, strings, lists, dicts — so it is read back with ``torch.load(weights_only=True)`` and
nothing in it can run code. It is written atomically (temporary file, flush, fsync, rename, then
the folder is fsynced): a crash while writing leaves the previous checkpoint untouched and at
most a stray ``.epoch-NNNNNN.pt.*.tmp`` file, removed at the next save. The newest
``keep`` checkpoints are kept.

What the trainer stores in one (see ``Trainer.state_dict``): the LoRA, the optimizer, the EMA,
the random-number-generator states, the epoch and step counters, the compute counters, the
metrics rows so far, the evaluation before training and the config.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from .io import make_folder, save_torch

FORMAT = "progrpo-checkpoint"
VERSION = 1
DIRNAME = "checkpoints"
_NAME = re.compile(r"^epoch-(\d+)\.pt$")
_TMP = re.compile(r"^\.epoch-\d+\.pt\..*\.tmp$")
_UNUSABLE = re.compile(r"^epoch-\d+\.pt\.unusable$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used to resume."""


class UnsafeCheckpointError(CheckpointError):
    """A file that would need arbitrary Python objects to be unpickled; refused, never loaded."""


class RunFolderError(ValueError):
    """The run folder cannot hold the run (not writable, or not enough free space)."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / DIRNAME


def checkpoint_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    return checkpoint_dir(run_dir) / f"epoch-{epoch:06d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the run's checkpoints, oldest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir()
             if (m := _NAME.match(p.name)) and p.is_file() and not p.is_symlink()]
    return sorted(found)


def is_checkpoint_file(name: str) -> bool:
    """Whether ``name`` in ``checkpoints/`` is one the pack writes (a checkpoint, a torn write, a
    checkpoint set aside as unusable, a write test)."""
    return bool(_NAME.match(name) or _TMP.match(name) or _UNUSABLE.match(name) or name.startswith(".write-test-"))


# -- plain-data helpers ------------------------------------------------------------------------
def to_cpu(obj: Any) -> Any:
    """A deep copy of nested dicts/lists/tuples with every tensor cloned to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def rng_state(generators: dict[str, torch.Generator] | None = None,
              device: torch.device | str | None = None) -> dict[str, Any]:
    """The states of the global generators (torch, Python ``random``, NumPy, and the CUDA
    generator of the run's ``device`` — only that one: asking every GPU for its state makes a
    context on each, which under ``torchrun`` costs every process memory on every GPU) and of the
    named ``generators``, as tensors and numbers."""
    py_version, py_state, py_gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_initialized():
        out["cuda_device"] = torch.cuda.get_rng_state(device)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    else:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        out["numpy"] = {"name": str(name), "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached": float(cached)}
    return out


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None,
                  device: torch.device | str | None = None) -> None:
    """Restore what :func:`rng_state` saved (the CUDA state into the run's ``device``)."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    for k, g in (generators or {}).items():
        if k in state.get("generators", {}):
            g.set_state(state["generators"][k])
    device = torch.device(device) if device is not None else None
    if "cuda_device" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"], device)
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))


# -- writing -----------------------------------------------------------------------------------
def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], run_dir: str | os.PathLike, keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``state["epoch"]`` atomically, then keep only the
    newest ``keep`` checkpoints and remove temporary files left by interrupted writes."""
    if keep < 1:
        raise ValueError(f"keep={keep} must be >= 1")
    path = checkpoint_path(run_dir, int(state["epoch"]))
    make_folder(path.parent, "checkpoints folder")
    save_torch({"format": FORMAT, "version": VERSION, **state}, path)
    _fsync_dir(path.parent)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    for p in path.parent.iterdir():
        if _TMP.match(p.name) and not p.is_symlink():
            p.unlink(missing_ok=True)
    return path


# -- reading -----------------------------------------------------------------------------------
_REFUSALS = ("Unsupported global", "GLOBAL", "allowlisted", "is blocked", "Unsupported operand")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``. A pickle that needs arbitrary
    Python objects raises :class:`UnsafeCheckpointError` and is never unpickled; a damaged or
    foreign file raises :class:`CheckpointError`."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).strip().splitlines()
        refusal = next((ln for ln in lines if any(s in ln for s in _REFUSALS)), None)
        if refusal is not None:
            reason = refusal.split("error:", 1)[-1].strip().split(". Please", 1)[0][:200]
            raise UnsafeCheckpointError(
                f"refused to load {path}: it is a pickle that needs Python objects besides tensors and plain "
                f"data ({reason}). Checkpoints are only read with torch.load(weights_only=True), because "
                "unpickling arbitrary objects can run code; this file was not written by ProGRPO's trainer "
                "(it is damaged, or another program's pickle). Delete it, or resume from another checkpoint.") from None
        raise CheckpointError(f"{path} is not a readable checkpoint ({e})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (damaged or truncated?): {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ProGRPO checkpoint (no format={FORMAT!r} entry)")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {obj.get('version')!r}; this ProGRPO reads "
                              f"version {VERSION}")
    return obj


def load_latest(run_dir: str | os.PathLike,
                warn: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of the run that loads; a damaged or refused newer one is reported
    through ``warn`` and skipped."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(
            f"no checkpoint to resume from in {checkpoint_dir(run_dir)}: the run stopped before it wrote its first "
            "one (a checkpoint is written every run.checkpoint_every epochs, at the end, and when a run is stopped "
            "after a completed epoch), so it cannot be continued. Start it over instead (on the command line: "
            f"`train --config {Path(run_dir) / 'config.toml'} --overwrite`; on the trainer node: 'resume' off, "
            "'overwrite' on)")
    problems = []
    for _, path in reversed(found):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            if warn is not None:
                warn(f"skipping checkpoint {path.name}: {e}")
    raise CheckpointError(f"none of the {len(found)} checkpoint(s) in {checkpoint_dir(run_dir)} can be used:\n  "
                          + "\n  ".join(problems))


# -- the run folder ----------------------------------------------------------------------------
def check_run_folder(out: str | os.PathLike, need_bytes: int, breakdown: str = "") -> None:
    """Fail now, not hours later: the run folder must be creatable, writable, and have room for
    ``need_bytes`` (an estimate of what the run will write)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        make_folder(checkpoint_dir(out), "checkpoints folder")
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder {out}: {e.strerror or e}; choose another --run.out") from None
    try:
        with tempfile.NamedTemporaryFile(dir=checkpoint_dir(out), prefix=".write-test-") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise RunFolderError(f"the run folder {out} is not writable ({e.strerror or e}); fix its permissions "
                             "or choose another --run.out") from None
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise RunFolderError(
            f"not enough free space for the run in {out}: {_mb(free)} free, the run will write about "
            f"{_mb(need_bytes)}{f' ({breakdown})' if breakdown else ''}; free some space, lower "
            "run.keep_checkpoints or run.checkpoint_every, choose another --run.out, or skip this check with "
            "--run.check_disk false")


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"
