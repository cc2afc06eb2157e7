"""Reward models by name.

Configs, the command line and the ComfyUI nodes all name rewards the same way::

    build_reward("digit")                      # built-in digit classifier reward
    build_reward("pickscore", path="/models/PickScore_v1")
    build_reward("my_pkg.rewards:make_reward")  # a user's own: a dotted path to a callable

Factories are registered as ``"module:function"`` strings and imported on first use, so
naming a reward never imports transformers or open_clip unless that reward is built.
A factory is called as ``factory(path=..., device=..., dtype=..., **options)`` and returns a
:class:`Reward`.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from .base import (OffloadedReward, PluginReward, Reward, RewardInputError, RewardPluginError, RewardWrapper,
                   check_images,
                   check_scores)
from .weighted import RewardSpec, WeightedReward, build_reward_from_spec, parse_reward_spec
from .weights import (CheckpointMismatchError, RewardWeightsNotFound, UnsafeCheckpointError,
                      find_reward_weights)

__all__ = [
    "Reward", "RewardWrapper", "OffloadedReward", "PluginReward", "RewardInputError", "RewardPluginError", "check_images",
    "check_scores",
    "register_reward", "build_reward", "available_rewards", "reward_help",
    "find_reward_weights", "RewardWeightsNotFound", "UnsafeCheckpointError", "CheckpointMismatchError",
    "WeightedReward", "RewardSpec", "parse_reward_spec", "build_reward_from_spec",
]

# name -> (factory "module:function" or callable, one-line help)
_REGISTRY: dict[str, tuple[str | Callable[..., Reward], str]] = {
    "digit": ("progrpo_core.rewards.builtin:make_digit_reward",
              "built-in: probability the classifier gives the prompted digit (0..1)"),
    "stroke": ("progrpo_core.rewards.builtin:make_stroke_reward",
               "built-in: ink coverage, the mean pixel intensity (0..1); a different kind of reward"),
    "pickscore": ("progrpo_core.rewards.clip_rewards:make_pickscore",
                  "PickScore_v1 (CLIP ViT-H/14): logit_scale*cos, about 18..24; folder PickScore_v1"),
    "hpsv2": ("progrpo_core.rewards.hps:make_hpsv2",
              "HPSv2.0 (open_clip ViT-H-14): cos, about 0.2..0.35; file HPS_v2_compressed.pt"),
    "hpsv2.1": ("progrpo_core.rewards.hps:make_hpsv21",
                "HPSv2.1 (open_clip ViT-H-14): cos, about 0.25..0.37; file HPS_v2.1_compressed.pt"),
    "clip": ("progrpo_core.rewards.clip_rewards:make_clip_score",
             "CLIP score: cos(image, text) in -1..1 (about 0.15..0.4), any transformers CLIP folder"),
    "aesthetic": ("progrpo_core.rewards.clip_rewards:make_aesthetic",
                  "LAION aesthetic predictor v2 on CLIP ViT-L/14, about 1..10 (5..7 typical); prompt unused"),
    "imagereward": ("progrpo_core.rewards.imagereward:make_imagereward",
                    "ImageReward v1.0 (BLIP): normalised, about -2..2; ImageReward.pt + med_config.json"),
    "weighted": ("progrpo_core.rewards.weighted:make_weighted_reward",
                 "weighted sum; path is a spec 'pickscore=PATH*0.7,hpsv2.1=PATH*0.3' (see docs/REWARDS.md)"),
}


def register_reward(name: str, factory: str | Callable[..., Reward], help: str = "") -> None:
    """Register a reward factory under ``name`` (a callable, or a ``"module:function"`` string)."""
    if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise ValueError(f"reward name {name!r} must be letters, digits, '-', '_' or '.'")
    _REGISTRY[name] = (factory, help)


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def reward_help() -> dict[str, str]:
    return {k: v[1] for k, v in sorted(_REGISTRY.items())}


def _resolve(target: str | Callable[..., Any], what: str) -> Callable[..., Any]:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    if not attr:
        module, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"{what}: cannot import {target!r} ({e}); give a dotted path 'package.module:callable' "
            "to a function that returns a Reward") from e
    if not callable(obj):
        raise ValueError(f"{what}: {target!r} is not callable")
    return obj


def build_reward(name: str, path: str | None = None, device: str = "cpu", dtype: str = "float32",
                 **options: Any) -> Reward:
    """Build the reward registered as ``name``, a weighted spec (``"digit*0.7,stroke*0.3"``,
    ``"pickscore=PATH*0.7,hpsv2.1=PATH*0.3"``), or a user's own given as a dotted path."""
    if name not in _REGISTRY and any(ch in name for ch in ",=*"):
        if path is not None:
            raise ValueError(f"reward spec {name!r} names its own paths (NAME=PATH*WEIGHT); "
                             f"drop the separate path {path!r}")
        from .weighted import build_reward_from_spec

        return build_reward_from_spec(name, device=device, dtype=dtype, **options)
    plugin = name not in _REGISTRY
    if not plugin:
        factory = _resolve(_REGISTRY[name][0], f"reward {name!r}")
    elif ":" in name or "." in name:
        factory = _resolve(name, f"reward {name!r}")
    else:
        raise ValueError(
            f"unknown reward {name!r}; expected one of {', '.join(available_rewards())}, "
            "or a dotted path 'package.module:callable' to your own")
    try:
        reward = factory(path=path, device=device, dtype=dtype, **options)
    except Exception as e:
        if not plugin:
            raise
        raise RewardPluginError(f"reward plug-in {name!r} failed to build: {type(e).__name__}: {e}") from e
    if not isinstance(reward, Reward):
        raise RewardPluginError(f"reward plug-in {name!r} returned a {type(reward).__name__}, expected a "
                                "progrpo_core.rewards.Reward (subclass it and implement score(images, prompts))")
    return PluginReward(reward, name) if plugin else reward
