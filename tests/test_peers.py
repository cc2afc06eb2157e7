"""The peers bench's rules: a reward reached for good, rates chosen on other seeds, controls at the
rate of the method they control, compute priced as a real model prices it."""
import json
import math

import numpy as np
import pytest

from progrpo_core.bench import peers
from progrpo_core.bench.profiles import PROFILES


def curve(*rewards, step=10.0):
    return [{"units": step * (i + 1), "reward": r, "counts": counts(i + 1)} for i, r in enumerate(rewards)]


def counts(k):
    return {"nfe_sample": 100 * k, "nfe_train_fwd": 10 * k, "nfe_train_bwd": 10 * k, "proxy_decodes": 5 * k,
            "final_decodes": 8 * k, "proxy_rewards": 5 * k, "final_rewards": 8 * k}


def test_a_brief_peak_does_not_count_as_reaching():
    assert peers.stable_reach(curve(0.1, 0.9, 0.2, 0.3, 0.3), 0.5) is None          # peaked, then fell
    assert peers.stable_reach(curve(0.1, 0.6, 0.6), 0.5) is None                     # only 2 evaluations above
    assert peers.stable_reach(curve(0.6, 0.2, 0.6, 0.7, 0.8), 0.5) == pytest.approx(20 + 10 * 0.3 / 0.4)
    assert peers.stable_reach(curve(0.6, 0.7, 0.8), 0.5) == 10.0                      # from the first evaluation


def run(task, method, lr, seed, rewards):
    return {"task": task, "base_method": method, "lr": lr, "seed": seed, "method": f"{task}/{method}@{lr:g}",
            "curve": curve(*rewards), "units": 10.0 * len(rewards), "final": {"reward": rewards[-1], "gold": 0.0}}


def test_rates_are_chosen_by_stable_reach_and_controls_follow_the_method_they_control():
    runs = []
    for seed in peers.SWEEP_SEEDS:
        runs += [run("flow", "grpo", 1e-3, seed, [0.3, 0.4, 0.5, 0.5, 0.5]),
                 run("flow", "grpo", 1e-2, seed, [0.3, 0.5, 0.6, 0.6, 0.6]),          # GRPO's best: target 0.6
                 run("flow", "pro-mixgrpo", 1e-3, seed, [0.5, 0.6, 0.7, 0.7, 0.7]),   # reaches at 20
                 run("flow", "pro-mixgrpo", 1e-2, seed, [0.9, 0.9, 0.3, 0.3, 0.3]),   # higher peak, collapses
                 run("flow", "mixgrpo", 1e-3, seed, [0.3, 0.4, 0.5, 0.5, 0.55]),      # never: highest final
                 run("flow", "mixgrpo", 1e-2, seed, [0.3, 0.4, 0.5, 0.5, 0.45])]
    rates = peers.best_rates(runs)["flow"]
    assert rates["target"] == pytest.approx(0.6) and rates["grpo_lr"] == 1e-2
    m = rates["methods"]
    assert m["pro-mixgrpo"]["lr"] == 1e-3 and m["pro-mixgrpo"]["reaches"]
    assert m["mixgrpo"]["lr"] == 1e-3 and not m["mixgrpo"]["reaches"]
    assert m["pro-mixgrpo-random"]["lr"] == 1e-3 and m["pro-mixgrpo-random"]["rate_of"] == "pro-mixgrpo"
    assert "pro-nft-random" not in m  # its method was not swept
    summary = peers.summarise(runs, {"flow": rates}, peers.SWEEP_SEEDS)  # (these runs are on the sweep seeds)
    assert summary["flow"]["target"] == pytest.approx(0.6)  # GRPO at its chosen rate only, not every rate run
    text = peers.report({"flow": rates}, summary)
    assert "task's grid: flow 0.001, 0.01)" in text  # the grid the sweep tried, not a constant
    assert "pro-mixgrpo: 0.001* 0.700, 0.01 0.300" in text


def test_the_best_peer_is_its_fastest_rate_that_reaches_on_every_seed():
    runs = [run("flow", "grpo", 1e-2, seed, [0.3, 0.5, 0.6]) for seed in peers.FINAL_SEEDS]
    runs += [run("flow", "mixgrpo", 2.5e-3, seed, [0.5, 0.7, 0.7, 0.7]) for seed in peers.FINAL_SEEDS]  # 15
    runs += [run("flow", "mixgrpo", 3.5e-3, seed, [0.7, 0.7, 0.7] if seed else [0.7, 0.7, 0.2])  # 10, one slip
             for seed in peers.FINAL_SEEDS]
    runs += [run("flow", "nft", 5e-3, seed, [0.3, 0.4, 0.6, 0.6, 0.6]) for seed in peers.FINAL_SEEDS[1:]]  # 4 seeds
    best = peers.best_peer(runs, 0.6, ["units"])["units"]
    assert best == {"method": "mixgrpo", "lr": 2.5e-3, "reach": pytest.approx(15.0), "std": 0.0, "n": 5}
    assert peers.best_peer(runs, 0.95, ["units"])["units"] is None


def test_ours_are_compared_by_the_best_peers_rule_too():
    """A rate of ours that slips on one seed gives no ratio; the fastest rate the final runs hold
    that reaches on every seed does, exactly as the best peer is chosen."""
    rates = {"target": 0.6, "grpo_lr": 1e-2,
             "methods": {m: {"lr": lr, "at_edge": False, "reaches": True, "grid": {}}
                         for m, lr in (("grpo", 1e-2), ("mixgrpo", 2.5e-3), ("pro-mixgrpo-8-preview", 5e-3))}}
    runs = [run("flow", "grpo", 1e-2, seed, [0.6, 0.6, 0.6]) for seed in peers.FINAL_SEEDS]  # target 0.6
    runs += [run("flow", "mixgrpo", 2.5e-3, seed, [0.5, 0.7, 0.7, 0.7]) for seed in peers.FINAL_SEEDS]  # 15
    runs += [run("flow", "pro-mixgrpo-8-preview", 5e-3, seed, [0.7, 0.7, 0.7] if seed else [0.7, 0.7, 0.2])
             for seed in peers.FINAL_SEEDS]                                                       # 10, one slip
    runs += [run("flow", "pro-mixgrpo-8-preview", 3.5e-3, seed, [0.55, 0.7, 0.7, 0.7])          # 10 + 5/15·10
             for seed in peers.FINAL_SEEDS]
    runs += [run("flow", "pro-mixgrpo", 1e-3, seed, [0.5, 0.7, 0.7, 0.7]) for seed in peers.FINAL_SEEDS]  # 15
    s = peers.summarise(runs, {"flow": rates})["flow"]
    assert s["methods"]["pro-mixgrpo-8-preview"]["of_best_peer"]["units"] is None  # 4 of 5 at its chosen rate
    ours = s["best_ours"]["units"]
    assert (ours["method"], ours["lr"]) == ("pro-mixgrpo-8-preview", 3.5e-3)
    assert ours["reach"] == pytest.approx(10 + 10 / 3) and ours["of_best_peer"] == pytest.approx((10 + 10 / 3) / 15)
    assert ours["of_best_peer_se"] == pytest.approx(0.0)  # no spread on either side
    text = peers.report({"flow": rates}, {"flow": s})
    assert "Ours by the best peer's rule" in text and "built-in units: pro-mixgrpo-8-preview at 0.0035, 0k ± 0k, 89 % ± 0 of the best peer; SD3.5" in text
    assert peers.fastest_complete(runs, 0.95, ["units"], peers.OURS)["units"] is None


def test_more_final_seeds_are_added_to_the_kept_runs_and_the_report_uses_exactly_those():
    assert peers.parse_seeds("0-9") == tuple(range(10))
    assert peers.parse_seeds("0-4, 7,3") == (0, 1, 2, 3, 4, 7)
    for bad in ("", "a-3", "11-13", "-1"):
        with pytest.raises(SystemExit, match="--seeds"):
            peers.parse_seeds(bad)
    rates = {"target": 0.6, "grpo_lr": 1e-2,
             "methods": {m: {"lr": lr, "at_edge": False, "reaches": True, "grid": {}}
                         for m, lr in (("grpo", 1e-2), ("mixgrpo", 2.5e-3), ("pro-mixgrpo", 1e-3), ("nft", 5e-3))}}
    ten = tuple(range(10))
    runs = [run("flow", "grpo", 1e-2, seed, [0.6, 0.6, 0.6]) for seed in ten]  # target 0.6
    runs += [run("flow", "mixgrpo", 2.5e-3, seed, [0.5, 0.7, 0.7, 0.7]) for seed in ten]      # 15 on every seed
    runs += [run("flow", "mixgrpo", 3.5e-3, seed, [0.7, 0.7, 0.7]) for seed in peers.FINAL_SEEDS]  # 10, seeds 0-4 only
    runs += [run("flow", "pro-mixgrpo", 1e-3, seed, [0.7, 0.7, 0.7] if seed < 5 else [0.5, 0.5, 0.7, 0.7, 0.7])
             for seed in ten]                                                                   # 10, then 25
    runs += [run("flow", "nft", 5e-3, seed, [0.7, 0.7, 0.7]) for seed in peers.FINAL_SEEDS]  # seeds 0-4 only
    five = peers.summarise(runs, {"flow": rates})["flow"]
    assert five["best_peer"]["units"]["lr"] == 3.5e-3 and five["methods"]["pro-mixgrpo"]["reach"]["units"]["n"] == 5
    assert five["methods"]["pro-mixgrpo"]["of_best_peer"]["units"] == pytest.approx(1.0)
    s10 = peers.summarise(runs, {"flow": rates}, ten)
    best = s10["flow"]["best_peer"]["units"]  # the 3.5e-3 runs lack seeds 5-9: not a candidate
    assert best["lr"] == 2.5e-3 and best["n"] == 10
    assert s10["flow"]["methods"]["pro-mixgrpo"]["of_best_peer"]["units"] == pytest.approx(17.5 / 15)
    text = peers.report({"flow": rates}, s10)
    assert "seeds 0–9." in text and "n/10" in text and "(10/10)" in text
    assert "nft" in five["methods"] and "| nft |" in peers.report({"flow": rates}, {"flow": five})
    assert "nft" not in s10["flow"]["methods"] and s10["flow"]["incomplete"] == {"nft": [0, 1, 2, 3, 4]}
    assert "| nft |" not in text and "Not run on every seed, so left out: nft (seeds 0–4)." in text


def test_a_ratio_to_the_best_peer_carries_the_seeds_uncertainty():
    # ours 20k ± 2k (sample sd) over 5 seeds, the peer 30k ± 3k over 5: the delta method's standard error
    ours_vals, peer_vals = [17.0, 19.0, 20.0, 21.0, 23.0], [26.0, 28.0, 30.0, 32.0, 34.0]
    ours = {"mean": 20.0, "std": float(np.std(ours_vals)), "n": 5, "of": 5}
    peer = {"method": "mixgrpo", "lr": 1e-3, "reach": 30.0, "std": float(np.std(peer_vals)), "n": 5}
    want = (20 / 30) * math.sqrt(np.var(ours_vals, ddof=1) / 5 / 20**2 + np.var(peer_vals, ddof=1) / 5 / 30**2)
    assert peers._ratio_se(ours, peer) == pytest.approx(want)
    assert peers._pct(20 / 30, want) == "67 % ± 5"
    # no spread on either side: exact; a side that misses on a seed, or no peer: no ratio at all
    assert peers._ratio_se({**ours, "std": 0.0}, {**peer, "std": 0.0}) == 0.0
    assert peers._ratio_se({**ours, "n": 4}, peer) is None and peers._ratio_se(ours, None) is None


def test_controls_change_one_thing():
    for control, (of, base, schedule) in peers.CONTROLS.items():
        spec = peers.spec_for("flow", control, 5e-3)
        assert spec.table["grpo"]["method"] == base and spec.table["schedule"] == schedule
        assert spec.note == control and of in peers.OURS
    assert "flow-grpo-fast-cps" not in peers.methods_for("eps")  # CPS is a flow sampler
    assert not set(peers.CONTROLS) & set(peers.methods_for("flow", controls=False))


def test_priced_curves_use_the_profile_and_keep_the_rewards():
    c = curve(0.1, 0.5)
    priced = peers.priced({"curve": c}, "sd35m")
    assert [p["reward"] for p in priced] == [0.1, 0.5]
    assert priced[1]["units"] == pytest.approx(2 * priced[0]["units"])
    assert priced[0]["units"] == pytest.approx(PROFILES["sd35m"].flops(counts(1)))


def test_taesd_previews_are_priced_at_the_tiny_decoder():
    c, p = curve(0.1, 0.5), PROFILES["sd35m"]
    vae, taesd = peers.priced({"curve": c}, "sd35m"), peers.priced({"curve": c}, "sd35m+taesd")
    n = counts(1)["proxy_decodes"]
    assert n > 0 and vae[0]["units"] - taesd[0]["units"] == pytest.approx(n * (p.decode - p.decode_taesd))
    assert p.decode_taesd < p.decode / 10  # TAESD: ~18x cheaper than the VAE at 512² (counted, cost_profiles.py)
    assert set(peers.PRICES) >= {"units", "sd35m", "sd35m+taesd", "flux+taesd"}


def test_a_screen_reports_each_variant_against_the_sweeps_grpo_final(tmp_path):
    out = tmp_path / "screen.jsonl"
    hi, lo = peers.SWEEP_FINALS["flow"] + 0.01, peers.SWEEP_FINALS["flow"] - 0.01
    runs = [run("flow", "a", 1e-3, 11, [0.1, hi, hi, hi]), run("flow", "a", 1e-3, 12, [0.1, 0.1, hi, hi, hi]),
            run("flow", "b", 1e-3, 11, [0.1, hi, hi, lo])]
    for r in runs:
        r["curve"] = [{**p, "units": p["units"] * 1000} for p in r["curve"]]
        r["units"], r["epochs"] = r["units"] * 1000, 4
    out.write_text("".join(json.dumps(r) + "\n" for r in runs))
    a, b = peers.screen(None, [], out)  # no jobs: the table of the runs OUT holds
    reach = [peers.stable_reach(r["curve"], peers.SWEEP_FINALS["flow"]) for r in runs[:2]]
    assert a.split() == ["flow/a@0.001", "reaches", "2/2", f"{sum(reach) / 2000:.1f}k", "final",
                         f"{hi:.3f}", "units/epoch", "10000"]
    assert b.split() == ["flow/b@0.001", "reaches", "0/1", "-", "final", f"{lo:.3f}", "units/epoch", "10000"]
