"""Small helpers the training tests share."""
from __future__ import annotations

import json
from pathlib import Path

from progrpo_core import config as C


def config_with(settings: dict, out: Path, **run) -> C.TrainConfig:
    """``settings`` (a config table) with the run folder ``out`` and ``run`` settings on top."""
    table = {k: dict(v) for k, v in settings.items()}
    table.setdefault("run", {}).update(out=str(out), **run)
    return C.build_config(table)


def metrics_rows(run: Path) -> list[dict]:
    """The run's metrics.jsonl rows."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def cut_trainer(tmp_path: Path, **sections):
    """A Trainer of ``pro-mixgrpo-8`` cut to 8 → 4 on two prompts an epoch, T = 10, nothing saved
    or evaluated on the way (the preview tests' run), with ``sections`` on top."""
    from progrpo_core.training import Trainer

    table = {"run": {"out": str(tmp_path), "epochs": 3, "eval_seeds": 1, "eval_every": 0, "save_every": 0,
                     "checkpoint_every": 0},
             "grpo": {"method": "pro-mixgrpo-8", "prompts_per_epoch": 2, "lr": 1e-2},
             "schedule": {"group_size": 8, "keep": "4"}, "sampler": {"steps": 10}}
    for k, v in sections.items():
        table.setdefault(k, {}).update(v)
    return Trainer.build(C.build_config(table), log=lambda s: None)
