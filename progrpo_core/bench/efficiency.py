"""Implementation efficiency: does pruning save wall-clock time in proportion to the NFE it saves?

On the built-in 8×8 model a batched forward takes well under a millisecond, so Python overhead
(per-row noise generators, selection, bookkeeping) dominates and wall-clock tells little. Here the
same samplers run on a *wide* :class:`DigitsNet` (random weights; only the arithmetic matters) so
one batched forward takes tens of milliseconds, and we compare, per schedule:

* the sampling phase's wall-clock and NFE (model-row evaluations), as ratios to GRPO's;
* the share of sampling time spent decoding and scoring proxies;
* one whole epoch (sample, score, train) through the :class:`Trainer`, wall-clock against units.

Timings take the median of interleaved repeats in one thread; the machine may be shared, so the
spread is reported too, and so is the process CPU time (``time.process_time``), which other jobs on
the machine inflate far less than wall-clock.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from ..group import sample_group
from ..methods import PruneSchedule


def wide_model(hidden: int, family: str = "flow", seed: int = 0):
    from ..embedded import DigitsDenoiser
    from ..embedded.nets import DigitsNet

    torch.manual_seed(seed)
    return DigitsDenoiser(DigitsNet(hidden=hidden), family, name=f"digits-wide-{hidden}")


SCHEDULES = {
    "grpo (24)": PruneSchedule(24),
    "pro-grpo (48->24->12 @ 5,7)": PruneSchedule(48, (5, 7), (24, 12)),
    "pro-grpo-flash (24->16->12 @ 5,7)": PruneSchedule(24, (5, 7), (16, 12)),
    "pro-grpo-late (48->24->12 @ 6,8)": PruneSchedule(48, (6, 8), (24, 12)),
}


def _sampling_times(model, reward, prompts: int, steps: int, repeats: int) -> dict[str, Any]:
    names = [model.default_prompts[i % 10] for i in range(prompts)]

    def score(images, rows):
        return reward.evaluate(images, rows)[reward.total_key]

    rec: dict[str, dict[str, list[float]]] = {k: {"sampling": [], "proxy": [], "total": [], "cpu": []}
                                              for k in SCHEDULES}
    nfe: dict[str, int] = {}
    for r in range(repeats):
        order = list(SCHEDULES) if r % 2 == 0 else list(reversed(SCHEDULES))
        for name in order:
            c0 = time.process_time()
            ro = sample_group(model, names, list(range(prompts)), steps, SCHEDULES[name], "flow_sde", 0.7,
                              score_fn=score)
            rec[name]["cpu"].append(time.process_time() - c0)
            w = ro.compute.wall
            rec[name]["sampling"].append(w.get("sampling", 0.0))
            rec[name]["proxy"].append(w.get("proxy", 0.0))
            rec[name]["total"].append(w.get("sampling", 0.0) + w.get("proxy", 0.0))
            nfe[name] = ro.compute.nfe_sample
    base = next(iter(SCHEDULES))
    out = {}
    for name in SCHEDULES:
        med = {k: statistics.median(v) for k, v in rec[name].items()}
        spread = {k: (max(v) - min(v)) / statistics.median(v) if statistics.median(v) > 0 else 0.0
                  for k, v in rec[name].items()}
        out[name] = {"nfe": nfe[name], "wall_sampling_s": med["sampling"], "wall_proxy_s": med["proxy"],
                     "wall_total_s": med["total"], "cpu_s": med["cpu"], "relative_spread": spread,
                     "proxy_share": med["proxy"] / med["total"] if med["total"] else 0.0}
    for o in out.values():
        o["wall_total_ratio"] = o["wall_total_s"] / out[base]["wall_total_s"]
    return _ratios(out, base, "nfe", "wall_sampling_s")


def _forward_ms(model, rows: int, repeats: int = 5) -> float:
    x = torch.randn(rows, *model.latent_shape)
    sig = torch.full((rows,), 0.5)
    cond = model.encode_prompts([model.default_prompts[0]] * rows)
    ts = []
    with torch.no_grad():
        model.denoise(x, sig, cond)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.denoise(x, sig, cond)
            ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def _epoch_times(model_fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """One Trainer epoch (sample, score, train) per method on a fresh wide model."""
    from ..config import build_config
    from ..training import Trainer
    from .runs import default_flop_costs, preset_table

    tables = {name: preset_table(name, 10) for name in ("grpo", "pro-grpo", "pro-grpo-flash")}
    out: dict[str, Any] = {}
    walls: dict[str, list[float]] = {k: [] for k in tables}
    cpus: dict[str, list[float]] = {k: [] for k in tables}
    for r in range(repeats):
        for name in (tables if r % 2 == 0 else list(reversed(tables))):
            t = dict(tables[name])
            t["run"] = {"eval_seeds": 1, "epochs": 1}
            tr = Trainer.build(build_config(t), model=model_fn(), log=lambda s: None)
            kw = default_flop_costs(tr.model, tr.reward).unit_kw()
            c0 = time.process_time()
            for _ in tr.epochs():  # one epoch of the trainer's loop
                pass
            cpus[name].append(time.process_time() - c0)
            w = tr.compute.wall
            walls[name].append(sum(w.get(k, 0.0) for k in ("sampling", "proxy", "final_scoring", "training")))
            out[name] = {"units": tr.compute.units(**kw), "phases_s": dict(w)}
    for name in tables:
        out[name]["wall_s"] = statistics.median(walls[name])
        out[name]["cpu_s"] = statistics.median(cpus[name])
    return _ratios(out, "grpo", "units", "wall_s")


def _ratios(out: dict[str, dict], base: str, work: str, wall: str) -> dict[str, dict]:
    """Each method's ``work`` (NFE or compute units), wall-clock and CPU time as ratios to ``base``'s,
    and time per work against the base's (``wall_vs_<work>``, ``cpu_vs_<work>``)."""
    b = out[base]
    for o in out.values():
        o[f"{work}_ratio"] = o[work] / b[work]
        o["wall_ratio"] = o[wall] / b[wall]
        o[f"wall_vs_{work}"] = o["wall_ratio"] / o[f"{work}_ratio"]
        o["cpu_ratio"] = o["cpu_s"] / b["cpu_s"]
        o[f"cpu_vs_{work}"] = o["cpu_ratio"] / o[f"{work}_ratio"]
    return out


def measure_efficiency(hidden: int = 1024, repeats: int = 5, prompts: int = 8, steps: int = 10,
                       epoch_repeats: int = 2, log: Callable[[str], None] = print) -> dict[str, Any]:
    from ..embedded import load_digits_model
    from ..rewards import build_reward

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reward = build_reward("digit")
        t0 = time.perf_counter()
        wide = wide_model(hidden)
        small = load_digits_model("digits-flow")
        result = {
            "hidden": hidden, "prompts": prompts, "steps": steps, "threads": 1, "repeats": repeats,
            "forward_ms_384_rows": {"wide": _forward_ms(wide, 384), "builtin": _forward_ms(small, 384)},
            "sampling_wide": _sampling_times(wide, reward, prompts, steps, repeats),
            "sampling_builtin": _sampling_times(small, reward, prompts, steps, repeats),
        }
        log(f"efficiency: sampling timed in {time.perf_counter() - t0:.0f}s")
        t0 = time.perf_counter()
        result["epoch_wide"] = _epoch_times(lambda: wide_model(hidden), epoch_repeats)
        log(f"efficiency: epochs timed in {time.perf_counter() - t0:.0f}s")
        return result
    finally:
        torch.set_num_threads(threads)
