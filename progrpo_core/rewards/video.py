"""Rewards on video: the mean of an image reward over frames, and a frame-consistency term.

Shapes: ``N`` videos, ``F`` frames each, frames ``(3, H, W)`` float in [0, 1]; a batch of videos is
``(N, F, 3, H, W)``. A video model's denoiser decodes the frames this reward scores (frames 0,
``stride``, 2·``stride``, … — ``count`` of them), so only those are decoded and scored.

:class:`VideoReward` scores each frame with an image reward (its prompt repeated per frame) and
takes the mean over frames; with a ``consistency`` model (a CLIP reward, whose image embeddings it
uses) it adds ``weight ×`` the mean cosine similarity of consecutive frames' embeddings, in [-1, 1]
(1: the frames look alike to CLIP). Components: the image reward's (frame means), ``consistency``
when on, and ``total`` (what is trained) when there is more than one.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .base import Reward, RewardInputError, check_images

DEFAULT_FRAMES = (4, 4)  # (count, stride): frames 0, 4, 8, 12


def check_frames(count: int, stride: int) -> tuple[int, int]:
    if int(count) < 1:
        raise ValueError(f"video reward frames={count}: score at least 1 frame")
    if int(stride) < 1:
        raise ValueError(f"video reward stride={stride}: use 1 (every frame) or more")
    return int(count), int(stride)


def check_videos(videos: torch.Tensor, prompts: Sequence[str], who: str) -> None:
    """(N, F, 3, H, W) float in [0, 1], one prompt per video."""
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or videos.shape[2] != 3:
        shape = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise RewardInputError(f"{who}: videos must have shape (N, F, 3, H, W), got {shape}; an image batch "
                               "(N, 3, H, W) goes to the image reward itself")
    check_images(videos[:, 0], prompts, who)


class VideoReward(Reward):
    """``inner`` (an image reward) averaged over frames, plus ``weight`` × the consecutive-frame
    CLIP similarity of ``consistency`` (a reward with ``image_embeddings``, e.g. ``clip``)."""

    def __init__(self, inner: Reward, frames: int = DEFAULT_FRAMES[0], stride: int = DEFAULT_FRAMES[1],
                 consistency: Reward | None = None, weight: float = 0.0):
        self.inner = inner
        self.frames = check_frames(frames, stride)
        if consistency is not None and not hasattr(consistency, "image_embeddings"):
            raise ValueError(f"the frame-consistency model {consistency.name!r} has no image embeddings; load a CLIP "
                             "model (reward 'clip') for it")
        self.consistency, self.weight = consistency, float(weight)
        self.name = inner.name

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.evaluate(images, prompts)[self.total_key]

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.evaluate(images, prompts)[self.total_key]

    @property
    def parts(self) -> list[str]:
        names = [n for n, _ in self.inner.components()]
        if self.inner.total_key not in names:
            names.append(self.inner.total_key)
        return names

    def evaluate(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        check_videos(images, prompts, f"video reward {self.name!r}")
        n, f = images.shape[:2]
        flat = images.reshape(n * f, *images.shape[2:])  # (N·F, 3, H, W)
        per_frame = self.inner.evaluate(flat, [p for p in prompts for _ in range(f)])
        out = {k: v.reshape(n, f).mean(1) for k, v in per_frame.items()}  # (N,) each: the frame mean
        if self.consistency is None:
            return out
        out["consistency"] = self.frame_consistency(images)
        out["total"] = out[self.inner.total_key] + self.weight * out["consistency"]
        return out

    def frame_consistency(self, videos: torch.Tensor) -> torch.Tensor:
        """Mean cosine similarity of consecutive frames' CLIP image embeddings, (N,); 1 for one frame."""
        n, f = videos.shape[:2]
        if f < 2:
            return torch.ones(n)
        with torch.no_grad():
            emb = self.consistency.image_embeddings(videos.reshape(n * f, *videos.shape[2:]).clamp(0, 1))
        emb = emb.float().reshape(n, f, -1)
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return (emb[:, 1:] * emb[:, :-1]).sum(-1).mean(1).cpu()  # (N,)

    @property
    def total_key(self) -> str:
        return "total" if self.consistency is not None else self.inner.total_key

    def components(self) -> list[tuple[str, float]]:
        parts = self.inner.components()
        return parts + [("consistency", self.weight)] if self.consistency is not None else parts

    def modules(self) -> list[torch.nn.Module]:
        return self.inner.modules() + (self.consistency.modules() if self.consistency is not None else [])

    def place(self, device) -> None:
        self.inner.place(device)
        if self.consistency is not None:
            self.consistency.place(device)
