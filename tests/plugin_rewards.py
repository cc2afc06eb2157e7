"""Reward plug-ins that break the contract, for tests/test_reliability.py (named as
``plugin_rewards:NAME`` on the command line)."""
from __future__ import annotations

import torch

from progrpo_core.rewards import Reward


class _Wrong(Reward):
    name = "wrong"

    def score(self, images, prompts):
        return torch.zeros(len(images) + 1)


class _Raising(Reward):
    name = "raising"

    def score(self, images, prompts):
        raise KeyError("no such prompt in my lookup table")


class _Constant(Reward):
    name = "constant"

    def score(self, images, prompts):
        return torch.full((len(images),), 0.5)


def wrong_count(**_):
    return _Wrong()


def not_a_reward(**_):
    return {"score": 1.0}


def raising(**_):
    return _Raising()


def constant(**_):
    return _Constant()
