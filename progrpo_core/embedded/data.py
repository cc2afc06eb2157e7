"""scikit-learn's bundled 8×8 digits, split once: the generators never see the classifier's digits."""
from __future__ import annotations

import re

import torch

SPLIT_SEED = 0
GENERATOR_FRACTION = 0.6

_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_DIGIT = re.compile(r"(?<![0-9])([0-9])(?![0-9])")


def load_split() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"generator": (x, y), "classifier": (x, y)}``; x (N, 1, 8, 8) in [0, 1], y (N,) long.

    A stratified split with a fixed seed: 60 % of each digit's images train the generators,
    the other 40 % train (and validate) the reward classifier."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(SPLIT_SEED)
    gen_idx, cls_idx = [], []
    for c in range(10):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = int(round(len(idx) * GENERATOR_FRACTION))
        gen_idx.append(idx[:n])
        cls_idx.append(idx[n:])
    gi, ci = torch.cat(gen_idx).sort().values, torch.cat(cls_idx).sort().values
    return {"generator": (x[gi], y[gi]), "classifier": (x[ci], y[ci])}


def prompt_for(digit: int) -> str:
    return f"a handwritten {digit}"


def digit_of(prompt: str) -> int:
    """The digit a prompt names ("a handwritten 7", "seven"); a clear error otherwise."""
    m = _DIGIT.search(prompt)
    if m:
        return int(m.group(1))
    low = prompt.lower()
    for i, w in enumerate(_WORDS):
        if re.search(rf"\b{w}\b", low):
            return i
    raise ValueError(
        f"prompt {prompt!r} names no digit; the built-in digits model understands prompts naming one "
        "digit 0-9, like 'a handwritten 7' or 'seven'")
