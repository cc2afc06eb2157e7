import pytest
import torch

from progrpo_core import ovf
from progrpo_core.group import pool_latent, pooled_size, sample_group
from progrpo_core.methods import PruneSchedule

PROMPTS = ["a handwritten 3", "a handwritten 8"]


class Counting:
    """Wraps a denoiser and records the batch size of every model call."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def denoise(self, x, sigma, cond, cfg=1.0):
        self.calls.append(x.shape[0])
        return self.inner.denoise(x, sigma, cond, cfg)


def _run(model, schedule, reward, seeds=(11, 12), steps=10, sampler="flow_sde", noise=0.7):
    return sample_group(model, PROMPTS, list(seeds), steps, schedule, sampler, noise, 1.0, score_fn=reward)


def test_pruned_trajectories_make_no_further_model_calls(flow_model, digit_reward):
    m = Counting(flow_model)
    sched = PruneSchedule(group_size=8, checkpoints=(3, 6), keep=(5, 3))
    ro = _run(m, sched, digit_reward)
    B = len(PROMPTS)
    assert m.calls == [B * 8] * 3 + [B * 5] * 3 + [B * 3] * 4  # pruned after 3 and after 6 model calls
    assert ro.compute.nfe_sample == sum(m.calls) == B * (8 * 3 + 5 * (6 - 3) + 3 * (10 - 6))
    assert ro.compute.proxy_decodes == B * (8 + 5) and ro.compute.proxy_rewards == B * (8 + 5)
    assert ro.latents.shape == (B * 3, 11, 1, 8, 8)
    assert ro.log_probs.shape == (B * 3, 10)


def test_previews_go_through_the_proxy_decoder_and_decide_the_pruning(flow_model, digit_reward):
    """A model with ``decode_proxy`` (ComfyUI: a TAESD on the trainer's proxy_vae) decodes every
    preview with it and none with ``decode``; what it decodes is what OVF ranks."""
    class Previewing(Counting):
        def __init__(self, inner, flip):
            super().__init__(inner)
            self.flip, self.previews, self.decodes = flip, 0, 0

        def decode(self, x0):
            self.decodes += len(x0)
            return self.inner.decode(x0)

        def decode_proxy(self, x0):
            self.previews += len(x0)
            images = self.inner.decode(x0)
            return images.flip(-1) if self.flip else images  # another decoder: other images, other scores

    sched = PruneSchedule(group_size=8, checkpoints=(4,), keep=(3,))
    plain, same, flipped = _run(flow_model, sched, digit_reward), Previewing(flow_model, False), Previewing(flow_model, True)
    a, b = _run(same, sched, digit_reward), _run(flipped, sched, digit_reward)
    assert same.previews == flipped.previews == len(PROMPTS) * 8 and same.decodes == flipped.decodes == 0
    assert torch.equal(a.checkpoints[0]["kept"], plain.checkpoints[0]["kept"])  # the same decoder: the same choice
    assert not torch.equal(b.checkpoints[0]["rewards"], a.checkpoints[0]["rewards"])  # scored on its images


def test_survivors_follow_the_same_trajectory_as_without_pruning(flow_model, digit_reward):
    pruned = _run(flow_model, PruneSchedule(group_size=8, checkpoints=(4,), keep=(3,)), digit_reward)
    full = _run(flow_model, PruneSchedule(group_size=8), digit_reward)
    for i in range(pruned.latents.shape[0]):
        j = int(pruned.prompt_index[i]) * 8 + int(pruned.row_id[i])
        # the same noise stream and the same steps; a different batch size may round matmuls differently
        torch.testing.assert_close(pruned.latents[i], full.latents[j], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pruned.log_probs[i], full.log_probs[j], rtol=1e-5, atol=1e-5)


def test_kept_rows_are_the_ovf_subset_of_proxy_rewards(flow_model, digit_reward):
    ro = _run(flow_model, PruneSchedule(group_size=8, checkpoints=(5,), keep=(4,)), digit_reward)
    cp = ro.checkpoints[0]
    for b in range(len(PROMPTS)):
        expect = ovf.ovf_select(cp["rewards"][b], 4)
        assert cp["kept"][b].tolist() == cp["row_id"][b][expect].tolist()
        assert ro.row_id.view(2, 4)[b].tolist() == cp["kept"][b].tolist()


def test_proxy_is_the_one_step_projection_of_that_step(flow_model):
    seen = {}

    def score(images, prompts):
        seen["images"] = images.clone()
        return images.mean(dim=(1, 2, 3))

    ro = sample_group(flow_model, PROMPTS[:1], [5], 6, PruneSchedule(group_size=4, checkpoints=(3,), keep=(2,)),
                      "flow_sde", 0.7, 1.0, score_fn=score)
    full = sample_group(flow_model, PROMPTS[:1], [5], 6, PruneSchedule(group_size=4), "flow_sde", 0.7, 1.0)
    x, sigma = full.latents[:, 2], full.sigmas[2]  # checkpoint 3: the output of the 3rd model call
    x0 = flow_model.denoise(x, sigma.expand(4), flow_model.encode_prompts(PROMPTS[:1] * 4))
    torch.testing.assert_close(seen["images"], flow_model.decode(x0))
    assert ro.checkpoints[0]["step"] == 3 and ro.checkpoints[0]["sigma"] == float(full.sigmas[2])
    assert ro.compute.nfe_sample == 4 * 3 + 2 * 3  # no extra forward for the proxy


def test_same_seed_same_trajectories_and_pruning(eps_model, digit_reward):
    sched = PruneSchedule(group_size=6, checkpoints=(4, 7), keep=(4, 2))
    a = _run(eps_model, sched, digit_reward, sampler="ddim", noise=1.0)
    b = _run(eps_model, sched, digit_reward, sampler="ddim", noise=1.0)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)
    assert [c["kept"].tolist() for c in a.checkpoints] == [c["kept"].tolist() for c in b.checkpoints]
    c = _run(eps_model, sched, digit_reward, seeds=(13, 14), sampler="ddim", noise=1.0)
    assert not torch.equal(a.latents, c.latents)


def test_ddim_last_step_is_deterministic(eps_model):
    ro = sample_group(eps_model, PROMPTS, [1, 2], 5, PruneSchedule(group_size=3), "ddim", 1.0)
    assert (ro.stds[:, :-1] > 0).all() and (ro.stds[:, -1] == 0).all()


def test_shared_noise_makes_the_calls_before_the_first_sde_step_once_per_prompt(flow_model):
    """MixGRPO's shared initial noise: a prompt's rows are one latent until the first SDE step, so
    those model calls are made for one row per prompt and the x0 handed to all of them — the x0 each
    row gets on its own, to rounding; from the first SDE step on every row is called."""
    m, seen = Counting(flow_model), {}
    sched = PruneSchedule(group_size=6, shared_noise=True)
    ro = sample_group(m, PROMPTS, [11, 12], 10, sched, "flow_sde", 0.7, 1.0, sde_steps=(3, 4),
                      callback=lambda info: seen.setdefault(info["step"], info["x0"].clone()))
    B = len(PROMPTS)
    assert m.calls == [B] * 4 + [B * 6] * 6  # steps 0–3 share one row per prompt; step 3 adds noise
    assert ro.compute.nfe_sample == sum(m.calls)
    lat = ro.latents.view(B, 6, *ro.latents.shape[1:])
    assert torch.equal(lat[:, :, :4], lat[:, :1, :4].expand_as(lat[:, :, :4]))  # one latent per prompt
    assert not torch.equal(lat[:, 0, 4], lat[:, 1, 4])  # the window's noise made them differ
    for i in (0, 2, 3):
        alone = flow_model.denoise(ro.latents[:, i], ro.sigmas[i].expand(B * 6), ro.cond)
        torch.testing.assert_close(seen[i], alone, rtol=1e-5, atol=1e-5)


def test_pooled_previews_are_decoded_from_the_area_mean_of_the_latent(flow_model, digit_reward):
    """``proxy_scale`` < 1: every preview is decoded from the x0 latent area-pooled to that fraction
    of its size (what the decoder receives is checked); the trajectories do not change and the
    pruning decides on the pooled previews' rewards."""
    class Sizes(Counting):
        def __init__(self, inner):
            super().__init__(inner)
            self.preview_sizes = []

        def decode_proxy(self, x0):
            self.preview_sizes.append(tuple(x0.shape[-2:]))
            return self.inner.decode(x0)

    sched = PruneSchedule(group_size=8, checkpoints=(4,), keep=(3,))
    full, half = Sizes(flow_model), Sizes(flow_model)
    a = _run(full, sched, digit_reward)
    b = _run(half, PruneSchedule(group_size=8, checkpoints=(4,), keep=(3,), proxy_scale=0.5), digit_reward)
    assert set(full.preview_sizes) == {(8, 8)} and set(half.preview_sizes) == {(4, 4)}
    assert not torch.equal(a.checkpoints[0]["rewards"], b.checkpoints[0]["rewards"])
    # sampling never sees the scale: a row both runs keep has the same latents up to the checkpoint
    common = [(i, j) for i in range(len(a.row_id)) for j in range(len(b.row_id))
              if a.prompt_index[i] == b.prompt_index[j] and a.row_id[i] == b.row_id[j]]
    assert common
    assert all(torch.equal(a.latents[i, :5], b.latents[j, :5]) for i, j in common)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(pool_latent(x, 0.5), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert pool_latent(x, 1.0) is x
    video = torch.randn(2, 16, 3, 64, 64)  # (N, C, T, H, W): only height and width shrink
    assert pool_latent(video, 0.4375).shape == (2, 16, 3, 28, 28)
    assert [pooled_size(n, 0.5) for n in (1, 2, 3, 8, 9, 64)] == [1, 2, 2, 4, 4, 32]
    assert pooled_size(128, 0.2) == 26  # even sides stay even (VAEs that decode 2×2 patches)


@pytest.mark.parametrize("kwargs,steps,match", [
    (dict(group_size=8, checkpoints=(5,), keep=(10,)), 10, "K=10 exceeds the 8 trajectories"),
    (dict(group_size=8, checkpoints=(3, 5), keep=(4, 4)), 10, "does not shrink at K=4"),
    (dict(group_size=8, checkpoints=(10,), keep=(4,)), 10, r"checkpoint step 10 is outside 1..T-1 = 1..9"),
    (dict(group_size=8, checkpoints=(0,), keep=(4,)), 10, "checkpoint step 0 is outside"),
    (dict(group_size=8), 1, "T=1 is too few"),
    (dict(group_size=1), 10, "G_max=1 is too small"),
    (dict(group_size=8, checkpoints=(5,), keep=(1,)), 10, "ends with 1 survivor"),
    (dict(group_size=8, checkpoints=(5, 3), keep=(4, 2)), 10, "strictly increasing"),
    (dict(group_size=8, checkpoints=(5,), keep=()), 10, "one survivor count per checkpoint"),
    (dict(group_size=8, final_keep=8), 10, "final_keep=8 must be in 2..7"),
    (dict(group_size=8, checkpoints=(5,), keep=(4,), proxy_scale=0.0), 10, r"proxy_scale=0.0 must be in \(0, 1\]"),
    (dict(group_size=8, checkpoints=(5,), keep=(4,), proxy_scale=1.5), 10, r"proxy_scale=1.5 must be in \(0, 1\]"),
])
def test_schedule_validation_messages(kwargs, steps, match):
    with pytest.raises(ValueError, match=match):
        PruneSchedule(**kwargs).validate(steps)


def test_pruning_needs_a_reward(flow_model):
    with pytest.raises(ValueError, match="needs a reward"):
        sample_group(flow_model, PROMPTS, [1, 2], 10, PruneSchedule(group_size=4, checkpoints=(5,), keep=(2,)),
                     "flow_sde", 0.7)


def test_random_pruning_of_a_prompt_does_not_depend_on_its_batch(flow_model, digit_reward):
    sched = PruneSchedule(group_size=8, checkpoints=(4,), keep=(3,), selector="random")
    both = sample_group(flow_model, PROMPTS, [21, 22], 8, sched, "flow_sde", 0.7, score_fn=digit_reward)
    alone = sample_group(flow_model, PROMPTS[1:], [22], 8, sched, "flow_sde", 0.7, score_fn=digit_reward)
    assert both.checkpoints[0]["kept"][1].tolist() == alone.checkpoints[0]["kept"][0].tolist()
    torch.testing.assert_close(both.latents[3:], alone.latents)  # same rows; batch size changes only rounding
