"""Training on a preview's reward: the survivors stop after the checkpoint instead of finishing."""
from __future__ import annotations

import json

import pytest
import torch

from progrpo_core.methods import PruneSchedule
from progrpo_core.training import Trainer

from helpers import cut_trainer

T = 10


def make(tmp_path, **sections) -> Trainer:
    return cut_trainer(tmp_path, **sections)


@pytest.mark.parametrize("after", [0, 2])
def test_survivors_stop_at_the_preview_and_are_trained_on_its_reward(tmp_path, after):
    from progrpo_core.denoiser import proxy_decoder

    full, short = make(tmp_path / "full"), make(tmp_path / "short", schedule={"preview_reward": after})
    x0_at: dict[tuple[int, int, int], torch.Tensor] = {}  # (step, prompt, row id) → the row's x0

    def record(ev):
        for pos, (b, r) in enumerate(zip(ev["row_prompt"].tolist(), ev["row_id"].tolist())):
            x0_at[ev["step"], b, r] = ev["x0"][pos]

    a, b = full.sample_epoch(0, callback=record), short.sample_epoch(0)
    checkpoint = short.schedule.for_epoch(T, 0, short.cfg.run.seed)[0].checkpoints[-1]
    calls = b.rollout.preview["step"]
    assert calls == checkpoint + after  # the model calls a survivor made; the preview is the last one's
    # the same survivors on the same trajectories up to the preview, then they stop
    assert torch.equal(a.rollout.row_id, b.rollout.row_id)
    assert b.rollout.latents.shape[1] == calls and b.rollout.stds.shape[1] == calls - 1
    torch.testing.assert_close(b.rollout.latents, a.rollout.latents[:, :calls])
    torch.testing.assert_close(b.rollout.log_probs, a.rollout.log_probs[:, :calls - 1])
    # their rewards are their previews' at that call, decoded by the preview decoder and scored
    x0 = torch.stack([x0_at[calls - 1, p, r] for p, r in zip(b.rollout.prompt_index.tolist(),
                                                              b.rollout.row_id.tolist())])
    rows = [b.rollout.prompts[p] for p in b.rollout.prompt_index.tolist()]
    want = short.reward.evaluate(proxy_decoder(short.model)(x0), rows)
    for key, v in want.items():
        torch.testing.assert_close(b.scores[key], v)
    assert not torch.equal(b.scores[short.reward.total_key], a.scores[full.reward.total_key])
    # what they skipped: 4 survivors × 2 prompts, T − calls model calls and the final decodes;
    # a later preview is decoded once more
    ca, cb = a.rollout.compute, b.rollout.compute
    assert ca.nfe_sample - cb.nfe_sample == 2 * 4 * (T - calls)
    assert (cb.final_decodes, cb.final_rewards) == (0, 0)
    assert cb.proxy_decodes == ca.proxy_decodes + (2 * 4 if after else 0)


def test_a_run_on_previews_trains_and_its_plan_counts_what_it_samples(tmp_path):
    from progrpo_core import planner

    t = make(tmp_path / "r", schedule={"preview_reward": 1, "slide_every": 1})
    before = {n: p.detach().clone() for n, p in t.adapter.named_parameters()}
    nfe = [r.compute["nfe"] for r in t.epochs()]  # cumulative, the window moving every epoch
    per_epoch = [y - x for x, y in zip([0] + nfe, nfe)]
    assert any(not torch.equal(p, before[n]) for n, p in t.adapter.named_parameters())
    target = planner.Target("gpu", 10 * 2**30, tflops=1e-6)  # timed from FLOPs: exact
    plan = t.make_plan(target)
    rate = target.tflops * 1e12 * planner.MFU
    assert plan.seconds["sampling"] * rate / plan.costs.flops["sample"] == pytest.approx(sum(per_epoch) / 3)
    assert plan.seconds["scoring"] == 0  # no final image is decoded
    # every preview: the checkpoint's 8 per prompt and the survivors' 4 one call later
    preview = plan.costs.flops[plan.costs.preview()[2]]
    assert plan.seconds["proxy"] * rate / preview == pytest.approx(2 * (8 + 4))


def test_the_metrics_say_what_was_trained_on(tmp_path):
    t = make(tmp_path / "m", schedule={"preview_reward": 0})
    t.run(progress=False)
    rows = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["optimizer_step"] > 0 for r in rows[1:])
    assert "trained on the checkpoint preview's reward" in t.schedule.describe()


@pytest.mark.parametrize("kw,match", [
    (dict(preview_reward=0), "has no checkpoint"),
    (dict(checkpoints=(5, 7), keep=(24, 12), preview_reward=9), r"must be in 0\.\.8"),
    (dict(checkpoints=(5,), keep=(24,), preview_reward=-1), r"must be in 0\.\.8"),
    (dict(checkpoints=(1,), keep=(24,), preview_reward=0), "before any sampling step to train"),
    (dict(checkpoints=(5,), keep=(24,), final_keep=12, preview_reward=0), "needs the final images"),
    (dict(checkpoints=(3,), keep=(12,), sde_window=2, window_mode="after-pruning", preview_reward=1),
     "this SDE window comes after it"),
])
def test_bad_preview_rewards_name_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        PruneSchedule(**{"group_size": 48, **kw}).validate(T)


def test_nft_refuses_to_stop_its_survivors(tmp_path):
    with pytest.raises(ValueError, match="NFT trains on the finished images"):
        make(tmp_path / "n", grpo={"method": "pro-nft"}, schedule={"preview_reward": 0})


def test_a_nan_preview_skips_the_update_and_is_counted_once(tmp_path):
    """A survivor's reward is its preview's score: a NaN there poisons the epoch once, not once as
    a preview and again as a reward."""
    from progrpo_core.rewards import build_reward
    from progrpo_core.rewards.base import Reward

    class NaNAtTheCut(Reward):
        def __init__(self):
            self.inner = build_reward("digit")
            self.name = self.inner.name

        def score(self, images, prompts):
            return self.inner.score(images, prompts)

        def evaluate(self, images, prompts):
            out = {k: v.clone() for k, v in self.inner.evaluate(images, prompts).items()}
            if images.shape[0] == 2 * 8:  # the cut's previews of both prompts' 8 rows
                out[self.name][:] = float("nan")
            return out

    t = Trainer.build(make(tmp_path / "n", schedule={"preview_reward": 0}).cfg, reward=NaNAtTheCut(),
                      log=lambda s: None)
    batch = t.sample_epoch(0)
    assert batch.nonfinite == 16
    with pytest.warns(RuntimeWarning, match="16 reward.s. are NaN or infinite; update skipped"):
        assert t.train_on(batch, 0).updates == 0
