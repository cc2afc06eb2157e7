"""Plots and image grids (matplotlib, Agg backend; nothing opens a window)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .io import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def reward_curve(epochs: Sequence[int], train_reward: Sequence[float], eval_points: Sequence[tuple[int, float]],
                 path: str | Path, title: str = "reward", loss: Sequence[float] | None = None,
                 train_label: str = "finished") -> Path:
    """``train_reward``: each epoch's whole-group mean, ``train_label`` what it is ("finished"
    trajectories, or "proxy at step s" where pruning stopped some early)."""
    plt = _plt()
    ncols = 2 if loss else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.5), squeeze=False)
    ax = axes[0][0]
    ax.plot(list(epochs), list(train_reward), label=f"train (group mean, {train_label})", alpha=0.8)
    if eval_points:
        ex, ey = zip(*eval_points)
        ax.plot(ex, ey, "o-", label="eval (deterministic, held-out seeds)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend(fontsize=8)
    if loss:
        axes[0][1].plot(list(epochs), list(loss), color="tab:red")
        axes[0][1].set_xlabel("epoch")
        axes[0][1].set_title("policy loss")
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def image_grid(images: torch.Tensor, nrow: int, scale: int = 4, gap: int = 2, background: float = 0.5) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] → one grid image (3, H', W'), ``nrow`` per row,
    nearest-upscaled by ``scale``, tiles separated (and framed) by ``gap`` pixels of ``background``."""
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    tiles = images.float().cpu().repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    th, tw = h * scale, w * scale
    grid = torch.full((c, rows * (th + gap) + gap, nrow * (tw + gap) + gap), float(background))
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = gap + r * (th + gap), gap + col * (tw + gap)
        grid[:, y:y + th, x:x + tw] = tiles[i]
    return grid


MAX_GRID_PIXELS = 89_478_485  # PIL's own limit for reading an image back (Image.MAX_IMAGE_PIXELS)


def grid_shape(n: int, nrow: int, hw: tuple[int, int], scale: int, gap: int = 2) -> tuple[int, int]:
    """``(height, width)`` in pixels of :func:`image_grid` of ``n`` images of ``hw`` pixels."""
    rows = (n + nrow - 1) // nrow
    return rows * (hw[0] * scale + gap) + gap, nrow * (hw[1] * scale + gap) + gap


def check_grid_size(n: int, nrow: int, hw: tuple[int, int], scale: int, what: str = "scale") -> None:
    """Refuse a grid too large to write (or for image viewers, PIL included, to read back)."""
    if scale < 1:
        raise ValueError(f"{what}={scale} must be 1 or more (the pixel upscale of each image)")
    h, w = grid_shape(n, nrow, hw, scale)
    if h * w > MAX_GRID_PIXELS:
        raise ValueError(f"{what}={scale} makes a grid of {w}×{h} pixels ({n} images of {hw[1]}×{hw[0]}), more than "
                         f"{MAX_GRID_PIXELS / 1e6:.0f} million, which image readers refuse; lower {what} (at most "
                         f"{_largest_scale(n, nrow, hw)} here) or the number of images")


def _largest_scale(n: int, nrow: int, hw: tuple[int, int]) -> int:
    s = 1
    while (lambda hw_: hw_[0] * hw_[1])(grid_shape(n, nrow, hw, s + 1)) <= MAX_GRID_PIXELS:
        s += 1
    return s


def save_grid(images: torch.Tensor, nrow: int, path: str | Path, scale: int = 4) -> Path:
    """Write ``images`` (N, 3, H, W) in [0, 1] as one PNG grid; NaN or infinite images are refused
    (they would be written as black or white tiles that look like results)."""
    from PIL import Image

    from .io import _atomic

    check_grid_size(images.shape[0], nrow, tuple(images.shape[-2:]), scale)
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"refusing to write {path}: {int((~torch.isfinite(images)).sum())} pixel values are NaN or "
                         "infinite")
    grid = (image_grid(images, nrow, scale).permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype("uint8")
    return _atomic(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))


def reward_histogram(rewards: torch.Tensor, kept: torch.Tensor, path: str | Path | None = None,
                     title: str = "rewards: kept vs dropped"):
    """The reward-clustering picture: one group's rewards with the kept subset marked.
    Returns the figure as an image tensor (3, H, W) in [0, 1]; also saved when ``path`` is given."""
    import numpy as np

    plt = _plt()
    r = rewards.detach().float().cpu()
    mask = torch.zeros(len(r), dtype=torch.bool)
    mask[kept] = True
    fig, ax = plt.subplots(figsize=(5, 3))
    bins = np.linspace(float(r.min()) - 1e-6, float(r.max()) + 1e-6, 16)
    ax.hist([r[~mask].numpy(), r[mask].numpy()], bins=bins, stacked=True, label=["dropped", "kept"],
            color=["lightgray", "tab:blue"])
    ax.axvline(float(r.mean()), color="k", ls="--", lw=1, label="group mean")
    ax.set_xlabel("reward")
    ax.set_ylabel("trajectories")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255
