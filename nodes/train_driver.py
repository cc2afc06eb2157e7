"""The GRPO LoRA Trainer node's work that needs no ComfyUI: its config from the widgets, the live
preview and the curves. The node drives the core's one training loop
(:meth:`progrpo_core.training.Trainer.epochs`); the host side (cloning the MODEL, adapters, the
guider session) is in :mod:`host`. The CI tests run these functions on the built-in digits model.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.nn import functional as F

from progrpo_core import plots
from progrpo_core.rewards import Reward, RewardWrapper
from progrpo_core.training import EpochRecord

TILE_PX = 96
PREVIEW_PX = (512, 512)   # (height, width) of the trainer node's live preview
PREVIEW_GAP = 8


# the config from the widgets, and messages in their words: nodes.widgets
from .widgets import NODE_WORDS, SETTING_WIDGETS, build_train_config  # noqa: E402,F401  (re-exported)


def resume_refusal(e, run_name: str) -> str:
    """A :class:`ResumeSettingsError` told in the node's words: widgets, not command-line settings."""
    changed = []
    for section, key, saved, now in e.diffs:
        name = SETTING_WIDGETS.get(f"{section}.{key}", f"{section}.{key}")
        changed.append(f"{name}: {saved!r} in the run, {now!r} now")
    may = sorted({SETTING_WIDGETS[a] for a in e.allowed if a in SETTING_WIDGETS})
    return (f"cannot resume run {run_name!r}: these differ from the run's own settings: " + "; ".join(changed)
            + f". Set them back to resume (only {', '.join(may)} may change), or turn 'resume' off and give a new "
            "run_name to train with the new settings (or 'overwrite' on to start this run over; that deletes it).")


def check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    out = [str(p).strip() for p in (prompts or []) if str(p).strip()]
    if not out:
        raise ValueError("the prompt list is empty; write at least one prompt (one per line) in the ProGRPO Prompt List")
    return out


def parse_prompt_text(text: str) -> list[str]:
    """One prompt per non-empty line; lines starting with ``#`` are comments."""
    return [ln.strip() for ln in str(text).splitlines() if ln.strip() and not ln.strip().startswith("#")]


class LoraTensors(dict):
    """A ComfyUI ``LORA_MODEL`` (dict of tensors) that also carries its file header."""

    metadata: dict[str, str]

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
        super().__init__(tensors)
        self.metadata = dict(metadata or {})


def trained_lora(trainer) -> LoraTensors:
    """The trainer's LoRA as saved (the EMA weights when EMA is on), with its file header."""
    return LoraTensors(*trainer.lora_tensors())


# ---- a reward that remembers what it saw (for the live preview, at no extra decode) ---------------

class RecordingReward(RewardWrapper):
    """Passes every call to ``inner`` and keeps small copies of the first and the latest batch of
    images of an epoch: the first is the whole expanded group (proxies at the first checkpoint, or
    the finished images when nothing is pruned while sampling), the latest the finished images."""

    def __init__(self, inner: Reward, tile_px: int = TILE_PX):
        super().__init__(inner)
        self.tile_px = tile_px
        self.first: torch.Tensor | None = None
        self.last: torch.Tensor | None = None

    def reset(self) -> None:
        self.first = self.last = None

    def _small(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 5:  # videos (N, F, 3, H, W): the preview shows each one's first scored frame
            images = images[:, 0]
        h, w = images.shape[-2:]
        s = min(1.0, self.tile_px / max(h, w))
        small = images.detach().float()
        if s < 1.0:
            small = F.interpolate(small, size=(max(1, round(h * s)), max(1, round(w * s))), mode="area")
        return small.cpu()

    def evaluate(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        small = self._small(images)
        if self.first is None:
            self.first = small
        self.last = small
        return self.inner.evaluate(images, prompts)


def preview_grid(recorder: RecordingReward, result, group_size: int, prompts_per_epoch: int) -> torch.Tensor | None:
    """(3, 512, 512), whatever the group size, so the node's preview keeps one size: the top half
    the first prompt's expanded group (its proxy previews, pruned trajectories dimmed red), the
    bottom half its trained survivors' final images. None when nothing was recorded."""
    if recorder.first is None or recorder.last is None:
        return None
    ro = result.rollout
    survivors = ro.row_id[ro.prompt_index == 0].tolist()  # row ids of prompt 0's trained rows
    top = recorder.first[:group_size].clone()
    dropped = [i for i in range(top.shape[0]) if i not in survivors]
    top[dropped] = top[dropped] * 0.3 + torch.tensor([0.5, 0.0, 0.0]).view(1, 3, 1, 1) * 0.4
    last = recorder.last
    if last.shape[0] == prompts_per_epoch * group_size:  # finished rows of the whole group (no pruning)
        bottom = last[:group_size][survivors]
    else:  # the survivors, prompt-major
        bottom = last[(ro.prompt_index == 0).cpu()][: len(survivors)]
    half = (PREVIEW_PX[0] - PREVIEW_GAP) // 2
    blocks = [_fit(_block(rows), (half, PREVIEW_PX[1])) for rows in (top, bottom)]
    gap = torch.full((3, PREVIEW_PX[0] - 2 * half, PREVIEW_PX[1]), 0.75)
    return torch.cat([blocks[0], gap, blocks[1]], dim=1)                # (3, *PREVIEW_PX)


def _block(images: torch.Tensor) -> torch.Tensor:
    """(n, 3, h, w) → one grid, about twice as wide as tall (the shape of half the preview)."""
    n = images.shape[0]
    ncol = max(1, min(n, math.ceil(math.sqrt(2 * n))))
    return plots.image_grid(images, ncol, scale=1, gap=2, background=1.0)


def _fit(image: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) scaled to fit inside ``hw`` keeping its aspect, centred on white: (3, *hw)."""
    H, W = image.shape[-2:]
    f = min(hw[0] / H, hw[1] / W)
    h, w = max(1, min(hw[0], round(H * f))), max(1, min(hw[1], round(W * f)))
    if f < 1:
        image = F.interpolate(image[None].float(), size=(h, w), mode="bilinear", antialias=True,
                              align_corners=False)[0].clamp(0, 1)
    else:  # small tiles (the digits) stay sharp
        image = F.interpolate(image[None].float(), size=(h, w), mode="nearest-exact")[0]
    out = torch.ones(3, *hw)
    top, left = (hw[0] - h) // 2, (hw[1] - w) // 2
    out[:, top:top + h, left:left + w] = image
    return out


def drive_training(trainer, folder=None, on_step: Callable[[int, int], None] | None = None,
                   on_epoch: Callable[[EpochRecord], None] | None = None) -> list[EpochRecord]:
    """Drive the core's training loop from the trainer's current epoch to ``run.epochs`` with the
    node's callbacks: ``on_step(done, total)`` after every sampling step and after each epoch's
    training (``total = epochs left · (T+1)``), ``on_epoch(record)`` after each epoch (its
    ``record.batch`` holds the trained rows, for the preview). Returns this call's records."""
    start, T = trainer.epoch, trainer.sampler.steps
    total = (trainer.cfg.run.epochs - start) * (T + 1)
    recorder = trainer.reward if isinstance(trainer.reward, RecordingReward) else None

    def on_sample_step(info: dict) -> None:
        if on_step is not None:
            on_step((trainer.epoch - 1 - start) * (T + 1) + info["step"] + 1, total)

    history = []
    trainer.ensure_plan()  # before the reset: the planner's probe scores a few images
    if recorder is not None:
        recorder.reset()
    for record in trainer.epochs(folder, on_sample_step=on_sample_step):
        history.append(record)
        if on_step is not None:
            on_step((record.epoch - start) * (T + 1), total)
        if on_epoch is not None:
            on_epoch(record)
        if recorder is not None:
            recorder.reset()
    return history


def curves_image(history: Sequence[EpochRecord], title: str) -> torch.Tensor:
    """Reward and loss per epoch as a ComfyUI IMAGE (1, H, W, 3)."""
    import numpy as np
    from PIL import Image

    from progrpo_core import plots

    if history:
        epochs = [r.epoch for r in history]
        rewards = [r.group_reward for r in history]
        losses = [r.loss if math.isfinite(r.loss) else float("nan") for r in history]
    else:
        epochs, rewards, losses = [0], [float("nan")], [float("nan")]
    with tempfile.TemporaryDirectory() as d:
        of = history[0].sample.group_mean()[1] if history else "finished"
        path = plots.reward_curve(epochs, rewards, [], Path(d) / "curves.png", title=title, loss=losses,
                                  train_label=of)
        with Image.open(path) as im:
            arr = torch.from_numpy(np.asarray(im.convert("RGB")).copy())
    return (arr.float() / 255)[None]
