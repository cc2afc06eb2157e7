"""The run folder: everything a run writes, in one place.

::

    RUN/config.toml          the resolved settings (``train --resume RUN`` reads them)
    RUN/metrics.jsonl        one row per epoch (:meth:`EpochRecord.to_row`)
    RUN/checkpoints/         resumable checkpoints (:mod:`progrpo_core.checkpoint`)
    RUN/lora.safetensors     the LoRA (the node keeps it in models/loras instead: ``lora_path``)
    RUN/summary.json, RUN/reward_curve.png, RUN/samples_before.png, RUN/samples_after.png

Every file is written atomically (:mod:`progrpo_core.io`).
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import checkpoint as ckpt
from .. import plots
from ..config import TrainConfig, to_toml
from ..io import append_line, is_disk_full, write_json, write_text
from .records import nan_if_none
from .state import CLI_WORDS, Words


RUN_FILE = "run.json"          # the run's identity: its id and when it started
LOCK_FILE = ".lock"            # held by the process training in the folder
RESULTS = ("config.toml", "metrics.jsonl", "summary.json", "reward_curve.png", "samples_before.png",
           "samples_after.png", "lora.safetensors", RUN_FILE)
_RESULT_TMP = re.compile(r"^\.(" + "|".join(re.escape(n) for n in RESULTS) + r")\..*\.tmp$")  # torn atomic writes


class RunFolder:
    """The files of one run in ``out`` (the LoRA at ``lora_path``, default ``out/lora.safetensors``).

    A folder holds one run: :meth:`claim` refuses to start a new run where another's files are
    (``overwrite`` clears them first), and :meth:`lock` keeps a second process out while one trains."""

    def __init__(self, out: str | Path, lora_path: str | Path | None = None):
        self.out = Path(out)
        self.lora_path = Path(lora_path) if lora_path is not None else self.out / "lora.safetensors"
        self.metrics_path = self.out / "metrics.jsonl"
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.out)!r})"

    # -- ownership ----------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the folder's lock (released by :meth:`unlock` or when the process ends); a second
        process on the same folder fails at once, naming the one that holds it. A folder whose
        entries are symbolic links is refused first, and the lock file is opened without following
        one, so a folder handed over cannot aim the pack's writes at other files."""
        if self._lock_fd is not None:
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ckpt.RunFolderError(f"cannot create the run folder {self.out}: {e.strerror or e}; use another run "
                                      "folder") from None
        self.refuse_links()
        if self.foreign_entries() and not self.legacy_run():
            self.refuse_foreign()  # before the lock file: nothing is written into a folder that is not the pack's
        path = self.out / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise ckpt.RunFolderError(f"cannot create the lock file {path}: {e.strerror or e}; use another run "
                                      "folder") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            os.close(fd)
            kind = "a hard link to another file" if stat.S_ISREG(st.st_mode) else "not a regular file"
            raise ckpt.RunFolderError(f"{path} is not a lock file the pack made (it is {kind}); the pack writes its "
                                      "PID into it, so it refuses to: remove it, or use another run folder")
        if not _try_lock(fd):
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            except OSError:  # Windows: the holder's locked byte cannot be read
                holder = "?"
            os.close(fd)
            raise ckpt.RunFolderError(
                f"the run folder {self.out} is in use by another training process (PID {holder}); wait for it to "
                "finish, or train in another folder (--out)") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def __del__(self):
        self.unlock()

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def links(self) -> list[Path]:
        """The symbolic links among the folder's entries and its checkpoints folder's."""
        found: list[Path] = []
        for d in (self.out, ckpt.checkpoint_dir(self.out)):
            if d != self.out and os.path.islink(d):
                continue  # (listed with the folder's own entries)
            try:
                with os.scandir(d) as entries:
                    found += [Path(e.path) for e in entries if e.is_symlink()]
            except (FileNotFoundError, NotADirectoryError):
                continue
        return sorted(found)

    def refuse_links(self) -> None:
        """Refuse a run folder that holds symbolic links: the pack writes and deletes files in it by
        name, and a link would carry those writes elsewhere."""
        found = self.links()
        if found:
            shown = ", ".join(f"{p.relative_to(self.out)} -> {os.readlink(p)}" for p in found[:3])
            raise ckpt.RunFolderError(
                f"the run folder {self.out} holds {len(found)} symbolic link(s) ({shown}); the pack never writes "
                "through links in a run folder (one handed over could aim them at any of your files). Remove the "
                "link(s), or use another run folder")

    def identity(self) -> dict[str, Any] | None:
        """The run in the folder (``run.json``), or None."""
        path = self.out / RUN_FILE
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return {"run_id": None}

    def foreign_entries(self) -> list[str]:
        """What a folder that is not one of the pack's runs (it has no ``run.json``) holds; empty
        for a new or empty folder and for a run of the pack."""
        if (self.out / RUN_FILE).is_file() and not (self.out / RUN_FILE).is_symlink():
            return []
        try:
            names = sorted(os.listdir(self.out))
        except (FileNotFoundError, NotADirectoryError):
            return []
        cdir = ckpt.checkpoint_dir(self.out)
        return [n for n in names if n != LOCK_FILE
                and not (n == ckpt.DIRNAME and cdir.is_dir() and not cdir.is_symlink() and not os.listdir(cdir))]

    def legacy_run(self) -> bool:
        """Whether the folder holds a run of a ProGRPO older than ``run.json`` (its config and
        checkpoints): it is treated as the pack's (resumed, or overwritten file by file)."""
        return (self.out / "config.toml").is_file() and bool(self.checkpoints())

    def refuse_foreign(self) -> None:
        foreign = self.foreign_entries()
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise ckpt.RunFolderError(
            f"the folder {self.out} is not a run folder of ProGRPO: it holds {shown} and no {RUN_FILE} (the file that "
            "marks a run the pack made). A run is written only into a new or empty folder or one of the pack's own "
            "runs, so nothing of yours is overwritten (--overwrite included): use a new folder, e.g. "
            f"{self.out / 'run'}")

    def holds_run(self) -> str | None:
        """A description of the run already in the folder, or None when it holds none."""
        rows = 0
        if self.metrics_path.is_file():
            rows = sum(1 for line in self.metrics_path.read_text(errors="replace").splitlines() if line.strip())
        found = self.checkpoints()
        if not found and not rows:  # (a run that stopped before its first epoch left nothing to keep)
            return None
        parts = [f"{rows} epoch(s) of metrics"] + ([f"checkpoints up to epoch {found[-1][0]}"] if found else [])
        return ", ".join(parts)

    def claim(self, resume: bool, overwrite: bool = False) -> None:
        """Make the folder this run's: a new run goes only into a new or empty folder or one of the
        pack's own runs (``run.json``), and refuses one holding another run unless ``overwrite``
        (which deletes that run's files, by name, first). (A resumed run's checkpoint is checked
        against the folder's ``run.json`` when it is loaded.)"""
        self.refuse_links()
        if resume:
            if overwrite:
                raise ckpt.RunFolderError("resume continues the run in the folder and overwrite deletes it; give one")
            return
        if self.foreign_entries() and not self.legacy_run():
            self.refuse_foreign()
        held = self.holds_run()
        if held and not overwrite:
            raise ckpt.RunFolderError(
                f"the run folder {self.out} already holds a run ({held}). Continue it with `train --resume "
                f"{self.out}`, start over in it with --overwrite (deletes that run), or choose another --out")
        if held:
            self.clear()

    def write_identity(self, run_id: str, settled: dict[str, Any] | None = None) -> None:
        """``run.json``: the run's id and its settled spec (every auto as it was resolved)."""
        write_json(self.out / RUN_FILE, {"run_id": run_id, **({"spec": settled} if settled is not None else {})})

    def clear(self) -> None:
        """Delete the files a run writes here — its results and checkpoints, by name — and nothing
        else: a file of yours in the folder or in ``checkpoints/`` stays."""
        self.refuse_links()
        for name in RESULTS:
            (self.out / name).unlink(missing_ok=True)
        for p in self.out.iterdir():
            if _RESULT_TMP.match(p.name) and p.is_file():
                p.unlink()
        cdir = ckpt.checkpoint_dir(self.out)
        if cdir.is_dir():
            for p in cdir.iterdir():
                if ckpt.is_checkpoint_file(p.name) and p.is_file():
                    p.unlink()
            try:
                cdir.rmdir()
            except OSError:  # a file of the user's is in it: it stays, and so does the folder
                pass

    # -- before training ------------------------------------------------------------------------
    def check(self, need_bytes: int, breakdown: str, check_disk: bool = True) -> None:
        """Create the folder; with ``check_disk``, also check it is writable and has room."""
        try:
            if check_disk:
                ckpt.check_run_folder(self.out, need_bytes, breakdown)
            else:
                self.out.mkdir(parents=True, exist_ok=True)
        except ckpt.RunFolderError:
            raise
        except OSError as e:
            raise ckpt.RunFolderError(f"cannot use the run folder {self.out}: {e}") from None

    def write_config(self, cfg: TrainConfig) -> None:
        write_text(self.out / "config.toml", to_toml(cfg))

    # -- metrics ----------------------------------------------------------------------------------
    def write_metrics(self, text: str) -> None:
        """Replace ``metrics.jsonl`` (empty at a start, the checkpoint's rows at a resume)."""
        write_text(self.metrics_path, text)

    def append_metrics(self, row: dict[str, Any]) -> None:
        append_line(self.metrics_path, json.dumps(row) + "\n")

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, snap: dict[str, Any], keep: int) -> Path:
        return ckpt.save_checkpoint(snap, self.out, keep)

    def checkpoints(self) -> list[tuple[int, Path]]:
        return ckpt.list_checkpoints(self.out)

    def load_latest(self, warn: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]]:
        """The newest usable checkpoint; unusable newer files are renamed ``*.unusable`` so they
        cannot outlive the resumed run's own."""
        path, snap = ckpt.load_latest(self.out, warn=warn)
        for epoch, newer in self.checkpoints():
            if epoch > snap["epoch"]:
                newer.rename(newer.with_name(newer.name + ".unusable"))
        return path, snap

    # -- results ----------------------------------------------------------------------------------
    def save_grid(self, images: torch.Tensor, per_row: int, name: str) -> Path:
        return plots.save_grid(images, per_row, self.out / name)

    def plot_rewards(self, rows: Sequence[dict[str, Any]], eval_points: list[tuple[int, float]], title: str) -> Path:
        of = next((r["reward_group_of"] for r in rows if r.get("reward_group_of")), "finished")
        return plots.reward_curve([r["epoch"] for r in rows], [nan_if_none(r.get("reward_group_mean", r.get("reward_mean"))) for r in rows],
                                  eval_points, self.out / "reward_curve.png", title=title, train_label=of,
                                  loss=[nan_if_none(r.get("loss")) for r in rows])

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return write_json(self.out / "summary.json", summary)


def space_needed(n_lora_params: int, prompts_per_epoch: int, rows_per_prompt: int, epochs: int,
                 keep_checkpoints: int, ema: bool, grid_bytes: int) -> tuple[int, str]:
    """An estimate of the bytes a run writes, and its breakdown (LoRA and optimizer state in
    float32, one metrics row per epoch, the kept checkpoints, the sample grids)."""
    lora = 4 * n_lora_params + 65_536  # float32 + header
    row = 2_048 + 16 * prompts_per_epoch * rows_per_prompt
    metrics = row * epochs
    state_copies = 2 + (1 if ema else 0)  # Adam moments (+ EMA)
    one_ckpt = lora * (1 + state_copies) + metrics + 262_144
    n_ckpt = keep_checkpoints + 1  # the newest is written before the oldest is deleted
    parts = {"LoRA": 2 * lora, "checkpoints": n_ckpt * one_ckpt, "metrics": metrics,
             "images and plots": grid_bytes + 1_000_000}
    total = int(1.1 * sum(parts.values())) + 1_000_000
    return total, ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in parts.items())


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking lock on the open file ``fd``, held until it is closed or the
    process ends: ``flock`` on POSIX, ``msvcrt.locking`` of its first byte on Windows."""
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def disk_full(e: BaseException, folder: RunFolder, words: Words = CLI_WORDS) -> None:
    """Say "disk full" for an out-of-space error while writing the run folder, and how to go on —
    promising only what is there: its newest checkpoint, or that it has none."""
    if is_disk_full(e):
        found = folder.checkpoints()
        how = (f"then continue with {words.resume(folder.out)} (from its checkpoint of epoch {found[-1][0]}; "
               "nothing half-written was kept)" if found else
               f"then {words.restart(folder.out)}: no checkpoint was written yet, so there is nothing to resume")
        raise ckpt.RunFolderError(f"the disk holding the run folder {folder.out} is full "
                                  f"({getattr(e, 'strerror', None) or 'No space left on device'}): free some space, "
                                  + how) from e
