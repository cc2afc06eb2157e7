"""SDE windows: Flow-GRPO-Fast, MixGRPO and the expand-and-prune variants built on them."""
from __future__ import annotations

import json

import pytest
import torch

from progrpo_core import config as C
from progrpo_core.methods import METHODS, PruneSchedule


def flow_grpo_fast_starts(steps: int, window: int, draws: int, seed: int = 0) -> set[int]:
    """Flow-GRPO-Fast's window starts, re-implemented from yifan123/flow_grpo (upstream 9745241,
    flow_grpo/diffusers_patch/sd3_pipeline_with_logprob_fast.py): ``start = random.randint(lo, hi -
    window)`` with ``sde_window_range = (0, T // 2)`` (config/base.py) — both ends included."""
    import random

    rng = random.Random(seed)
    return {rng.randint(0, steps // 2 - window) for _ in range(draws)}


@pytest.mark.parametrize("method,window", [("flow-grpo-fast", 2), ("flow-grpo-fast-cps", 3)])
def test_random_window_lies_in_the_first_half_as_flow_grpo_fast_draws_it(method, window):
    s = METHODS[method].schedule(10)
    windows = [s.sde_steps(10, e, seed=0) for e in range(60)]
    assert all(len(w) == window and list(w) == list(range(w[0], w[0] + window)) for w in windows)
    assert {w[0] for w in windows} == flow_grpo_fast_starts(10, window, 200)  # {0..3} for 2 steps, {0..2} for 3
    assert windows == [s.sde_steps(10, e, seed=0) for e in range(60)]
    assert windows != [s.sde_steps(10, e, seed=1) for e in range(60)]
    # drawn for each prompt's group (the reference draws per sampling batch): one update mixes positions
    _, per_prompt = s.for_epoch(10, 3, seed=0, prompt_seeds=list(range(8)))
    assert len(per_prompt) == 8 and len(set(per_prompt)) > 1
    assert per_prompt == s.for_epoch(10, 3, seed=0, prompt_seeds=list(range(8)))[1]


def mixgrpo_windows(steps: int, window: int, iters_per_group: int, iterations: int) -> list[tuple[int, ...]]:
    """MixGRPO's training windows, re-implemented from Tencent-Hunyuan/MixGRPO (e5cdd6a,
    fastvideo/utils/grpo_states.py, GRPOTrainingStates with the published scripts' settings:
    ``sample_strategy="progressive"``, ``prog_overlap``, ``prog_overlap_step=1``, ``roll_back``,
    ``max_timesteps = sampling_steps - 2``): the window is read, then the iteration counted."""
    max_t, cur, in_group, out = steps - 2, 0, 0, []
    for _ in range(iterations):
        out.append(tuple(range(cur, min(cur + window, max_t))))
        in_group += 1
        if in_group == iters_per_group:
            in_group = 0
            cur += 1
            if cur > max_t:
                cur = 0
    return out


@pytest.mark.parametrize("steps,window", [(10, 2), (25, 4)])
def test_progressive_window_is_mixgrpos(steps, window):
    s = PruneSchedule(12, sde_window=window, window_mode="progressive", slide_every=25, shared_noise=True)
    ours = [s.sde_steps(steps, e, seed=0) for e in range((steps - 2) * 25)]
    assert ours == mixgrpo_windows(steps, window, 25, (steps - 2) * 25)
    # the reference's 300 iterations never wrap at T = 25; at step T - 2 its window would be empty for
    # one interval before rolling back: ours rolls back there
    assert ours[-1][0] == steps - 3 and s.sde_steps(steps, (steps - 2) * 25, 0)[0] == 0
    assert METHODS["mixgrpo"].schedule(10) == PruneSchedule(12, sde_window=2, window_mode="progressive",
                                                           slide_every=25, shared_noise=True)


def test_sliding_window_moves_one_step_every_few_epochs_and_wraps():
    s = METHODS["mixgrpo-sliding"].schedule(10)
    starts = [s.sde_steps(10, e, seed=0)[0] for e in range(0, 30, 5)]
    assert starts == [0, 1, 2, 3, 4, 0]
    assert s.sde_steps(10, 4, seed=0) == (0, 1) and s.sde_steps(10, 5, seed=0) == (1, 2)


def test_mixgrpo_starts_a_prompts_trajectories_from_one_noise(flow_model):
    """Shared initial noise: until the window, a prompt's trajectories are one ODE path; after it
    they differ by the window's noise only. Another prompt starts from other noise."""
    from progrpo_core.group import sample_group

    sched = METHODS["mixgrpo"].schedule(6)
    ro = sample_group(flow_model, ["a handwritten 3", "a handwritten 5"], [0, 1], 6, sched, "flow_sde", 0.7,
                      sde_steps=(2, 3))
    a, b = ro.latents[:12], ro.latents[12:]
    assert torch.equal(a[:, :3], a[:1, :3].expand_as(a[:, :3]))  # identical through the ODE prefix
    assert not torch.equal(a[0, 4], a[1, 4])                      # the window's noise separates them
    assert not torch.equal(a[0, 0], b[0, 0])                      # each prompt its own noise


def test_no_window_means_every_step_and_pruning_follows_the_window():
    assert METHODS["grpo"].schedule(10).sde_steps(10, 3, 0) is None
    fast = METHODS["pro-grpo-fast"].schedule(10)
    for e in range(10):
        sched, sde = fast.for_epoch(10, e, seed=0)
        assert sched.checkpoints == (sde[-1] + 2,)  # the model call after the window's last step
        sched.validate(10)
    window = METHODS["pro-grpo-window"].schedule(10)
    assert window.sde_steps(10, 0, 0) == (3, 4) and window.for_epoch(10, 0, 0)[0] is window


@pytest.mark.parametrize("kw,match", [
    (dict(sde_window=10), "sde_window=10 must be in 0..T-1"),
    (dict(sde_window=2, window_mode="middle"), "window mode 'middle' unknown"),
    (dict(sde_window=2, checkpoints=(5, 7), keep=(24, 12), prune_after_window=True),
     "prunes once, right after its random or sliding SDE window"),
    (dict(sde_window=3, window_mode="after-pruning", checkpoints=(8,), keep=(12,)), "does not fit in T=10"),
])
def test_bad_windows_name_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        PruneSchedule(**{"group_size": 48, **kw}).validate(10)


def test_sampling_is_deterministic_outside_the_window(flow_model):
    from progrpo_core.group import sample_group

    sched = PruneSchedule(6)
    ro = sample_group(flow_model, ["a handwritten 3"], [0], 6, sched, "flow_sde", 0.7, sde_steps=(2, 3))
    assert (ro.stds[:, [2, 3]] > 0).all() and (ro.stds[:, [0, 1, 4, 5]] == 0).all()
    assert (ro.log_probs[:, [0, 1, 4, 5]] == 0).all()
    ode = sample_group(flow_model, ["a handwritten 3"], [0], 6, sched, "flow_sde", 0.0)
    torch.testing.assert_close(ro.latents[:, :3], ode.latents[:, :3])  # the same ODE prefix, then it branches
    assert not torch.allclose(ro.latents[:, -1], ode.latents[:, -1])


@pytest.mark.parametrize("method", ["flow-grpo-fast", "pro-grpo-fast", "pro-mixgrpo", "pro-mixgrpo-8", "mixgrpo"])
def test_only_the_window_is_trained(tmp_path, method):
    from progrpo_core.training import Trainer

    cfg = C.build_config({"grpo": {"method": method, "prompts_per_epoch": 2},
                          "run": {"epochs": 3, "out": str(tmp_path / "r"), "eval_seeds": 1, "eval_every": 0}})
    t = Trainer.build(cfg, log=lambda s: None)
    t.run(progress=False)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        _, seeds = t.epoch_prompts(r["epoch"] - 1)
        _, windows = t.schedule.for_epoch(cfg.sampler.steps, r["epoch"] - 1, cfg.run.seed, seeds)
        # one window for all rows, or one per prompt (each row trains its own): the steps trained
        window = tuple(sorted({j for w in windows for j in w})) if isinstance(windows, list) else windows
        assert r["trained_steps"] == list(window)
        if method.startswith("pro-"):  # pruned after the model call that follows the window's last step
            assert [p["step"] for p in r["proxy"]] == [window[-1] + 2]
            kept = r["proxy"][0]["kept"]  # per prompt: the survivors' row ids, as many as the preset keeps
            assert [len(k) for k in kept] == [t.schedule.keep[-1]] * 2 and all(len(set(k)) == len(k) for k in kept)
    assert rows[-1]["optimizer_step"] > 0


def test_windows_can_be_set_on_any_method():
    s = C.build_config({"grpo": {"method": "grpo"}, "schedule": {"sde_window": 3, "window_mode": "sliding"}}).prune_schedule()
    assert (s.sde_window, s.window_mode) == (3, "sliding") and s.sde_steps(10, 0, 0) == (0, 1, 2)


def test_a_windowed_method_keeps_its_window_under_a_users_funnel():
    s = C.build_config({"grpo": {"method": "pro-mixgrpo"}, "schedule": {"group_size": 32, "keep": "8"}}).prune_schedule()
    assert (s.group_size, s.keep, s.sde_window, s.window_mode, s.prune_after_window) == (32, (8,), 2, "progressive", True)
    # the preset's window is a fifth of T (at least one step); a window the user gives must fit T
    assert C.build_config({"grpo": {"method": "mixgrpo"}, "sampler": {"steps": 2}}).prune_schedule().sde_window == 1
    with pytest.raises(ValueError, match="sde_window=2 must be in 0..T-1 = 0..1"):
        C.build_config({"grpo": {"method": "mixgrpo"}, "sampler": {"steps": 2}, "schedule": {"sde_window": 2}})


@pytest.mark.parametrize("method, want", [("grpo", 5e-3), ("pro-grpo", 5e-3), ("mixgrpo", 2.5e-3), ("pro-mixgrpo", 2.5e-3),
                                          ("pro-grpo-window", 2.5e-3)])
def test_auto_learning_rate_follows_the_method_on_builtin_models_and_is_recorded(tmp_path, method, want):
    from progrpo_core.methods import MODEL_LR, auto_lr
    from progrpo_core.training import Trainer

    cfg = C.build_config({"grpo": {"method": method}, "run": {"out": str(tmp_path / "run")}})
    assert cfg.grpo.lr is None
    tr = Trainer.build(cfg, log=lambda s: None)
    assert tr.spec.lr == want and tr.optimizer.param_groups[0]["lr"] == want
    assert cfg.grpo.lr is None and tr.spec.settled()["grpo"]["lr"] == want  # the config as given; the spec as run
    assert auto_lr(method, builtin=False) == MODEL_LR
    given = C.build_config({"grpo": {"method": method, "lr": 2e-3}, "run": {"out": str(tmp_path / "run2")}})
    assert Trainer.build(given, log=lambda s: None).optimizer.param_groups[0]["lr"] == 2e-3


def test_a_training_call_holds_several_steps_of_the_window_and_trains_the_same(tmp_path, monkeypatch):
    """Packing (row, step) pairs across the window's steps: the planner's training call takes a
    minibatch's 24 survivors × 2 window steps at once (a call per step would hold 24), and the
    gradient is the one of calls of 5 rows (one of them straddling the two steps), to float rounding."""
    from progrpo_core.training import Trainer, update

    calls: list[tuple[int, tuple[int, ...]]] = []
    backward = update._backward

    def counting(model, learner, batch, part, j, *a, **k):
        calls.append((len(part), tuple(sorted(set(j.tolist())))))
        return backward(model, learner, batch, part, j, *a, **k)

    monkeypatch.setattr(update, "_backward", counting)
    grads = {}
    for name, micro in (("auto", None), ("five", 5)):
        calls.clear()
        cfg = C.build_config({"grpo": {"method": "pro-mixgrpo", "prompts_per_epoch": 2},
                              "run": {"epochs": 1, "out": str(tmp_path / name), "eval_seeds": 1, "eval_every": 0,
                                      "train_micro_batch": micro}})
        t = Trainer.build(cfg, log=lambda s: None)
        grads[name], step = [], t.optimizer.step

        def recording(*a, _step=step, _into=grads[name], **k):
            _into.append([p.grad.detach().clone() for p in t.adapter.parameters()])
            return _step(*a, **k)

        t.optimizer.step = recording
        t.run(progress=False)
        if micro is None:
            assert t.micro["train"] == 48 and calls == [(48, (0, 1))]  # 2 prompts × 12 survivors × 2 steps
        else:
            assert [n for n, _ in calls] == [5] * 9 + [3] and (5, (0, 1)) in calls  # one call straddles the steps
    assert len(grads["auto"]) == len(grads["five"]) == 1
    for a, b in zip(grads["auto"][0], grads["five"][0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
