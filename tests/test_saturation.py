"""``grpo.saturated_lr``: once every trained image gets the top reward (the trained rewards' spread
below 5 % of the first epoch's for 3 epochs in a row, at a mean above the first epoch's), the
learning rate is lowered, once — what is left to learn from is the reward's noise, which a constant
learning rate under Adam follows at full step size until the policy falls off the top."""
from __future__ import annotations

import pytest

from progrpo_core import config as C
from progrpo_core.rewards import build_reward
from progrpo_core.rewards.base import Reward
from progrpo_core.training import Trainer
from progrpo_core.training.guards import saturated
from progrpo_core.training.state import check_resume_config


class Phased(Reward):
    """The digit reward while ``phase`` is "learn"; then every image scores ``level`` give or take
    1e-4 of the digit reward (no spread left): "top" at 0.99, "bottom" at 0."""

    def __init__(self):
        self.inner = build_reward("digit")
        self.name = self.inner.name
        self.phase = "learn"

    def score(self, images, prompts):
        return self.evaluate(images, prompts)[self.name]

    def evaluate(self, images, prompts):
        out = self.inner.evaluate(images, prompts)
        if self.phase != "learn":
            level = 0.99 if self.phase == "top" else 0.0
            out = {k: level + 1e-4 * v for k, v in out.items()}
        return out


def make(tmp_path, reward=None, **grpo) -> Trainer:
    table = {"run": {"out": str(tmp_path), "epochs": 8, "eval_seeds": 1, "eval_every": 0, "save_every": 0,
                     "checkpoint_every": 0},
             "grpo": {"method": "grpo", "prompts_per_epoch": 2, "lr": 1e-2, **grpo},
             "schedule": {"group_size": 4}, "sampler": {"steps": 4}}
    return Trainer.build(C.build_config(table), reward=reward, log=lambda s: None)


def lr(t: Trainer) -> float:
    (value,) = {g["lr"] for g in t.learner.optimizer.param_groups}
    return value


@pytest.mark.parametrize("then, lowered", [("top", True), ("bottom", False)])
def test_the_rate_drops_once_after_three_saturated_epochs(tmp_path, then, lowered):
    reward = Phased()
    t = make(tmp_path, reward, saturated_lr=0.1)
    seen = []
    for record in t.epochs():
        seen.append(lr(t))
        reward.phase = then  # the first epoch learns; every later one has no spread left
    # epochs 2, 3, 4 saturated: lowered after the fourth, once (a collapse onto a poor output is the
    # collapse guard's, not this)
    assert seen == ([1e-2] * 3 + [pytest.approx(1e-3)] * 5 if lowered else [1e-2] * 8)
    assert t.state.rows[0]["reward_std"] > 0.01 and t.state.rows[-1]["reward_std"] < 1e-4


def test_off_unless_asked_and_on_for_the_preview_preset(tmp_path):
    reward = Phased()
    t = make(tmp_path / "grpo", reward)
    assert t.spec.grpo.saturated_lr == 1 and "saturated_lr" not in t.spec.settled()["grpo"]
    for _ in t.epochs():
        reward.phase = "top"
    assert lr(t) == 1e-2
    preview = {"method": "pro-mixgrpo-8-preview", "lr": None}
    flow = Trainer.build(C.build_config({"grpo": preview}), log=lambda s: None)
    eps = Trainer.build(C.build_config({"grpo": preview, "model": {"name": "digits-eps"}}), log=lambda s: None)
    for t in (flow, eps):
        assert t.spec.grpo.saturated_lr == 0.1 and t.spec.settled()["grpo"]["saturated_lr"] == 0.1
    eight = Trainer.build(C.build_config({"grpo": {"method": "pro-mixgrpo-8"}}), log=lambda s: None)
    assert eight.spec.grpo.saturated_lr == 1


def test_a_resumed_run_keeps_the_lowered_rate_and_may_not_change_the_setting(tmp_path):
    reward = Phased()
    t = make(tmp_path / "a", reward, saturated_lr=0.1)
    loop = t.epochs()
    for _ in range(5):
        next(loop)
        reward.phase = "top"
    loop.close()
    snap = t.state_dict()
    again = make(tmp_path / "b", Phased(), saturated_lr=0.1)
    again.load_state_dict(snap)
    assert lr(again) == pytest.approx(1e-3) and again.epoch == 5
    with pytest.raises(Exception, match=r"grpo.saturated_lr: 0.1 in the checkpoint, 0.5 now"):
        check_resume_config(t.spec.settled(), make(tmp_path / "c", saturated_lr=0.5).spec.settled())
    # a run from before the setting existed (no key) resumes with it off
    old = {k: dict(v) for k, v in make(tmp_path / "d").spec.settled().items()}
    check_resume_config(old, make(tmp_path / "e").spec.settled())


@pytest.mark.parametrize("value", [0, -0.1, 1.5, float("nan")])
def test_a_bad_factor_names_the_range(value):
    with pytest.raises(ValueError, match=r"grpo.saturated_lr=.* must be in \(0, 1\]"):
        C.build_config({"grpo": {"saturated_lr": value}})


def test_saturation_needs_the_spread_gone_at_a_mean_above_the_start():
    start = {"epoch": 1, "reward_mean": 0.5, "reward_std": 0.4}
    top = [{"epoch": e, "reward_mean": 0.999, "reward_std": 0.001} for e in (2, 3, 4)]
    assert saturated([start] + top[:2]) is None
    assert "for 3 epochs in a row (to epoch 4)" in saturated([start] + top)
    assert saturated([start, *top[:2], {"epoch": 4, "reward_mean": 0.99, "reward_std": 0.03}]) is None  # 7.5 %
    assert saturated([start] + [{**r, "reward_mean": 0.4} for r in top]) is None  # collapsed, not saturated
    assert saturated([{"epoch": 1, "reward_mean": 0.5, "reward_std": 0.0}] + top) is None  # no scale to judge by
