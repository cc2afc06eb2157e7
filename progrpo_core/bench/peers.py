"""``python -m progrpo_core bench --peers``: our methods against the peers as their references define
them, every method at its own best *stable* learning rate, with controls that say where a gain
comes from, and the compute priced as real models price it.

Two stages, so that choosing the rate never sees the seeds that are reported:

1. ``--stage sweep`` — every method at every rate of ``RATES`` on seeds 11 and 12 (seeds the final
   stage never uses; ``--rates`` extends a task's grid, for every method, while a best rate sits
   at its edge). GRPO's best rate is the one with the highest final; its final is the task's
   target. Every other method's best rate is the one that reaches the target *stably* — from some
   evaluation on, every later one at or above it, the last three included — with the least
   compute; a method that never does takes the rate of its highest final.
2. ``--stage final`` — every method at its best rate on seeds 0–4 (``--seeds`` for more: ``0-9``
   adds seeds 5–9 to the runs kept; the report then uses those ten); the report gives each one's
   final reward, the compute at which each seed stably reaches GRPO's final (in the built-in model's
   units and priced as SD3.5-Medium, ``profiles.PROFILES``), its ratio to GRPO's whole budget and to
   the best of the peers (faithful MixGRPO, Flow-GRPO-Fast in both published forms, DiffusionNFT),
   each peer at the fastest rate at which its final runs reach on every seed (``best_peer``).

Controls: each pruning method against the same method without expansion (G = its survivors) and
with a random cut in place of OVF, each at the rate chosen for the method it controls (so the
control changes one thing); the sweep does not tune them.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from .profiles import PROFILES
from .runs import MethodSpec

RATES = (1e-3, 2.5e-3, 3.5e-3, 5e-3, 7e-3, 1e-2, 2e-2)
SWEEP_SEEDS, FINAL_SEEDS = (11, 12), (0, 1, 2, 3, 4)
TASKS = {"flow": ("digits-flow", 150_000.0), "eps": ("digits-eps", 150_000.0),
         "pair": ("digits-pair-flow", 600_000.0), "pair-eps": ("digits-pair-eps", 600_000.0)}
PEERS = ("mixgrpo", "flow-grpo-fast", "flow-grpo-fast-cps", "nft")
OURS = ("pro-grpo", "pro-grpo-fast", "pro-mixgrpo", "pro-mixgrpo-8", "pro-nft", "pro-grpo-fast-cps", "pro-mixgrpo-cps",
        "pro-mixgrpo-8-preview")
# control → (the method it controls, the method it runs, schedule settings): the same sampling
# without expansion (G = the survivors), or a random cut in place of OVF
CONTROLS = {
    "grpo-g12": ("pro-grpo", "grpo", {"group_size": 12}),
    "pro-grpo-fast-g12": ("pro-grpo-fast", "grpo",
                          {"group_size": 12, "sde_window": 2, "window_mode": "random", "window_draw": "epoch"}),
    "pro-grpo-fast-random": ("pro-grpo-fast", "pro-grpo-fast", {"selector": "random"}),
    "pro-mixgrpo-random": ("pro-mixgrpo", "pro-mixgrpo", {"selector": "random"}),
    "pro-nft-random": ("pro-nft", "pro-nft", {"selector": "random"}),
    "mixgrpo-g8": ("pro-mixgrpo-8", "mixgrpo", {"group_size": 8}),
    "pro-mixgrpo-8-random": ("pro-mixgrpo-8", "pro-mixgrpo-8", {"selector": "random"}),
    # (a random 8 of 24 window outcomes trained on their previews is, in distribution, MixGRPO at G = 8 on previews)
    "pro-mixgrpo-8-preview-random": ("pro-mixgrpo-8-preview", "pro-mixgrpo-8-preview", {"selector": "random"}),
}
# (mixgrpo is pro-mixgrpo's G = 12 control: the same window and shared noise, 12 trajectories)
# CPS is a flow sampler
FLOW_ONLY = {"flow-grpo-fast-cps", "pro-grpo-fast-cps", "pro-mixgrpo-cps"}


def methods_for(task: str, controls: bool = True) -> list[str]:
    names = ["grpo", *PEERS, *OURS, *(CONTROLS if controls else ())]
    return [m for m in names if not (TASKS[task][0].endswith("eps") and m in FLOW_ONLY)]


def spec_for(task: str, method: str, lr: float) -> MethodSpec:
    model = TASKS[task][0]
    _, base, schedule = CONTROLS.get(method, (method, method, {}))
    table = {"grpo": {"method": base, "lr": lr}, "sampler": {"steps": 10}, "reward": {"gold": "stroke"}}
    if schedule:
        table["schedule"] = dict(schedule)
    return MethodSpec(f"{task}/{method}@{lr:g}", model, table, group=task, note=method)


def _job(spec: MethodSpec, seed: int, budget: float, n_evals: int, eval_seeds: int) -> dict:
    import torch

    from .runs import run_method

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = run_method(spec, seed, budget, n_evals=n_evals, eval_seeds=eval_seeds)
    out["job_wall_s"] = time.perf_counter() - t0
    out["task"], out["base_method"], out["lr"] = spec.group, spec.note, spec.table["grpo"]["lr"]
    return {k: v for k, v in out.items() if k not in ("probes", "epoch_metrics")}


def run_jobs(jobs: list[tuple[MethodSpec, int]], out: Path, n_evals: int, eval_seeds: int, workers: int,
             log) -> list[dict]:
    """Run ``(spec, seed)`` jobs (those already in ``out/runs.jsonl`` are kept, so a stopped stage
    continues) and return every run."""
    path = out / "runs.jsonl"
    done = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    have = {(r["method"], r["seed"]) for r in done}
    todo = [(s, seed) for s, seed in jobs if (s.name, seed) not in have]
    todo.sort(key=lambda j: -TASKS[j[0].group][1])  # the long tasks first, so the pool drains evenly
    log(f"{len(todo)} run(s) to do, {len(done)} kept from {path}")
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool, path.open("a") as f:
        futures = [pool.submit(_job, s, seed, TASKS[s.group][1], n_evals, eval_seeds) for s, seed in todo]
        for i, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            f.write(json.dumps(r) + "\n")
            f.flush()
            done.append(r)
            log(f"[{i}/{len(todo)}] {r['method']} seed {r['seed']}: final {r['final']['reward']:.3f}, "
                f"{r['epochs']} epochs, {r['job_wall_s']:.0f} s (stage {time.perf_counter() - t0:.0f} s)")
    return done


# -- reaching a reward stably ---------------------------------------------------------------------

def stable_reach(curve: list[dict], target: float, key: str = "units", tail: int = 3) -> float | None:
    """The compute at which ``curve`` reaches ``target`` for good: the crossing into the last stretch
    of evaluations that are all at or above it, that stretch holding the last ``tail`` at least
    (linear between evaluation points); None when the curve does not end so."""
    ok = [p["reward"] >= target for p in curve]
    if len(ok) < tail or not all(ok[-tail:]):
        return None
    i = len(ok) - 1
    while i > 0 and ok[i - 1]:
        i -= 1
    if i == 0:
        return float(curve[0][key])
    a, b = curve[i - 1], curve[i]
    return float(a[key] + (target - a["reward"]) / (b["reward"] - a["reward"]) * (b[key] - a[key]))


# how a run is priced: "units" (the built-in model's count), a profile ("sd35m": previews decoded by
# the VAE) or a profile with the previews decoded by TAESD ("sd35m+taesd", the trainer's proxy_vae)
PRICES = ("units", *PROFILES, *(f"{p}+taesd" for p in PROFILES))


def priced(run: dict, price: str) -> list[dict]:
    """The run's eval curve with ``units`` replaced by the FLOPs of its counts on a real model
    (``price``: a profile, or ``"<profile>+taesd"``; ``"units"``: the curve as it is)."""
    if price == "units":
        return run["curve"]
    profile, _, decoder = price.partition("+")
    p = PROFILES[profile]
    return [{**pt, "units": p.flops(pt["counts"], decoder or "vae")} for pt in run["curve"]]


def stable_final(run: dict, tail: int = 3) -> float:
    """The mean of the last ``tail`` evaluations (a final that a late spike cannot fake)."""
    return float(np.mean([p["reward"] for p in run["curve"][-tail:]]))


def _mean(vals: list[float | None]) -> dict:
    v = [x for x in vals if x is not None]
    return {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v)) if v else None, "n": len(v),
            "of": len(vals)}


# -- choosing the rates ---------------------------------------------------------------------------

# GRPO's finals on the sweep seeds (rates.json): what a screen of a variant on those seeds reaches for
SWEEP_FINALS = {"flow": 0.759, "eps": 0.926, "pair": 0.215, "pair-eps": 0.555}


def screen(job, jobs: list[tuple], out: Path) -> list[str]:
    """A screen of variants on the sweep seeds: run ``job(*args)`` for every tuple of ``jobs`` (two
    processes; ``job`` returns a run as :func:`_job` does), append the runs to ``out`` as JSON lines,
    and return one line per method of every run ``out`` holds: how many of its runs reach the
    sweep's GRPO final for good, their mean compute there, the mean final and the units per epoch."""
    if jobs:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool, out.open("a") as f:
            for r in pool.map(job, *zip(*jobs)):
                f.write(json.dumps(r) + "\n")
    runs: dict[str, list[dict]] = {}
    for line in out.read_text().splitlines():
        r = json.loads(line)
        runs.setdefault(r["method"], []).append(r)
    lines = []
    for name, rs in sorted(runs.items()):
        ok = [x for x in (stable_reach(r["curve"], SWEEP_FINALS[r["task"]]) for r in rs) if x is not None]
        mean = f"{sum(ok) / len(ok) / 1000:.1f}k" if ok else "-"
        lines.append(f"{name:60s} reaches {len(ok)}/{len(rs)} {mean:>7s}  final "
                     f"{sum(r['final']['reward'] for r in rs) / len(rs):.3f}  units/epoch "
                     f"{rs[0]['units'] / rs[0]['epochs']:.0f}")
    return lines


def best_rates(runs: list[dict]) -> dict[str, dict[str, Any]]:
    """Per task: GRPO's target and every method's best stable rate, with the grid behind it."""
    out: dict[str, dict[str, Any]] = {}
    for task in TASKS:
        rs = [r for r in runs if r["task"] == task]
        if not rs:
            continue
        grid = {}
        for m in sorted({r["base_method"] for r in rs}):
            grid[m] = {}
            for lr in sorted({r["lr"] for r in rs if r["base_method"] == m}):
                seeds = [r for r in rs if r["base_method"] == m and r["lr"] == lr]
                grid[m][lr] = {"final": float(np.mean([stable_final(r) for r in seeds])), "runs": seeds}
        grpo_lr, grpo = max(grid["grpo"].items(), key=lambda kv: kv[1]["final"])
        target = grpo["final"]
        chosen = {}
        for m, rates in grid.items():
            reach = {lr: [stable_reach(r["curve"], target) for r in g["runs"]] for lr, g in rates.items()}
            reaching = {lr: float(np.mean(v)) for lr, v in reach.items() if all(x is not None for x in v)}
            if m == "grpo":
                lr = grpo_lr
            elif reaching:
                lr = min(reaching, key=reaching.get)
            else:
                lr = max(rates, key=lambda k: rates[k]["final"])
            edge = lr in (min(rates), max(rates))
            chosen[m] = {"lr": lr, "at_edge": edge, "reaches": bool(reaching.get(lr)),
                         "grid": {f"{k:g}": {"final": round(v["final"], 4),
                                             "reach": reaching.get(k)} for k, v in rates.items()}}
        for control, (of, _, _) in CONTROLS.items():
            if of in chosen and control in methods_for(task):
                chosen[control] = {"lr": chosen[of]["lr"], "at_edge": False, "reaches": None, "grid": {},
                                   "rate_of": of}
        out[task] = {"target": target, "grpo_lr": grpo_lr, "methods": chosen}
    return out


# -- the final stage ------------------------------------------------------------------------------

def summarise(runs: list[dict], rates: dict, seeds: tuple[int, ...] = FINAL_SEEDS) -> dict[str, Any]:
    """Per task and method (at its chosen rate, on ``seeds`` — runs of other seeds are left out):
    final, stable reach of GRPO's final in units and in each profile's FLOPs, and the ratios to GRPO
    and to the best peer. A method not run on every one of ``seeds`` gets no row; ``incomplete``
    lists it with the seeds it has."""
    out: dict[str, Any] = {}
    for task, info in rates.items():
        rs = [r for r in runs if r["task"] == task and r["seed"] in seeds]
        grpo_runs = [r for r in rs if r["base_method"] == "grpo" and r["lr"] == info["methods"]["grpo"]["lr"]]
        target = float(np.mean([stable_final(r) for r in grpo_runs])) if grpo_runs else None  # GRPO at its rate
        rows: dict[str, Any] = {}
        incomplete: dict[str, list[int]] = {}
        for m, choice in info["methods"].items():
            held = [r for r in rs if r["base_method"] == m and r["lr"] == choice["lr"]]
            if not held or target is None:
                continue
            if {r["seed"] for r in held} != set(seeds):
                incomplete[m] = sorted({r["seed"] for r in held})
                continue
            row = {"lr": choice["lr"], "final": _mean([stable_final(r) for r in held]),
                   "gold": _mean([r["final"]["gold"] for r in held]),
                   "reach": {price: _mean([stable_reach(priced(r, price), target) for r in held]) for price in PRICES}}
            rows[m] = row
        budgets = {key: _mean([(r["units"] if key == "units" else priced(r, key)[-1]["units"])
                               for r in grpo_runs])["mean"]
                   for key in PRICES}
        best = best_peer(rs, target, budgets, seeds) if target is not None else dict.fromkeys(budgets)
        ours = fastest_complete(rs, target, budgets, OURS, seeds) if target is not None else dict.fromkeys(budgets)
        for k, o in ours.items():
            if o is not None:
                reach = {"mean": o["reach"], "std": o["std"], "n": o["n"], "of": o["n"]}
                o.update(of_best_peer=_ratio(reach, best[k]["reach"] if best[k] else None),
                         of_best_peer_se=_ratio_se(reach, best[k]))
        for m, row in rows.items():
            row["of_grpo"] = {k: _ratio(row["reach"][k], budgets[k]) for k in budgets}
            row["of_best_peer"] = {k: _ratio(row["reach"][k], best[k]["reach"] if best[k] else None) for k in budgets}
            row["of_best_peer_se"] = {k: _ratio_se(row["reach"][k], best[k]) for k in budgets}
        out[task] = {"target": target, "grpo_budget": budgets, "methods": rows, "best_peer": best, "best_ours": ours,
                     "seeds": list(seeds), "incomplete": incomplete}
    return out


def best_peer(runs: list[dict], target: float, keys, seeds: tuple[int, ...] = FINAL_SEEDS
              ) -> dict[str, dict | None]:
    """Per price: the peer and rate that reach ``target`` with the least mean compute on *every* one
    of ``seeds``, among all the rates the final runs hold for a peer — not only its chosen one, so a
    peer whose chosen rate slips on one seed is still compared at the best rate it holds."""
    return fastest_complete(runs, target, keys, PEERS, seeds)


def fastest_complete(runs: list[dict], target: float, keys, methods, seeds: tuple[int, ...] = FINAL_SEEDS
                     ) -> dict[str, dict | None]:
    """Per price: which of ``methods``, at which rate the final runs hold, reaches ``target`` with
    the least mean compute on every one of ``seeds`` (None: none does) — :func:`best_peer`'s rule,
    which the report applies to our methods too, so both sides are compared alike."""
    out: dict[str, dict | None] = {k: None for k in keys}
    for p in methods:
        for lr in sorted({r["lr"] for r in runs if r["base_method"] == p}):
            held = [r for r in runs if r["base_method"] == p and r["lr"] == lr and r["seed"] in seeds]
            if {r["seed"] for r in held} != set(seeds):
                continue
            for k in keys:
                reach = [stable_reach(priced(r, k), target) for r in held]
                if all(x is not None for x in reach) and (out[k] is None or np.mean(reach) < out[k]["reach"]):
                    out[k] = {"method": p, "lr": lr, "reach": float(np.mean(reach)), "std": float(np.std(reach)),
                              "n": len(reach)}
    return out


def _ratio(reach: dict, base: float | None) -> float | None:
    if reach["mean"] is None or not base or reach["n"] < reach["of"]:
        return None
    return reach["mean"] / base


def _ratio_se(reach: dict, base: dict | None) -> float | None:
    """The standard error of ``reach / base`` (two means over independent seeds), by the delta
    method with each side's sample standard deviation: what a ratio's seeds leave uncertain, so a
    difference inside it is not read as a win. ``base`` without a spread is exact (GRPO's budget)."""
    ratio = _ratio(reach, base["reach"] if base else None)
    if ratio is None:
        return None
    rel2 = 0.0
    for side in (reach, {"mean": base["reach"], "std": base.get("std", 0.0), "n": base.get("n", 1)}):
        n = side["n"]
        sample_var = side["std"] ** 2 * n / (n - 1) if n > 1 else 0.0
        rel2 += sample_var / n / side["mean"] ** 2
    return ratio * rel2 ** 0.5


def report(rates: dict, summary: dict, profile: str = "sd35m") -> str:
    taesd = f"{profile}+taesd"
    seeds = next(iter(summary.values()), {}).get("seeds", list(FINAL_SEEDS))
    lines = [f"Each method at its best stable rate (seeds 11–12 chose it from the task's grid: {_grids(rates)}); "
             f"seeds {_seed_list(seeds)}. \"Reaches\": the compute at which a seed's curve reaches GRPO's final "
             f"for good (mean ± std over the seeds that do, n/{len(seeds)}), as the built-in model counts it and priced as "
             f"{PROFILES[profile].name}, with the pruning previews decoded by its VAE or by TAESD. \"Of best "
             f"peer\": the ratio of the two means ± its standard error over the seeds (a difference inside "
             f"it is not a win).", ""]
    for task, s in summary.items():
        bp = s["best_peer"]["units"]
        best = f"; best peer {bp['method']} at {bp['lr']:g}, {bp['reach'] / 1e3:.0f}k" if bp else "; no peer reaches it"
        name, budget = TASKS[task]
        lines += [f"### {task} ({name}, {budget:,.0f} units; GRPO's final {s['target']:.3f}{best})", "",
                  "| method | lr | final | reaches GRPO's final (units) | of GRPO | of best peer | "
                  f"{PROFILES[profile].name}: of GRPO | of best peer | TAESD previews: of GRPO | of best peer |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for m, row in s["methods"].items():
            r, f = row["reach"]["units"], row["final"]
            reach = f"{r['mean'] / 1e3:.0f}k ± {r['std'] / 1e3:.0f}k ({r['n']}/{r['of']})" if r["mean"] else "never"
            edge = " (edge)" if rates[task]["methods"][m]["at_edge"] else ""
            peer = {k: _pct(row["of_best_peer"][k], row["of_best_peer_se"][k]) for k in ("units", profile, taesd)}
            lines.append(f"| {m} | {row['lr']:g}{edge} | {f['mean']:.3f} ± {f['std']:.3f} | {reach} | "
                         f"{_pct(row['of_grpo']['units'])} | {peer['units']} | "
                         f"{_pct(row['of_grpo'][profile])} | {peer[profile]} | "
                         f"{_pct(row['of_grpo'][taesd])} | {peer[taesd]} |")
        lines += ["", _best_ours_line(s, profile, taesd)]
        if s.get("incomplete"):
            lines += ["", "Not run on every seed, so left out: " + "; ".join(
                f"{m} (seeds {_seed_list(held)})" for m, held in s["incomplete"].items()) + "."]
        lines.append("")
    lines += ["### The rate grid (final reward of seeds 11–12; * = chosen)", ""]
    for task, info in rates.items():
        lines.append(f"- **{task}**: " + "; ".join(
            f"{m}: " + ", ".join(f"{k}{'*' if float(k) == c['lr'] else ''} {v['final']:.3f}" for k, v in c["grid"].items())
            for m, c in info["methods"].items() if c["grid"]))
    lines.append("- Controls run at the rate chosen for the method they control.")
    return "\n".join(lines) + "\n"


def _best_ours_line(s: dict, profile: str, taesd: str) -> str:
    """Our fastest method and rate that the final runs hold reaching on every seed, per price — the
    rule the best peer is chosen by."""
    parts = []
    for k, what in (("units", "built-in units"), (profile, PROFILES[profile].name), (taesd, "TAESD previews")):
        o = (s.get("best_ours") or {}).get(k)
        if o is None:
            parts.append(f"{what}: none")
            continue
        reach = f"{o['reach'] / 1e3:.0f}k ± {o['std'] / 1e3:.0f}k, " if k == "units" else ""
        parts.append(f"{what}: {o['method']} at {o['lr']:g}, {reach}"
                     f"{_pct(o['of_best_peer'], o['of_best_peer_se'])} of the best peer")
    return ("Ours by the best peer's rule (the fastest of our methods at any rate the final runs hold that "
            "reaches on every seed): " + "; ".join(parts) + ".")


def _seed_list(seeds) -> str:
    """``0–4`` for a run of consecutive seeds, else ``0, 2, 5``."""
    seeds = sorted(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def parse_seeds(text: str) -> tuple[int, ...]:
    """``--seeds``: ``0-9`` or ``0,1,2`` (or both: ``0-4,7``), each seed once, in order."""
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            seeds += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: expected seeds like 0-9 or 0,1,2 (non-negative integers)") from None
    if not seeds or any(s < 0 for s in seeds) or set(seeds) & set(SWEEP_SEEDS):
        raise SystemExit(f"--seeds {text!r}: expected at least one non-negative seed, none of the sweep's "
                         f"{', '.join(map(str, SWEEP_SEEDS))} (they chose the rates), e.g. 0-9")
    return tuple(dict.fromkeys(seeds))


def _grids(rates: dict) -> str:
    """The rates each task's sweep tried (every method the same), e.g. ``flow 0.001, 0.0025``."""
    tried = {t: sorted({float(k) for c in info["methods"].values() for k in c["grid"]}) for t, info in rates.items()}
    return "; ".join(f"{t} {', '.join(f'{r:g}' for r in rs)}" for t, rs in tried.items())


def _pct(x: float | None, se: float | None = None) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.0f} %" + (f" ± {100 * se:.0f}" if se is not None else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m progrpo_core bench --peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--stage", choices=("sweep", "final", "report"), required=True)
    ap.add_argument("--out", default="bench_out/peers")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", help="only these methods (default: every method of each task)")
    ap.add_argument("--rates", help="only these rates in the sweep (default: RATES)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--evals", type=int, default=10)
    ap.add_argument("--eval-seeds", type=int, default=32)
    ap.add_argument("--seeds", default="0-4", help="the final stage's seeds and the report's (default 0-4; "
                    "e.g. 0-9 adds five seeds to the runs kept)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    log = lambda s: print(s, flush=True)  # noqa: E731
    tasks = [t for t in a.tasks.split(",") if t]
    only = set(a.methods.split(",")) if a.methods else None
    if a.stage == "sweep":
        rates = [float(r) for r in a.rates.split(",")] if a.rates else RATES
        jobs = [(spec_for(t, m, lr), seed) for t in tasks for m in methods_for(t, controls=False)
                if only is None or m in only for lr in rates for seed in SWEEP_SEEDS]
        (out / "sweep").mkdir(parents=True, exist_ok=True)
        runs = run_jobs(jobs, out / "sweep", a.evals, a.eval_seeds, a.jobs, log)
        (out / "rates.json").write_text(json.dumps(best_rates(runs), indent=1))
        return 0
    seeds = parse_seeds(a.seeds)
    rates = json.loads((out / "rates.json").read_text())
    rates = {t: {**v, "methods": {m: {**c, "lr": float(c["lr"])} for m, c in v["methods"].items()}}
             for t, v in rates.items() if t in tasks}
    if a.stage == "final":
        jobs = [(spec_for(t, m, c["lr"]), seed) for t, info in rates.items() for m, c in info["methods"].items()
                if only is None or m in only for seed in seeds]
        (out / "final").mkdir(parents=True, exist_ok=True)
        run_jobs(jobs, out / "final", a.evals, a.eval_seeds, a.jobs, log)
    path = out / "final" / "runs.jsonl"
    runs = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    summary = summarise(runs, rates, seeds)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(report(rates, summary))
    log((out / "report.md").read_text())
    return 0
