"""Every method is valid at every step count from few-step models' T = 4 to T = 50: checkpoints and
SDE windows are fractions of T (methods.py), so the funnel, the window and the pruning step after
it fit whatever T a model is sampled with — on both families, over many epochs and seeds — and keep
each peer's own rule at any T: MixGRPO's progressive window from step 0 that never reaches the last
two steps, with one initial noise per prompt; Flow-GRPO-Fast's window drawn per prompt inside the
first half; DiffusionNFT's deterministic rollouts. One epoch of every method also trains at T = 4."""
from __future__ import annotations

import pytest

from helpers import config_with
from progrpo_core.methods import METHODS, checkpoint_steps, window_steps

STEPS = range(4, 51)


def epochs_to_check(sched, T: int) -> list[int]:
    """A dozen epochs, and for a window that moves every ``slide_every`` epochs each position's first
    and last epoch over a whole cycle (MixGRPO's waits 25 epochs a step)."""
    epochs = set(range(12))
    if sched.window_mode in ("progressive", "sliding"):
        epochs |= {k * sched.slide_every + d for k in range(T) for d in (0, sched.slide_every - 1)}
    return sorted(epochs)


@pytest.mark.parametrize("family", ["flow", "eps"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_fits_every_step_count_from_4_to_50(method, family):
    preset = METHODS[method].for_family(family)
    for T in STEPS:
        sched = METHODS[method].schedule(T, family=family)
        sched.validate(T)  # checkpoints in 1..T-1, increasing; the funnel shrinks; the window fits
        assert sched.sampling_nfe(T) > 0
        assert sched.sde_window == window_steps(T, preset.sde_window) < T
        if preset.sde_window:
            assert sched.sde_window == max(1, round(preset.sde_window * T))
        for epoch in epochs_to_check(sched, T):
            for seed in (0, 7):
                this, sde = sched.for_epoch(T, epoch, seed)
                this.validate(T)
                if sde is None:
                    assert not sched.sde_window  # SDE on every step, or NFT's ODE rollouts
                    continue
                assert sde == tuple(range(sde[0], sde[0] + len(sde))) and 0 <= sde[0] and sde[-1] <= T - 1
                if sched.window_mode == "progressive":  # MixGRPO: from step 0, one step every slide_every
                    assert sde[0] == (epoch // sched.slide_every) % (T - 2) and sde[-1] <= T - 3
                    assert 1 <= len(sde) <= sched.sde_window
                else:
                    assert len(sde) == sched.sde_window or sde[-1] == T - 1
                if sched.window_mode == "random":  # Flow-GRPO-Fast: inside the span, the first half
                    lo, hi = sched.window_span
                    assert lo <= sde[0] and sde[-1] < max(hi, lo + sched.sde_window), (T, sde, sched.window_span)
                if this.prune_after_window:
                    (after,) = this.checkpoints
                    assert after - 1 >= sde[-1] or after == T - 1, (T, sde, after)  # prunes after the window


@pytest.mark.parametrize("method", [m for m, p in METHODS.items() if p.window_draw == "prompt"])
def test_a_window_drawn_per_prompt_lies_in_the_first_half_at_every_step_count(method):
    for T in STEPS:
        sched = METHODS[method].schedule(T)
        assert sched.window_span == (0, round(0.5 * T)) and sched.sde_window <= sched.window_span[1]
        for epoch in range(6):
            this, windows = sched.for_epoch(T, epoch, seed=3, prompt_seeds=list(range(8)))
            assert this == sched and len(windows) == 8
            for w in windows:
                assert len(w) == sched.sde_window and w == tuple(range(w[0], w[0] + len(w)))
                assert 0 <= w[0] and w[-1] < sched.window_span[1]


def test_peers_keep_their_rules_at_every_step_count():
    for T in STEPS:
        for name in ("mixgrpo", "pro-mixgrpo"):
            s = METHODS[name].schedule(T)
            assert s.shared_noise and s.window_mode == "progressive" and s.slide_every == 25
        assert METHODS["mixgrpo"].schedule(T).group_size == 12
        assert METHODS["flow-grpo-fast-cps"].schedule(T).sde_window == max(1, round(0.3 * T))
        for name in ("nft", "pro-nft"):
            assert METHODS[name].objective == "nft" and not METHODS[name].schedule(T).sde_window
        pro_nft = METHODS["pro-nft"].schedule(T)
        assert pro_nft.checkpoints == (max(1, round(0.3 * T)),) and pro_nft.keep == (24,)
        for name in ("mixgrpo-sliding", "pro-mixgrpo-sliding"):
            assert METHODS[name].schedule(T).window_mode == "sliding" and not METHODS[name].schedule(T).shared_noise


def test_the_presets_at_t_10_are_unchanged_and_scale_with_t():
    assert METHODS["pro-grpo"].schedule(10).checkpoints == (5, 7)
    assert METHODS["pro-grpo"].schedule(10, family="eps").checkpoints == (6, 8)
    for name in ("flow-grpo-fast", "mixgrpo", "mixgrpo-sliding", "pro-grpo-fast", "pro-mixgrpo",
                 "pro-mixgrpo-sliding", "pro-grpo-window"):
        assert METHODS[name].schedule(10).sde_window == 2, name
    assert METHODS["flow-grpo-fast-cps"].schedule(10).sde_window == 3
    assert METHODS["mixgrpo"].schedule(4).sde_window == 1 and METHODS["mixgrpo"].schedule(50).sde_window == 10
    assert METHODS["pro-grpo"].schedule(4).checkpoints == (2, 3)
    assert METHODS["pro-grpo"].schedule(50).checkpoints == (25, 35)
    assert METHODS["pro-nft"].schedule(10).checkpoints == (3,)


def test_checkpoints_stay_increasing_inside_the_steps():
    assert checkpoint_steps(3, (0.5, 0.7)) == (2, 3)  # 3 > T-1: validate() says T is too short, by name
    assert checkpoint_steps(4, (0.5, 0.55)) == (2, 3)
    assert checkpoint_steps(4, (0.9,)) == (3,)
    assert window_steps(4, 0.2) == 1 and window_steps(10, 0) == 0
    with pytest.raises(ValueError, match="checkpoint step 3 is outside 1..T-1 = 1..2"):
        METHODS["pro-grpo"].schedule(3).validate(3)


@pytest.mark.parametrize("model", ["digits-flow", "digits-eps"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_an_epoch_at_four_steps(tmp_path, method, model):
    """A few-step model's T = 4 end to end on the built-in models: sampling with the method's funnel
    and window, pruning, the update (its objective), with one prompt."""
    from progrpo_core.training import Trainer

    cfg = config_with({"model": {"name": model}, "grpo": {"method": method, "prompts_per_epoch": 1},
                       "sampler": {"steps": 4}, "run": {"eval_every": 0, "save_every": 0}}, tmp_path / "run", epochs=1)
    if model == "digits-eps" and METHODS[method].default("sampler.sampler") == "cps":  # published for flow models
        with pytest.raises(ValueError, match="sampler 'cps' does not fit a 'eps' model"):
            Trainer.build(cfg, log=lambda s: None)
        return
    t = Trainer.build(cfg, log=lambda s: None)
    record = next(t.epochs())
    assert record.update.updates >= 1 and t.optimizer_steps >= 1
    sched = t.schedule
    assert sched.sde_window == window_steps(4, METHODS[method].for_family(t.model.family).sde_window)
    assert t.compute.final_decodes == (0 if sched.preview_reward is not None else sched.survivors)  # previews: none
