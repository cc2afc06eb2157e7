"""Every method is valid at every step count from few-step models' T = 4 to T = 50: checkpoints and
SDE windows are fractions of T (methods.py), so the funnel, the window and the pruning step after
it fit whatever T a model is sampled with — on both families, over many epochs and seeds."""
from __future__ import annotations

import pytest

from progrpo_core.methods import METHODS, checkpoint_steps, window_steps


@pytest.mark.parametrize("family", ["flow", "eps"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_fits_every_step_count_from_4_to_50(method, family):
    for T in range(4, 51):
        sched = METHODS[method].schedule(T, family=family)
        sched.validate(T)  # checkpoints in 1..T-1, increasing; the funnel shrinks; the window fits
        assert sched.sampling_nfe(T) > 0
        if METHODS[method].for_family(family).sde_window:
            assert 1 <= sched.sde_window <= max(1, round(0.2 * T)) < T
        for epoch in range(12):
            for seed in (0, 7):
                this, sde = sched.for_epoch(T, epoch, seed)
                this.validate(T)
                if sde is not None:
                    assert sde == tuple(range(sde[0], sde[0] + len(sde))) and 0 <= sde[0] and sde[-1] <= T - 1
                    assert len(sde) == sched.sde_window or sde[-1] == T - 1
                if this.prune_after_window and sde is not None:
                    (after,) = this.checkpoints
                    assert after - 1 >= sde[-1] or after == T - 1, (T, sde, after)  # prunes after the window


def test_the_presets_at_t_10_are_unchanged_and_scale_with_t():
    assert METHODS["pro-grpo"].schedule(10).checkpoints == (5, 7)
    assert METHODS["pro-grpo"].schedule(10, family="eps").checkpoints == (6, 8)
    assert METHODS["mixgrpo"].schedule(10).sde_window == 2
    assert METHODS["mixgrpo"].schedule(4).sde_window == 1 and METHODS["mixgrpo"].schedule(50).sde_window == 10
    assert METHODS["pro-grpo"].schedule(4).checkpoints == (2, 3)
    assert METHODS["pro-grpo"].schedule(50).checkpoints == (25, 35)


def test_checkpoints_stay_increasing_inside_the_steps():
    assert checkpoint_steps(3, (0.5, 0.7)) == (2, 3)  # 3 > T-1: validate() says T is too short, by name
    assert checkpoint_steps(4, (0.5, 0.55)) == (2, 3)
    assert checkpoint_steps(4, (0.9,)) == (3,)
    assert window_steps(4, 0.2) == 1 and window_steps(10, 0) == 0
    with pytest.raises(ValueError, match="checkpoint step 3 is outside 1..T-1 = 1..2"):
        METHODS["pro-grpo"].schedule(3).validate(3)
