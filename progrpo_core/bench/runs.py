"""Budgeted training runs for the bench: every method gets the same prompts, seeds and compute.

A run trains one method on one built-in model with one seed until it has spent ``budget`` compute
units (model-evaluation equivalents, :meth:`Compute.units`), evaluating the held-out reward
(deterministic sampling, fixed prompts and seeds: ``Trainer.evaluate``) at compute milestones.
An epoch is never cut short: the run stops before the epoch that would cross the budget, so no
method spends more than the budget.

Methods are :class:`MethodSpec` values: a name, the model, and the config table handed to
``config.build_config``. Checkpoints are written in the paper's convention — "prune after ``c`` of
the ``T`` steps" — and converted here to the core's step index ``c − 1`` (``sample_group`` scores
the x0 of model call ``i+1`` at step index ``i``), so a funnel ``G → K1 → K2`` at ``c1, c2`` costs
exactly ``G·c1 + K1·(c2−c1) + K2·(T−c2)`` sampling evaluations per prompt, the paper's count.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable

import numpy as np
import torch

from ..compute import FlopCosts
from ..methods import METHODS

ProgressFn = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One benchmarked configuration."""

    name: str                       # label in tables and plots
    model: str                      # digits-flow or digits-eps
    table: dict                     # config.build_config sections (grpo, schedule, sampler, reward …)
    group: str = "main"             # main, eps, ablation-gmax, ablation-ckpt, gold
    note: str = ""                  # one line for the docs
    auto: dict | None = None        # choose checkpoints from fidelity probes: auto.choose_schedule
                                    # options, plus "reprobe": budget fractions at which to re-probe

    def config_table(self, seed: int, eval_seeds: int) -> dict:
        t = copy.deepcopy(self.table)
        t.setdefault("model", {})["name"] = self.model
        run = t.setdefault("run", {})
        run.update({"seed": seed, "eval_seeds": eval_seeds, "eval_every": 0, "save_every": 0,
                    "epochs": 1_000_000})
        return t


def paper_checkpoints(steps: int, fractions: tuple[float, ...]) -> list[int]:
    """Core step indices for "prune after round(f·T) steps" (the paper's convention)."""
    return [max(1, round(f * steps)) for f in fractions]


def preset_table(method: str, steps: int, family: str = "flow", **sections: dict) -> dict:
    """The config table of a ``--method`` preset (``methods.METHODS``) at ``steps`` for a ``family``
    model, its schedule spelled out, with ``sections`` merged on top."""
    sched = METHODS[method].schedule(steps, family=family)
    schedule = {"group_size": sched.group_size, "checkpoints": list(sched.checkpoints), "keep": list(sched.keep)}
    if sched.final_keep is not None:
        schedule["final_keep"] = sched.final_keep
    t = {"grpo": {"method": method}, "sampler": {"steps": steps}, "schedule": schedule}
    for k, v in sections.items():
        t.setdefault(k, {}).update(v)
    return t


def pro_table(steps: int, group: int, keep: tuple[int, ...], fractions: tuple[float, ...],
              selector: str = "ovf", **sections: dict) -> dict:
    t = {"grpo": {"method": "pro-grpo"}, "sampler": {"steps": steps},
         "schedule": {"group_size": group, "keep": list(keep), "checkpoints": paper_checkpoints(steps, fractions),
                      "selector": selector}}
    for k, v in sections.items():
        t.setdefault(k, {}).update(v)
    return t


def default_flop_costs(model, reward, backward_weight: float = 2.0) -> FlopCosts:
    """FLOPs of one denoiser row and one reward call on this model, counted by torch's FlopCounterMode."""
    from ..compute import count_flops

    x = torch.zeros(4, *model.latent_shape)
    sigma = model.sigmas(10)[3].expand(4)
    prompts = list(getattr(model, "default_prompts", ["a prompt"]))[:1] * 4
    cond = model.encode_prompts(prompts)
    fwd = count_flops(lambda: model.denoise(x, sigma, cond)) / 4
    dec = count_flops(lambda: model.decode(x)) / 4
    images = model.decode(x)
    rew = count_flops(lambda: reward.evaluate(images, prompts)) / 4
    return FlopCosts(model_fwd=fwd, decode=dec, reward=rew, backward_weight=backward_weight)


def run_method(spec: MethodSpec, seed: int, budget: float, n_evals: int = 10, eval_seeds: int = 32,
               probe_at: tuple[float, ...] = (), probe_kw: dict | None = None,
               progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train ``spec`` with ``seed`` until the next epoch would exceed ``budget`` units.

    Returns the eval curve (reward, gold, units, wall-clock and process CPU time of the training
    phases — sampling, scoring, updates; not evaluation or probes), the run's
    exact compute counts, per-epoch clustering metrics, and — at the fractions ``probe_at`` of the
    budget — fidelity probes of the live policy (``probe.record_probe``)."""
    from ..config import build_config
    from ..training import Trainer

    run = _BudgetedRun(spec, seed, budget, n_evals, probe_at, probe_kw or {}, progress,
                       Trainer.build(build_config(spec.config_table(seed, eval_seeds)), log=lambda s: None))
    return run.go()


class _BudgetedRun:
    """One budgeted run: drives the trainer's loop (``Trainer.epochs``) and, between its epochs,
    decides whether the next epoch fits the budget, re-probes an automatic schedule, probes fidelity
    and evaluates at compute milestones."""

    def __init__(self, spec, seed, budget, n_evals, probe_at, probe_kw, progress, tr):
        self.spec, self.seed, self.budget, self.n_evals = spec, seed, budget, n_evals
        self.probe_kw, self.progress, self.tr = probe_kw, progress, tr
        self.costs = default_flop_costs(tr.model, tr.reward)
        self.unit_kw = self.costs.unit_kw()
        self.auto_log: list[dict] = []
        self.reprobe = sorted((spec.auto or {}).get("reprobe", (0.0,))) if spec.auto is not None else []
        self.probe_left = sorted(probe_at)
        # Process CPU time (one thread per run) is what other jobs on a shared machine inflate least;
        # wall-clock of runs executed at different times is not comparable there.
        self.cpu = {"sampling": 0.0, "training": 0.0}
        self.probes: list[dict] = []
        self.epochs: list[dict] = []
        self.t_run = time.perf_counter()

    def spent(self) -> float:
        return self.tr.compute.units(**self.unit_kw)

    def wall(self) -> float:
        w = self.tr.compute.wall
        return sum(w.get(k, 0.0) for k in ("sampling", "proxy", "final_scoring", "training"))

    def eval_point(self, epoch: int) -> dict:
        from .profiles import counts_of

        ev = self.tr.evaluate()
        return {"epoch": epoch, "units": self.spent(), "wall": self.wall(), "cpu": sum(self.cpu.values()),
                "reward": ev["reward"], "gold": ev.get("gold"), "counts": counts_of(self.tr.compute)}

    def auto_step(self, spent: float) -> None:
        from .auto import choose_schedule

        opts = {k: v for k, v in self.spec.auto.items() if k != "reprobe"}
        c0 = time.process_time()
        info = choose_schedule(self.tr, seed=self.seed, tag=len(self.auto_log), **opts)
        probe_cpu = time.process_time() - c0
        self.tr.adopt_schedule(info["schedule"], info["compute"])  # the probe is paid from the budget
        self.cpu["sampling"] += probe_cpu  # probes cost time as well as compute
        self.auto_log.append({"units": spent, "checkpoints": list(info["schedule"].checkpoints),
                              "choice": info["choice"], "probe_units": info["compute"].units(**self.unit_kw),
                              "probe_cpu": probe_cpu, "table": info["table"],
                              "fidelity": [round(f["rho_mean"], 4) if f["rho_mean"] is not None else None
                                           for f in info["fidelity"]]})

    def between_epochs(self, epoch_units: float | None, epoch: int) -> bool:
        """Re-probe and probe as due; False when the next epoch would cross the budget."""
        spent = self.spent()
        due = bool(self.reprobe) and spent >= self.reprobe[0] * self.budget
        next_cost = (epoch_units or 0.0) + (self.auto_log[-1]["probe_units"] if due and self.auto_log else 0.0)
        if epoch_units is not None and spent + next_cost > self.budget * (1 + 1e-9):
            return False
        if due:
            while self.reprobe and spent >= self.reprobe[0] * self.budget:
                self.reprobe.pop(0)
            self.auto_step(spent)
            spent = self.spent()
        if self.probe_left and spent >= self.probe_left[0] * self.budget:
            self.probe_left.pop(0)
            self.probes.append(_probe_live(self.tr, spent, epoch, **self.probe_kw))
        return True

    def go(self) -> dict[str, Any]:
        tr, budget, n_evals = self.tr, self.budget, self.n_evals
        curve = [self.eval_point(0)]
        next_eval = 1  # evaluate once spent >= budget·next_eval/n_evals
        epoch_units, epoch = None, 0
        loop = tr.epochs()
        while self.between_epochs(epoch_units, epoch):
            before = self.spent()
            record = next(loop)
            for phase in ("sampling", "training"):
                self.cpu[phase] += record.cpu_s[phase]
            epoch, spent = record.epoch, self.spent()
            epoch_units = spent - before
            m = record.sample
            self.epochs.append({"epoch": epoch, "units": spent, "reward_mean": m.reward_mean,
                                "clustered_trained": m.clustered_trained, "clustered_finished": m.clustered_finished,
                                "clustered_expanded": m.clustered_expanded, "reward_std": m.reward_std,
                                "proxy_std": m.proxy[0]["std"] if m.proxy else None,
                                "lr": tr.learner.optimizer.param_groups[0]["lr"]})
            if spent >= budget * next_eval / n_evals - 1e-9:
                curve.append(self.eval_point(epoch))
                while next_eval <= n_evals and spent >= budget * next_eval / n_evals - 1e-9:
                    next_eval += 1
            if self.progress is not None and epoch % 20 == 0:
                self.progress(f"{self.spec.name} seed {self.seed}: epoch {epoch}, {spent / budget:.0%} of budget, "
                              f"eval {curve[-1]['reward']:.3f}")
        loop.close()
        if curve[-1]["epoch"] != epoch:
            curve.append(self.eval_point(epoch))
        if self.probe_left:  # fractions the stopped run never reached (e.g. 1.0): probe the final policy
            self.probes.append(_probe_live(tr, self.spent(), epoch, **self.probe_kw))
        tr.close()
        return self.result(curve, epoch, epoch_units)

    def result(self, curve: list[dict], epoch: int, epoch_units: float | None) -> dict[str, Any]:
        tr, spec, comp = self.tr, self.spec, self.tr.compute
        return {
            "method": spec.name, "model": spec.model, "seed": self.seed, "budget": self.budget,
            "schedule": dataclasses.asdict(tr.schedule), "epochs": epoch, "optimizer_steps": tr.optimizer_steps,
            "curve": curve, "final": curve[-1], "units": comp.units(**self.unit_kw), "epoch_units": epoch_units,
            "compute": comp.as_dict(), "cpu_s": dict(self.cpu), "flops": comp.flops(self.costs),
            "flop_costs": dataclasses.asdict(self.costs), "epoch_metrics": self.epochs, "probes": self.probes,
            "auto": self.auto_log or None, "run_wall_s": time.perf_counter() - self.t_run,
        }


def _probe_live(tr, spent: float, epoch: int, prompts: int = 10, group: int = 48, seeds_base: int = 500_000,
                lookahead: int = 2) -> dict:
    """A fidelity probe of the policy being trained (live weights, the sampling policy); not charged
    to the run's compute, it is a measurement."""
    from . import probe as P

    names = list(tr.prompts)[:prompts] if len(tr.prompts) >= prompts else list(tr.prompts) * (prompts // len(tr.prompts) + 1)
    names = names[:prompts]
    seeds = [seeds_base + 1000 * tr.cfg.run.seed + epoch * 97 + i for i in range(prompts)]
    s = tr.sampler
    pr = P.record_probe(tr.model, tr.reward, names, seeds, s.steps, group, s.sampler, s.noise_level, s.cfg,
                        lookahead=lookahead)
    return {"units": spent, "epoch": epoch, "fidelity": P.fidelity(pr),
            "fidelity_lookahead": P.fidelity(pr, "lookahead") if lookahead else None, "probe": pr}


def interp_curve(curve: list[dict], grid: np.ndarray, key: str = "units", value: str = "reward") -> np.ndarray:
    """The curve's ``value`` at ``grid`` points of ``key`` (linear; NaN beyond the last point)."""
    xs = np.array([p[key] for p in curve], dtype=float)
    ys = np.array([np.nan if p[value] is None else p[value] for p in curve], dtype=float)
    out = np.interp(grid, xs, ys)
    out[grid > xs[-1] + 1e-9] = np.nan
    return out


def compute_to_reach(curve: list[dict], target: float, key: str = "units") -> float | None:
    """First ``key`` (compute or wall) at which the eval curve reaches ``target``, linearly
    interpolated between eval points; None if it never does."""
    prev = None
    for p in curve:
        if p["reward"] >= target:
            if prev is None:
                return float(p[key])
            x0, y0, x1, y1 = prev[key], prev["reward"], p[key], p["reward"]
            return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0)) if y1 != y0 else float(x1)
        prev = p
    return None


def mean_std(values: list[float | None]) -> dict:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v)) if v else None,
            "n": len(v), "of": len(values)}
