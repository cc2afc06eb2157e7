"""Built-in rewards for the digits models: need no download.

* ``digit``: the probability the built-in classifier (trained on digits the generators never
  saw) gives the digit the prompt names, in [0, 1]. On a two-digit image (twice as wide as tall)
  and a prompt naming two digits in order ("a 3 left of a 7"), the product of the left tile's
  probability of the left digit and the right tile's of the right one: the chance both are right
  and in their places.
* ``stroke``: ink coverage, the mean pixel intensity, in [0, 1] — a reward of a different kind,
  easy to hack, so multi-reward and the "gold" (held-out reward) check work here too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch.nn import functional as F

from .base import Reward


class DigitReward(Reward):
    name = "digit"

    def __init__(self, classifier: torch.nn.Module):
        self.classifier = classifier.eval().requires_grad_(False)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        from ..embedded.data import digit_of, pair_of

        h, w = images.shape[-2:]
        if w == 2 * h:
            labels = torch.tensor([pair_of(p) for p in prompts], dtype=torch.long)  # (N, 2)
            tiles = [images[..., :h], images[..., h:]]
        elif w == h:
            labels = torch.tensor([digit_of(p) for p in prompts], dtype=torch.long)[:, None]
            tiles = [images]
        else:
            raise ValueError(f"the digit reward scores square images of one digit or images twice as wide as tall "
                             f"of two; got {h}×{w}")
        device = next(self.classifier.parameters()).device  # where place() put it (the CPU unless offloaded)
        labels = labels.to(device)
        score = torch.ones(len(prompts), device=device)
        for k, tile in enumerate(tiles):
            gray = tile.float().mean(1, keepdim=True)  # (N, 1, H, H)
            if gray.shape[-2:] != (8, 8):
                gray = F.adaptive_avg_pool2d(gray, 8)
            probs = self.classifier(gray.flatten(1).to(device)).softmax(-1)  # (N, 10)
            score = score * probs.gather(1, labels[:, k:k + 1]).squeeze(1)
        return score


class StrokeReward(Reward):
    name = "stroke"

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3))


def load_classifier(path: str | Path | None = None) -> torch.nn.Module:
    from ..embedded import CLASSIFIER_FILE, WEIGHTS_DIR, load_net
    from ..embedded.nets import DigitClassifier

    from ..io import input_file

    file = input_file(path, "the digit reward's classifier (reward.path)") if path else WEIGHTS_DIR / CLASSIFIER_FILE
    if not file.exists():
        raise FileNotFoundError(
            f"digit classifier weights not found at {file}; run `python -m progrpo_core pretrain` to rebuild them")
    return load_net(file, "the digit reward's classifier" + (" (reward.path)" if path else ""), DigitClassifier)[0]


def make_digit_reward(path: str | None = None, device: str = "cpu", dtype: str = "float32", **_) -> DigitReward:
    return DigitReward(load_classifier(path))


def make_stroke_reward(path: str | None = None, device: str = "cpu", dtype: str = "float32", **_) -> StrokeReward:
    if path:
        raise ValueError(f"the stroke reward has no weights; got path {path!r}, give none")
    return StrokeReward()
