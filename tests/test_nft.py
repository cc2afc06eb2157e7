"""DiffusionNFT (``--method nft``) and expand-and-prune on top of it (``pro-nft``), checked against
the reference's formulas re-implemented here from NVlabs/DiffusionNFT (commit 24af555,
scripts/train_nft_sd3.py)."""
from __future__ import annotations

import pytest
import torch

from helpers import config_with, metrics_rows
from progrpo_core.training import Trainer
from progrpo_core.training.averages import OLD_DECAY_MAX, OLD_DECAY_RATE, OldPolicy
from progrpo_core.training.nft import nft_loss, noised, optimality


def reference_loss(x0, xt, t, v_theta, v_old, adv, beta, adv_clip_max=5.0):
    """The reference's policy loss, in its own (velocity) terms, per image."""
    A = adv.clamp(-adv_clip_max, adv_clip_max)
    r = ((A / adv_clip_max) / 2 + 0.5).clamp(0, 1)
    tt = t.view(-1, 1, 1, 1)
    v_pos = beta * v_theta + (1 - beta) * v_old
    v_neg = (1 + beta) * v_old - beta * v_theta
    x0_pos, x0_neg = xt - tt * v_pos, xt - tt * v_neg
    w_pos = (x0_pos - x0).abs().flatten(1).mean(1).clamp(min=1e-5)
    w_neg = (x0_neg - x0).abs().flatten(1).mean(1).clamp(min=1e-5)
    pos = ((x0_pos - x0) ** 2).flatten(1).mean(1) / w_pos
    neg = ((x0_neg - x0) ** 2).flatten(1).mean(1) / w_neg
    return (r * pos / beta + (1 - r) * neg / beta) * adv_clip_max


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_the_loss_is_the_references_in_x0_terms(beta):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 1, 8, 8, generator=g)
    t = torch.rand(6, generator=g) * 0.9 + 0.05
    xt = noised(x0, t, noise, "flow")
    torch.testing.assert_close(xt, (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise)
    v_theta, v_old = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 1, 8, 8, generator=g)
    adv = torch.randn(6, generator=g) * 4
    ours = nft_loss(x0, xt - t.view(-1, 1, 1, 1) * v_theta, xt - t.view(-1, 1, 1, 1) * v_old, optimality(adv, 5.0),
                    beta, 5.0)
    torch.testing.assert_close(ours, reference_loss(x0, xt, t, v_theta, v_old, adv, beta), rtol=1e-5, atol=1e-6)
    assert optimality(torch.tensor([-9.0, 0.0, 2.5, 9.0]), 5.0).tolist() == [0.0, 0.5, 0.75, 1.0]


def test_the_old_policy_follows_as_the_reference_decays_it():
    p = torch.nn.Parameter(torch.zeros(3))
    old = OldPolicy([p])
    with torch.no_grad():
        p.fill_(1.0)
    assert old.follow(0) == 0.0 and torch.equal(old.values[0], torch.ones(3))  # step 0: old becomes the current
    with torch.no_grad():
        p.fill_(3.0)
    d = old.follow(200)
    assert d == min(OLD_DECAY_RATE * 200, OLD_DECAY_MAX) == 0.2
    torch.testing.assert_close(old.values[0], torch.full((3,), 0.2 * 1.0 + 0.8 * 3.0))
    assert old.follow(10_000) == 0.5
    with old.applied():
        assert torch.equal(p.detach(), old.values[0])
    assert torch.equal(p.detach(), torch.full((3,), 3.0))


SETTINGS = {"grpo": {"method": "nft", "prompts_per_epoch": 2, "train_batch_size": 8},
            "schedule": {"group_size": 8},
            "run": {"epochs": 3, "eval_seeds": 2, "eval_prompts": 10, "eval_every": 0, "save_every": 0,
                    "checkpoint_every": 1}}


def test_nft_samples_with_the_old_policy_by_ode_and_learns(tmp_path):
    t = Trainer.build(config_with(SETTINGS, tmp_path / "run", epochs=20), log=lambda s: None)
    assert t.spec.objective == "nft" and t.sampler.sampler == "ode" and t.spec.grpo.adv_norm == "batch"
    batch = t.sample_epoch(0)
    assert bool((batch.rollout.stds == 0).all())  # deterministic rollouts: no likelihoods
    before = t.evaluate()["reward"]
    for _ in t.epochs():
        pass
    assert t.optimizer_steps >= 20 and t.evaluate()["reward"] > before + 0.15


def test_nft_resumes_exactly(tmp_path):
    whole = Trainer.build(config_with(SETTINGS, tmp_path / "whole"), log=lambda s: None)
    whole.run(progress=False)
    part = Trainer.build(config_with(SETTINGS, tmp_path / "part", epochs=2), log=lambda s: None)
    part.run(progress=False)
    part.close()
    rest = Trainer.build(config_with(SETTINGS, tmp_path / "part"), log=lambda s: None)
    rest.run(progress=False, resume=True)
    for (n, a), (_, b) in zip(whole.adapter.named_parameters(), rest.adapter.named_parameters()):
        assert torch.equal(a, b), n
    assert metrics_rows(tmp_path / "whole")[-1]["loss"] == metrics_rows(tmp_path / "part")[-1]["loss"]


def test_pro_nft_prunes_the_ode_rollouts_on_the_proxy(tmp_path):
    t = Trainer.build(config_with({**SETTINGS, "grpo": {**SETTINGS["grpo"], "method": "pro-nft"},
                                   "schedule": {"group_size": 8, "keep": [4]}}, tmp_path / "run", epochs=1),
                      log=lambda s: None)
    record = next(t.epochs())
    assert [p["step"] for p in record.sample.proxy] == [3] and record.update.updates >= 1
    assert t.compute.proxy_decodes == 2 * 8 and t.compute.final_decodes == 2 * 4
