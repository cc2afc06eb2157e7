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
