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


def pair_prompt(left: int, right: int) -> str:
    return f"a {left} left of a {right}"


_TOKEN = re.compile(r"(?<![0-9])[0-9](?![0-9])|\b(?:" + "|".join(_WORDS) + r")\b", re.IGNORECASE)


def pair_of(prompt: str) -> tuple[int, int]:
    """The (left, right) digits a two-digit prompt names: "a 3 left of a 7" or "a 7 right of a 3"
    (both give (3, 7)); digits as numerals or words. A clear error for any other count."""
    found = [int(t) if t.isdigit() else _WORDS.index(t.lower()) for t in _TOKEN.findall(prompt)]
    if len(found) != 2:
        raise ValueError(
            f"prompt {prompt!r} names {len(found)} digit(s); the two-digit built-in model wants prompts naming two "
            "digits and their order, like 'a 3 left of a 7' or 'a 7 right of a 3'")
    a, b = found
    return (b, a) if re.search(r"\bright of\b", prompt, re.IGNORECASE) else (a, b)


def digit_of(prompt: str) -> int:
    """The digit a prompt names ("a handwritten 7", "seven"); a clear error otherwise, also for a
    prompt naming two different digits (which one would it mean?)."""
    named = {int(t) if t.isdigit() else _WORDS.index(t.lower()) for t in _TOKEN.findall(prompt)}
    if len(named) > 1:
        shown = ", ".join(map(str, sorted(named)))
        raise ValueError(f"prompt {prompt!r} names {len(named)} different digits ({shown}); "
                         "the one-digit built-in model draws one digit per image: name exactly one, like 'a "
                         "handwritten 7' (the two-digit models digits-pair-flow/-eps draw pairs)")
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
