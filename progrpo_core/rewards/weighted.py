"""Weighted combinations of rewards, and the spec string that names them.

Spec syntax (command line, config files, ComfyUI text widgets)::

    SPEC  := PART ("," PART)*
    PART  := NAME ["=" PATH] ["*" WEIGHT]

    pickscore=/models/PickScore_v1*0.7,hpsv2.1=/models/HPS_v2.1_compressed.pt*0.3
    pickscore*0.5,aesthetic*0.5          # weights found via search folders / PROGRPO_REWARD_DIR
    digit                                # one reward, weight 1

``NAME`` is a registered reward (or a dotted path to a factory); ``PATH`` runs to the last ``*``
that is followed by a number, so paths may contain ``=`` and ``:`` but not ``,``. A missing weight is
1; a weight of 0 keeps a reward as a logged, untrained metric; negative weights penalise.

The total is ``sum_i w_i * r_i`` on raw scores. :meth:`WeightedReward.evaluate` returns every
component under its name plus ``"total"``, and :meth:`WeightedReward.components` the
``(name, weight)`` pairs, so a trainer can instead normalise each component's advantages within a
group before weighting them (raw scores of different rewards live on very different scales:
PickScore ~20, HPS ~0.3, aesthetic ~6).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from .base import Reward, check_images

TOTAL = "total"
_WEIGHT = re.compile(r"^(?P<body>.*)\*\s*(?P<w>[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class RewardSpec:
    """One part of a spec: a reward name, where its weights are, and its weight."""
    name: str
    path: str | None = None
    weight: float = 1.0
    weighted: bool = False      # the spec gave a weight explicitly


def parse_reward_spec(spec: str) -> list[RewardSpec]:
    """``"pickscore=PATH*0.7,hpsv2.1*0.3"`` -> ``[RewardSpec('pickscore', 'PATH', 0.7), ...]``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("reward spec is empty; expected e.g. 'pickscore=PATH*0.7,hpsv2.1=PATH*0.3'")
    parts = []
    for raw in spec.split(","):
        text = raw.strip()
        if not text:
            raise ValueError(f"reward spec {spec!r} has an empty part (two commas, or a trailing comma)")
        weight, weighted = 1.0, False
        if m := _WEIGHT.match(text):
            text, weight, weighted = m.group("body").strip(), float(m.group("w")), True
            if not math.isfinite(weight):
                raise ValueError(f"reward spec part {raw.strip()!r}: weight must be a finite number")
        name, eq, path = text.partition("=")
        name, path = name.strip(), path.strip()
        if not name:
            raise ValueError(f"reward spec part {raw.strip()!r} has no reward name; expected NAME[=PATH][*WEIGHT]")
        if eq and not path:
            raise ValueError(f"reward spec part {raw.strip()!r} has '=' but no path after it")
        if "*" in name:
            raise ValueError(f"reward spec part {raw.strip()!r}: the weight after '*' must be a number, "
                             "e.g. pickscore=PATH*0.7")
        parts.append(RewardSpec(name, path or None, weight, weighted))
    return parts


class WeightedReward(Reward):
    """``total = sum_i w_i * r_i``; every ``r_i`` is reported by :meth:`evaluate`."""

    name = "weighted"

    def __init__(self, parts: Sequence[tuple[str, Reward, float]]):
        if not parts:
            raise ValueError("a weighted reward needs at least one part")
        names = [n for n, _, _ in parts]
        if len(set(names)) != len(names) or TOTAL in names:
            raise ValueError(f"weighted reward component names must be unique and not {TOTAL!r}, got {names}")
        for n, _, w in parts:
            if not math.isfinite(float(w)):
                raise ValueError(f"weighted reward: weight of {n!r} must be finite, got {w}")
        self.parts = [(n, r, float(w)) for n, r, w in parts]

    def evaluate(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each component's raw scores (N,) under its name, and their weighted sum under ``"total"``."""
        check_images(images, prompts, self.name)
        out = {n: reward(images, prompts) for n, reward, _ in self.parts}
        out[TOTAL] = sum(w * out[n] for n, _, w in self.parts)
        return out

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.evaluate(images, prompts)[TOTAL]

    @property
    def total_key(self) -> str:
        return TOTAL

    def components(self) -> list[tuple[str, float]]:
        return [(n, w) for n, _, w in self.parts]

    def modules(self) -> list[torch.nn.Module]:
        return [m for _, r, _ in self.parts for m in r.modules()]

    def place(self, device) -> None:
        for _, r, _ in self.parts:
            r.place(device)


def component_names(names: Sequence[str]) -> list[str]:
    """Unique component names: a repeated name gets ``_2``, ``_3`` …; a combination is ``combined``."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        name = "combined" if ("," in name or "*" in name or name == TOTAL) else name
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _build_part(spec: RewardSpec, device, dtype, search_dirs) -> Reward:
    from . import build_reward
    from .weights import WEIGHT_SOURCES

    if spec.name == "weighted":
        raise ValueError("a weighted reward cannot contain another weighted reward; list its parts instead")
    extra = {"search_dirs": tuple(search_dirs)} if spec.name in WEIGHT_SOURCES and search_dirs else {}
    return build_reward(spec.name, path=spec.path, device=device, dtype=dtype, **extra)


def build_reward_from_spec(spec: str, device: str = "cpu", dtype: str = "float32",
                           search_dirs: Sequence[str] = ()) -> Reward:
    """One reward for a one-part spec without a weight, else a :class:`WeightedReward`."""
    specs = parse_reward_spec(spec)
    if len(specs) == 1 and not specs[0].weighted:
        return _build_part(specs[0], device, dtype, search_dirs)
    names = component_names([s.name for s in specs])
    return WeightedReward([(n, _build_part(s, device, dtype, search_dirs), s.weight) for n, s in zip(names, specs)])


def make_weighted_reward(path=None, device="cpu", dtype="float32", search_dirs=(), spec=None, **options) -> Reward:
    """Registry factory: ``build_reward("weighted", path=SPEC)`` or ``spec=SPEC``; always a
    :class:`WeightedReward`, even for one part."""
    if options:
        raise TypeError(f"reward 'weighted' got unknown option(s) {', '.join(sorted(options))}")
    spec = spec if spec is not None else path
    if spec is None:
        raise ValueError("the weighted reward needs a spec, e.g. 'pickscore=PATH*0.7,hpsv2.1=PATH*0.3' "
                         "(pass it as the path or as spec=...)")
    specs = parse_reward_spec(spec)
    names = component_names([s.name for s in specs])
    return WeightedReward([(n, _build_part(s, device, dtype, search_dirs), s.weight) for n, s in zip(names, specs)])
