"""The bench's instruments: rank correlation, compute accounting, funnel replay, and a micro bench."""
from __future__ import annotations

import json

import numpy as np
import pytest

from progrpo_core.bench import probe as P
from progrpo_core.bench.auto import pick, pick_by_rho
from progrpo_core.bench.runs import compute_to_reach, default_flop_costs, paper_checkpoints
from progrpo_core.compute import Compute, FlopCosts
from progrpo_core.embedded import load_digits_model
from progrpo_core.group import sample_group
from progrpo_core.methods import PruneSchedule
from progrpo_core.rewards import build_reward


@pytest.fixture(scope="module")
def flow():
    return load_digits_model("digits-flow")


@pytest.fixture(scope="module")
def digit():
    return build_reward("digit")


def test_spearman_constant_side_is_nan():
    assert np.isnan(P.spearman([1.0, 1.0, 1.0], [0.1, 0.5, 0.2]))
    assert P.spearman([1.0, 2.0, 3.0], [0.1, 0.5, 0.2]) == pytest.approx(0.5)


@pytest.mark.parametrize("G,K1,K2,c1,c2,T", [(8, 4, 2, 5, 7, 10), (6, 4, 3, 2, 3, 5), (5, 3, 2, 2, 4, 6)])
def test_pruned_rollout_compute_equals_hand_count(flow, digit, G, K1, K2, c1, c2, T):
    """Pruning after c1 and c2 of T steps (checkpoints c1, c2) costs G·c1 + K1·(c2−c1) + K2·(T−c2) rows."""
    prompts = ["a handwritten 3", "a handwritten 8"]
    cps = paper_checkpoints(T, (c1 / T, c2 / T))
    assert cps == [c1, c2]
    sched = PruneSchedule(G, tuple(cps), (K1, K2))
    ro = sample_group(flow, prompts, [1, 2], T, sched, "flow_sde", 0.7,
                      score_fn=lambda im, p: digit.evaluate(im, p)["digit"])
    B = len(prompts)
    hand = B * (G * c1 + K1 * (c2 - c1) + K2 * (T - c2))
    assert ro.compute.nfe_sample == hand
    assert sched.sampling_nfe(T) * B == hand
    assert ro.compute.proxy_decodes == ro.compute.proxy_rewards == B * (G + K1)
    assert ro.compute.model_calls == T
    assert ro.latents.shape[0] == B * K2


def test_flops_and_units_agree(flow, digit):
    costs = default_flop_costs(flow, digit)
    assert costs.model_fwd > 0 and costs.reward > 0
    c = Compute(nfe_sample=100, nfe_train_fwd=40, nfe_train_bwd=40, proxy_decodes=7, proxy_rewards=7,
                final_decodes=5, final_rewards=5)
    fl = c.flops(costs)
    assert fl["total"] == pytest.approx(sum(v for k, v in fl.items() if k != "total"))
    assert fl["total"] / costs.model_fwd == pytest.approx(c.units(**costs.unit_kw()))
    with pytest.raises(ValueError, match="model_fwd"):
        FlopCosts(model_fwd=0).unit_kw()


def test_replay_keeps_what_the_pruned_sampler_kept(flow, digit):
    """Rows keep their own noise whatever the batch, so replaying a funnel on full groups' recorded
    proxies makes exactly the choices the pruning sampler made."""
    prompts, seeds, T = ["a handwritten 1", "a handwritten 7", "a handwritten 4"], [11, 12, 13], 6
    sched = PruneSchedule(10, (2, 4), (6, 3))
    ro = sample_group(flow, prompts, seeds, T, sched, "flow_sde", 0.7,
                      score_fn=lambda im, p: digit.evaluate(im, p)["digit"])
    probe = P.record_probe(flow, digit, prompts, seeds, T, 10, "flow_sde", 0.7)
    assert probe.proxy.shape == (T, 3, 10) and probe.nfe == 3 * 10 * T
    kept = P.replay_funnel(probe, sched)
    np.testing.assert_array_equal(np.sort(kept, axis=1), ro.checkpoints[-1]["kept"].sort(dim=1).values.numpy())
    np.testing.assert_allclose(probe.proxy[1], ro.checkpoints[0]["rewards"].double().numpy(), atol=1e-6)


def test_selection_stats_and_clustering():
    final = np.array([[0.0, 0.0, 1.0, 1.0, 0.9, 0.95], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    probe = P.Probe(proxy=np.stack([final] * 3), final=final, sigmas=np.linspace(1, 0, 4), nfe=0)
    full = P.selection_stats(probe, np.tile(np.arange(6), (2, 1)))
    kept = P.replay_funnel(probe, PruneSchedule(6, final_keep=2))
    assert kept.shape == (2, 2)
    sel = P.selection_stats(probe, kept)
    assert sel["std"] > full["std"]
    # an all-equal group has zero advantages: fully clustered before and after
    assert P.advantage_sample(probe)[6:].tolist() == [0.0] * 6


def test_compute_to_reach_interpolates():
    curve = [{"units": 0, "reward": 0.4, "wall": 0.0}, {"units": 100, "reward": 0.6, "wall": 1.0},
             {"units": 200, "reward": 0.8, "wall": 2.0}]
    assert compute_to_reach(curve, 0.7) == pytest.approx(150)
    assert compute_to_reach(curve, 0.7, key="wall") == pytest.approx(1.5)
    assert compute_to_reach(curve, 0.3) == 0
    assert compute_to_reach(curve, 0.9) is None


def test_auto_picks():
    rows = [{"checkpoints": [1, 2], "nfe": 100, "efficiency": 0.7}, {"checkpoints": [2, 3], "nfe": 120, "efficiency": 0.92},
            {"checkpoints": [3, 4], "nfe": 140, "efficiency": 0.99}]
    assert pick(rows, 0.9)["checkpoints"] == [2, 3]
    assert pick(rows, 0.995)["checkpoints"] == [3, 4]  # none reaches it: the most efficient
    fid = [{"step": i, "calls": i + 1, "rho_mean": r} for i, r in enumerate([0.1, 0.5, 0.8, 0.91, 0.93, 0.97, 0.99])]
    assert pick_by_rho(fid, (0.9, 0.95), 8) == [4, 6]  # checkpoints count model calls
    assert pick_by_rho(fid, (0.999, 0.9999), 8) == [6, 7]


def test_paper_table4_reproduced_by_our_counting():
    from progrpo_core.bench.suite import paper_flops_table

    rows = paper_flops_table()["rows"]
    for r in rows.values():
        assert abs(r["ratio_ours"] - r["ratio_paper"]) < 0.02


def test_micro_bench_writes_results_and_plots(tmp_path):
    from progrpo_core.cli import main

    out = tmp_path / "bench"
    code = main(["bench", "--methods", "grpo,pro-grpo", "--seeds", "1", "--budget", "12000", "--evals", "2",
                 "--eval-seeds", "2", "--skip", "efficiency", "--jobs", "1", "--out", str(out)])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"grpo", "pro-grpo"}
    for m in res["methods"].values():
        assert m["final_eval"]["mean"] is not None and m["final_eval"]["std"] is not None
        assert 0 < m["total_compute"]["mean"] <= 12000
        assert "compute_to_baseline" in m  # None when never reached
    assert res["methods"]["grpo"]["compute_to_baseline"] is not None  # the baseline reaches its own final
    assert res["fidelity"] and res["paper_flops"]["rows"]
    for png in ("reward_vs_compute.png", "reward_vs_wall.png", "clustering.png", "proxy_fidelity.png"):
        assert (out / png).stat().st_size > 1000
    assert "Results per method" in (out / "report.md").read_text()
    for p in res["runs"]:  # the time axes: CPU time of the training phases grows along the curve
        cpus = [pt["cpu"] for pt in p["curve"]]
        assert cpus == sorted(cpus) and cpus[-1] > 0
    (out / "report.md").unlink()
    assert main(["bench", "--replot", "--out", str(out)]) == 0
    assert "Results per method" in (out / "report.md").read_text()


def test_bench_rejects_unknown_method(tmp_path):
    from progrpo_core.cli import main

    assert main(["bench", "--methods", "nope", "--out", str(tmp_path)]) == 2
