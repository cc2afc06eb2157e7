"""Training: the one loop (:class:`Trainer`) and its parts, each with a narrow surface.

* :mod:`.rollouts`   — one epoch's prompts sampled, scored, selected; advantages (``RolloutBatch``)
* :mod:`.update`     — the clipped policy-gradient update (``UpdateStats``)
* :mod:`.evaluation` — deterministic sampling on fixed prompts and seeds
* :mod:`.state`      — counters, EMA, resumable snapshots, the resumable-settings check
* :mod:`.run_folder` — the files a run writes
* :mod:`.records`    — ``EpochRecord``, the one row shape of metrics, checkpoints and progress
* :mod:`.trainer`    — ``Trainer``: ``epochs()`` (the loop every entry point drives) and ``run()``
"""
from .evaluation import EVAL_SEED_BASE, sample_deterministic
from .records import EpochRecord, SampleStats, UpdateStats
from .rollouts import RolloutBatch
from .run_folder import RunFolder
from .averages import EMA
from .state import RESUMABLE_CHANGES, EpochsDoneError, ResumeSettingsError, TrainingStopped
from .trainer import Trainer

__all__ = ["Trainer", "TrainingStopped", "ResumeSettingsError", "EpochRecord", "SampleStats", "UpdateStats", "RolloutBatch", "RunFolder",
           "EpochsDoneError",
           "EMA", "RESUMABLE_CHANGES", "EVAL_SEED_BASE", "sample_deterministic"]
