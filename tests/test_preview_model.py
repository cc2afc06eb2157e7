"""schedule.preview_model = "reference": the scored previews are the frozen model's (the LoRA off),
so the policy being trained cannot move the judge of its own latents."""
from __future__ import annotations

import pytest
import torch

from progrpo_core import config as C
from progrpo_core.denoiser import proxy_decoder
from progrpo_core.methods import METHODS, PruneSchedule
from progrpo_core.training import Trainer

from helpers import cut_trainer

T = 10


def make(tmp_path, **sections) -> Trainer:
    t = cut_trainer(tmp_path, **sections)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # a trained LoRA: the policy's predictions differ from the frozen model's
        for p in t.adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return t


def recorder():
    x0_at: dict[tuple[int, int, int], torch.Tensor] = {}  # (step, prompt, row id) → the row's x0 at that call

    def record(ev):
        for pos, (b, r) in enumerate(zip(ev["row_prompt"].tolist(), ev["row_id"].tolist())):
            x0_at[ev["step"], b, r] = ev["x0"][pos]
    return x0_at, record


def rows_x0(x0_at, step, rollout) -> torch.Tensor:
    return torch.stack([x0_at[step, p, r] for p, r in zip(rollout.prompt_index.tolist(), rollout.row_id.tolist())])


def reference_x0(t: Trainer, rollout, step: int) -> torch.Tensor:
    """What the frozen model predicts from the survivors' latents at ``step``."""
    cond = t.model.encode_prompts([rollout.prompts[p] for p in rollout.prompt_index.tolist()])
    sigma = rollout.sigmas[step].expand(len(rollout.row_id))
    with torch.no_grad(), t.adapter.disabled():
        return t.model.denoise(rollout.latents[:, step], sigma, cond, 1.0).float()


def test_the_reference_judges_the_cut_and_the_survivors_step_on_with_the_policy(tmp_path):
    # a random cut: the same survivors whoever judges, so their trajectories can be compared
    policy = make(tmp_path / "p", schedule={"selector": "random"})
    judged = make(tmp_path / "r", schedule={"selector": "random", "preview_model": "reference"})
    (xp, rec_p), (xr, rec_r) = recorder(), recorder()
    a, b = policy.sample_epoch(0, callback=rec_p), judged.sample_epoch(0, callback=rec_r)
    cut = judged.schedule.for_epoch(T, 0, judged.cfg.run.seed)[0].checkpoints[-1] - 1  # its model call
    ra, rb = a.rollout, b.rollout
    assert torch.equal(ra.row_id, rb.row_id)
    # after the cut the survivors step with the policy's own prediction: the same trajectories to the end
    torch.testing.assert_close(rb.latents, ra.latents)
    torch.testing.assert_close(rb.log_probs, ra.log_probs)
    torch.testing.assert_close(b.scores[judged.reward.total_key], a.scores[policy.reward.total_key])
    # the previews at the cut are the frozen model's, not the policy's
    ref = reference_x0(judged, rb, cut)
    torch.testing.assert_close(rows_x0(xr, cut, rb), ref)
    assert (rows_x0(xp, cut, ra) - ref).abs().max() > 1e-2
    # and what the cut ranked is their score
    kept = rb.checkpoints[-1]["kept"]  # (B, K) row ids
    got = torch.stack([rb.checkpoints[-1]["rewards"][p][rb.checkpoints[-1]["row_id"][p] == r]
                       for p, r in zip(rb.prompt_index.tolist(), rb.row_id.tolist())]).flatten()
    rows = [rb.prompts[p] for p in rb.prompt_index.tolist()]
    want = judged.reward.evaluate(proxy_decoder(judged.model)(ref), rows)[judged.reward.total_key]
    torch.testing.assert_close(got, want)
    assert kept.shape == (2, 4)
    # one more call for each survivor at the cut: the reference's for the previews, the policy's to step on
    assert rb.compute.nfe_sample - ra.compute.nfe_sample == 2 * 4
    sched = judged.schedule.for_epoch(T, 0, judged.cfg.run.seed)[0]
    plain = policy.schedule.for_epoch(T, 0, policy.cfg.run.seed)[0]
    assert sched.sampling_nfe(T) - plain.sampling_nfe(T) == 4


def test_on_previews_the_reference_makes_the_rewards_at_no_extra_cost(tmp_path):
    """``pro-mixgrpo-8-preview``'s case: the survivors stop at the cut, whose previews are the
    reference's; the rewards trained on are theirs, and no call is added."""
    policy = make(tmp_path / "p", schedule={"preview_reward": 0})
    judged = make(tmp_path / "r", schedule={"preview_reward": 0, "preview_model": "reference"})
    xr, rec = recorder()
    a, b = policy.sample_epoch(0), judged.sample_epoch(0, callback=rec)
    rb = b.rollout
    step = rb.preview["step"] - 1
    ref = reference_x0(judged, rb, step)
    torch.testing.assert_close(rows_x0(xr, step, rb), ref)
    rows = [rb.prompts[p] for p in rb.prompt_index.tolist()]
    want = judged.reward.evaluate(proxy_decoder(judged.model)(ref), rows)
    for key, v in want.items():
        torch.testing.assert_close(b.scores[key], v)
    assert rb.compute.nfe_sample == a.rollout.compute.nfe_sample
    assert not torch.equal(b.scores[judged.reward.total_key], a.scores[policy.reward.total_key])


def test_the_reference_call_is_the_only_one_made_with_the_lora_off(tmp_path):
    t = make(tmp_path / "r", schedule={"preview_reward": 0, "preview_model": "reference"})
    entered = []
    disabled = t.adapter.disabled

    def counting():
        entered.append(1)
        return disabled()
    t.adapter.disabled = counting
    list(t.epochs())
    assert len(entered) == 3  # once an epoch, at the cut


def test_without_a_reference_the_model_is_its_own(flow_model):
    """The sampler node samples the MODEL it is given, with nothing being trained: no reference."""
    from progrpo_core.group import sample_group

    model = flow_model
    sched = PruneSchedule(group_size=6, checkpoints=(4,), keep=(3,), preview_model="reference")
    plain = PruneSchedule(group_size=6, checkpoints=(4,), keep=(3,))

    def score(images, prompts):
        return images.flatten(1).mean(1)
    a = sample_group(model, ["a handwritten 3"], [1], T, plain, "flow_sde", 0.7, score_fn=score)
    b = sample_group(model, ["a handwritten 3"], [1], T, sched, "flow_sde", 0.7, score_fn=score)
    torch.testing.assert_close(b.latents, a.latents)
    assert b.compute.nfe_sample == a.compute.nfe_sample


def test_the_plan_counts_the_survivors_second_call(tmp_path):
    from progrpo_core import planner

    t = make(tmp_path / "r", schedule={"preview_model": "reference", "slide_every": 1})
    nfe = [r.compute["nfe"] for r in t.epochs()]  # cumulative, the window moving every epoch
    per_epoch = [y - x for x, y in zip([0] + nfe, nfe)]
    target = planner.Target("gpu", 10 * 2**30, tflops=1e-6)  # timed from FLOPs: exact
    plan = t.make_plan(target)
    rate = target.tflops * 1e12 * planner.MFU
    assert plan.seconds["sampling"] * rate / plan.costs.flops["sample"] == pytest.approx(sum(per_epoch) / 3)


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="preview_model 'frozen' unknown; expected one of policy, reference"):
        PruneSchedule(8, (4,), (4,), preview_model="frozen").validate(T)
    with pytest.raises(ValueError, match="scores none .* give checkpoints"):
        PruneSchedule(8, preview_model="reference").validate(T)
    with pytest.raises(ValueError, match="preview_model"):
        C.build_config({"grpo": {"method": "grpo"}, "schedule": {"preview_model": "reference"}}).prune_schedule("flow")
    cfg = C.build_config({"grpo": {"method": "pro-mixgrpo"}, "schedule": {"preview_model": "reference"}})
    assert cfg.prune_schedule("flow").preview_model == "reference"


def test_the_preview_preset_has_the_reference_judge_on_both_families():
    for family in ("flow", "eps"):
        s = METHODS["pro-mixgrpo-8-preview"].schedule(T, family=family)
        assert (s.preview_model, s.preview_reward) == ("reference", 0)
        assert METHODS["pro-mixgrpo-8-preview"].for_family(family).default("grpo.saturated_lr") == 0.1
    assert METHODS["pro-mixgrpo-8"].schedule(T).preview_model == "policy"


def test_runs_record_the_judge_only_when_it_is_the_reference(tmp_path):
    """What ``--resume`` compares: runs from before the setting (the policy's previews) resume."""
    plain = make(tmp_path / "p")
    judged = make(tmp_path / "r", schedule={"preview_model": "reference"})
    assert "preview_model" not in plain.spec.settled()["schedule"]
    assert judged.spec.settled()["schedule"]["preview_model"] == "reference"
