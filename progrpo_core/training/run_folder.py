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
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import checkpoint as ckpt
from .. import plots
from ..config import TrainConfig, to_toml
from ..io import write_json, write_text
from .records import nan_if_none


class RunFolder:
    """The files of one run in ``out`` (the LoRA at ``lora_path``, default ``out/lora.safetensors``)."""

    def __init__(self, out: str | Path, lora_path: str | Path | None = None):
        self.out = Path(out)
        self.lora_path = Path(lora_path) if lora_path is not None else self.out / "lora.safetensors"
        self.metrics_path = self.out / "metrics.jsonl"

    def __repr__(self) -> str:
        return f"RunFolder({str(self.out)!r})"

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
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

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
        return plots.reward_curve([r["epoch"] for r in rows], [nan_if_none(r.get("reward_mean")) for r in rows],
                                  eval_points, self.out / "reward_curve.png", title=title,
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
