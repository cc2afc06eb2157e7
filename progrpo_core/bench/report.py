"""Tables, plots and the results file of ``python -m progrpo_core bench``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..io import save_figure, write_text

MAIN_ORDER = ("grpo", "ovf", "pro-grpo", "pro-grpo-flash", "pro-grpo-random", "pro-grpo-auto", "pro-grpo-flash-hybrid",
              "pro-grpo-hybrid")
PANELS = {
    "flow: paper methods and ours": ("main", None),
    "eps: DanceGRPO-style": ("eps", None),
    "flow: ablations (G_max, checkpoints)": ("ablation", ("grpo", "pro-grpo", "pro-grpo-flash")),
    "flow, trained on stroke": ("gold", None),
    "two digits, flow": ("pair", None),
    "two digits, eps": ("pair-eps", None),
}


def _saved(fig, path: Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` and close it."""
    fig.tight_layout()
    out = save_figure(fig, path)
    _plt().close(fig)
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if not math.isfinite(v) else v
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    return obj


def write_json(results: dict, path: Path) -> Path:
    return write_text(path, json.dumps(_clean(results), indent=1, sort_keys=False) + "\n")


def _fmt(ms: dict | None, digits: int = 3) -> str:
    if not ms or ms.get("mean") is None:
        return "—"
    s = f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"
    if ms.get("of") and ms["n"] != ms["of"]:
        s += f" ({ms['n']}/{ms['of']})"
    return s


def _k(x: float | None) -> str:
    return "never" if x is None else f"{x / 1000:.0f}k"


def _panel_runs(runs: list[dict], methods: dict, group: str, extra) -> dict[str, list[dict]]:
    names = [n for n, m in methods.items() if m["group"] == group] + list(extra or ())
    return {n: sorted([r for r in runs if r["method"] == n], key=lambda r: r["seed"]) for n in dict.fromkeys(names)}


def _band(ax, rs: list[dict], key: str, value: str, label: str, **kw) -> None:
    n = min(len(r["curve"]) for r in rs)
    xs = np.mean([[r["curve"][i][key] for i in range(n)] for r in rs], axis=0)
    if key == "units":
        xs = xs / 1000
    ys = np.array([[np.nan if r["curve"][i][value] is None else r["curve"][i][value] for i in range(n)] for r in rs])
    m, s = np.nanmean(ys, axis=0), np.nanstd(ys, axis=0)
    line, = ax.plot(xs, m, marker="o", ms=3, label=label, **kw)
    ax.fill_between(xs, m - s, m + s, color=line.get_color(), alpha=0.15)


def plot_curves(runs: list[dict], methods: dict, path: Path, key: str = "units", value: str = "reward") -> Path | None:
    plt = _plt()
    panels = [(t, g, e) for t, (g, e) in PANELS.items() if any(m["group"] == g for m in methods.values())]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
    for ax, (title, group, extra) in zip(axes[0], panels):
        for name, rs in _panel_runs(runs, methods, group, extra).items():
            if rs:
                style = {"ls": "--"} if name == methods.get(name, {}).get("baseline") or name.startswith("grpo") else {}
                _band(ax, rs, key, value, name, **style)
        ax.set_xlabel({"units": "compute (thousand model-row evaluations)",
                       "wall": "wall-clock of the training phases (s; shared machine)",
                       "cpu": "CPU time of the training phases (s, 1 thread)"}[key])
        ax.set_ylabel("eval reward (held-out, deterministic)" if value == "reward" else "gold reward (not trained on)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _saved(fig, path)


def plot_clustering(hist: dict | None, runs: list[dict], methods: dict, path: Path) -> Path | None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if hist:
        bins = np.linspace(-3.5, 3.5, 29)
        for (label, adv), color in zip(hist["advantages"].items(), ("lightgray", "tab:blue", "tab:orange")):
            a = np.asarray(adv)
            frac = float((np.abs(a) <= 0.5).mean())
            ax.hist(a, bins=bins, density=True, histtype="stepfilled" if color == "lightgray" else "step",
                    lw=1.5, color=color, label=f"{label}: |A|≤0.5 = {frac:.0%}")
        ax.axvspan(-0.5, 0.5, color="k", alpha=0.06)
        ax.set_title(f"advantages before / after selection\n{hist['label']}", fontsize=8)
        ax.set_xlabel("GRPO advantage A")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    ax = axes[1]
    for name in MAIN_ORDER:
        rs = [r for r in runs if r["method"] == name]
        if not rs:
            continue
        n = min(len(r["clustered_trained_by_epoch"]) for r in rs)
        xs = np.array([p[0] for p in rs[0]["clustered_trained_by_epoch"][:n]]) / 1000
        ys = np.mean([[p[1] for p in r["clustered_trained_by_epoch"][:n]] for r in rs], axis=0)
        k = max(1, n // 25)
        ys = np.convolve(ys, np.ones(k) / k, mode="same") if n > k else ys
        ax.plot(xs, ys, label=name)
    ax.set_xlabel("compute (thousand units)")
    ax.set_ylabel("clustered fraction |A| ≤ 0.5 of trained rows")
    ax.set_title("reward clustering of the trained trajectories during training", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _saved(fig, path)


def plot_fidelity(fidelity: dict, path: Path, lookahead: dict | None = None) -> Path | None:
    """Left: the one-step proxy on the base models and on the GRPO policy as it trains. Right: the
    Pro-GRPO policy as it trains, and the 2-step lookahead proxy against the one-step one."""
    if not fidelity:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)

    def draw(ax, label, rows, **kw):
        pts = [(r["calls"] / len(rows), r["rho_mean"], r["rho_std"]) for r in rows if r["rho_mean"] is not None]
        xs, ys, ss = (np.array(v) for v in zip(*pts))
        line, = ax.plot(xs, ys, marker="o", ms=3, label=label, **kw)
        ax.fill_between(xs, ys - ss, ys + ss, color=line.get_color(), alpha=0.08)

    left = {k: v for k, v in fidelity.items() if "pro-grpo policy" not in k and ", 0% of budget" not in k}
    right = {k: v for k, v in fidelity.items() if "pro-grpo policy" in k and ", 0% of budget" not in k}
    for label, rows in left.items():
        draw(axes[0], label, rows, ls="--" if "eps" in label else "-")
    for label, rows in right.items():
        draw(axes[1], label, rows)
    for label, rows in (lookahead or {}).items():
        if label.startswith("digits-flow (base)") or ("grpo policy" in label and "100%" in label):
            draw(axes[1], f"{label}: 2-step lookahead", rows, ls=":")
            draw(axes[1], f"{label}: one-step", fidelity[label], ls="-", alpha=0.5)
    for ax, title in zip(axes, ("one-step x0 proxy: base models and the GRPO policy during training",
                                "Pro-GRPO policy during training; lookahead vs one-step proxy")):
        for f in (0.5, 0.7):
            ax.axvline(f, color="k", lw=0.8, ls=":")
        ax.set_xlabel("fraction of the T = 10 steps done when the proxy is scored (paper: 0.5, 0.7)")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-0.1, 1.02)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
    axes[0].set_ylabel("within-group Spearman ρ(proxy, final reward)")
    return _saved(fig, path)


def plot_efficiency(eff: dict | None, path: Path) -> Path | None:
    if not eff:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for key, marker, label in (("sampling_wide", "o", f"wide net (hidden {eff['hidden']})"),
                               ("sampling_builtin", "x", "built-in net (hidden 192)")):
        for name, o in eff[key].items():
            ax.scatter(o["nfe_ratio"], o["wall_ratio"], marker=marker, label=f"{label}: {name}", s=30)
    for name, o in eff.get("epoch_wide", {}).items():
        ax.scatter(o["units_ratio"], o["wall_ratio"], marker="s", s=30, label=f"whole epoch, wide: {name}")
    lim = [0.3, 1.7]
    ax.plot(lim, lim, "k--", lw=1)
    ax.fill_between(lim, [v * 0.9 for v in lim], [v * 1.1 for v in lim], color="k", alpha=0.06)
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("NFE (compute) ratio to grpo")
    ax.set_ylabel("wall-clock ratio to grpo")
    ax.set_title("does pruning save time? (band: ±10 %)", fontsize=10)
    ax.legend(fontsize=5)
    ax.grid(alpha=0.3)
    return _saved(fig, path)


def plot_ablations(methods: dict, path: Path) -> Path | None:
    groups = {
        "G_max": [("24 (flash)", "pro-grpo-flash"), ("48", "pro-grpo"), ("64", "pro-grpo-g64")],
        "checkpoints": [("20/40 %", "pro-grpo-early"), ("40/60 %", "pro-grpo-middle"), ("50/70 %", "pro-grpo"),
                        ("60/80 %", "pro-grpo-late"), ("auto", "pro-grpo-auto")],
    }
    if not any(n in methods for g in groups.values() for _, n in g if n not in ("pro-grpo", "pro-grpo-flash")):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (title, items) in zip(axes, groups.items()):
        items = [(lab, n) for lab, n in items if n in methods]
        ms = [methods[n]["final_eval"]["mean"] for _, n in items]
        ss = [methods[n]["final_eval"]["std"] for _, n in items]
        ax.bar(range(len(items)), ms, yerr=ss, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(items)), [lab for lab, _ in items], fontsize=8)
        if "grpo" in methods:
            ax.axhline(methods["grpo"]["final_eval"]["mean"], color="k", ls="--", lw=1, label="grpo at the same budget")
            ax.legend(fontsize=7)
        lo = min(ms + [methods.get("grpo", {}).get("final_eval", {}).get("mean", 1.0)]) - 0.1
        ax.set_ylim(max(0.0, lo), 1.0)
        ax.set_ylabel("final eval reward (mean ± std)")
        ax.set_title(f"ablation: {title}", fontsize=10)
    return _saved(fig, path)


def write_plots(results: dict, runs: list[dict], hist: dict | None, out: Path,
                keep_existing: bool = False) -> list[Path]:
    """Every plot; with ``keep_existing``, a plot whose data is missing (an older results.json
    without the clustering histogram) leaves the existing PNG alone."""
    methods = results["methods"]
    compact = results["runs"]
    skip_clustering = keep_existing and hist is None and (out / "clustering.png").exists()
    paths = [
        plot_curves(compact, methods, out / "reward_vs_compute.png"),
        plot_curves(compact, methods, out / "reward_vs_wall.png", key="wall"),
        plot_curves(compact, methods, out / "reward_vs_cpu.png", key="cpu"),
        plot_curves(compact, methods, out / "gold_vs_compute.png", value="gold"),
        None if skip_clustering else plot_clustering(hist, compact, methods, out / "clustering.png"),
        plot_fidelity(results["fidelity"], out / "proxy_fidelity.png", results.get("fidelity_lookahead")),
        plot_efficiency(results["efficiency"], out / "efficiency.png"),
        plot_ablations(methods, out / "ablations.png"),
    ]
    return [p for p in paths if p is not None]


# -- markdown ---------------------------------------------------------------------------------------

def _sched(s: dict) -> str:
    funnel = " → ".join(str(x) for x in [s["group_size"], *s["keep"]])
    cps = ",".join(str(c) for c in s["checkpoints"])
    txt = funnel + (f" @ {cps}" if cps else "")
    if s.get("final_keep"):
        txt += f" → ovf {s['final_keep']}"
    if s.get("selector", "ovf") != "ovf":
        txt += f" ({s['selector']})"
    return txt


def results_table(methods: dict) -> str:
    lines = ["| method | model | funnel @ prune after step | final eval reward | gold | compute spent | "
             "to reach baseline final (seed-mean curve) | per seed | epochs to reach (units / epoch) | "
             "eval at equal compute (method / baseline) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        ratio = m.get("compute_to_baseline_ratio")
        reach = _k(m.get("compute_to_baseline")) + (f" ({ratio:.0%} of baseline)" if ratio is not None else "")
        eq = m.get("eval_at_equal_compute")
        eqs = f"{eq['method']:.3f} / {eq['baseline']:.3f}" if eq else "—"
        per = m.get("compute_to_baseline_per_seed")
        pers = "—" if not per or per["mean"] is None else f"{per['mean'] / 1000:.0f}k ± {per['std'] / 1000:.0f}k ({per['n']}/{per['of']})"
        ep = m.get("epochs_to_baseline")
        eps = f"{'never' if ep is None else f'{ep:.1f}'} ({m['epoch_units']['mean']:.0f})"
        lines.append(f"| {name} | {m['model']} | {_sched(m['schedule'])} | {_fmt(m['final_eval'])} | "
                     f"{_fmt(m['final_gold'])} | {_k(m['total_compute']['mean'])} | {reach} | {pers} | {eps} | {eqs} |")
    return "\n".join(lines)


def flops_table(methods: dict) -> str:
    lines = ["| method | sampling | train fwd | train bwd | decodes | rewards | total / epoch | vs baseline | units / epoch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        f = m["flops_per_epoch"]
        base = methods.get(m.get("baseline") or "", {}).get("flops_per_epoch")
        vs = f"{f['total'] / base['total'] - 1:+.0%}" if base else "—"
        g = lambda v: f"{v / 1e9:.2f}"  # noqa: E731
        lines.append(f"| {name} | {g(f['sampling'])} | {g(f['train_fwd'])} | {g(f['train_bwd'])} | {g(f['decode'])} | "
                     f"{g(f['reward'])} | {g(f['total'])} | {vs} | {m['epoch_units']['mean']:.0f} |")
    return "\n".join(lines)


def paper_table(p: dict) -> str:
    lines = ["| setting | sampling | train fwd | train bwd | decodes | rewards | total (T per prompt) | ratio (ours) | "
             "paper T / epoch | ratio (paper) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in p["rows"].items():
        t = r["tflops_per_prompt"]
        lines.append(f"| {name} | {t['sampling']:.0f} | {t['train_fwd']:.0f} | {t['train_bwd']:.0f} | {t['decode']:.0f} | "
                     f"{t['reward']:.0f} | {t['total']:.0f} | {r['ratio_ours']:.3f} ({r['ratio_ours'] - 1:+.0%}) | "
                     f"{r['paper_tflops_per_epoch']:,} | {r['ratio_paper']:.3f} ({r['ratio_paper'] - 1:+.0%}) |")
    return "\n".join(lines)


def fidelity_table(fidelity: dict) -> str:
    if not fidelity:
        return "(not measured)"
    labels = list(fidelity)
    T = max(len(v) for v in fidelity.values())
    lines = ["| after step (of 10) | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for i in range(T):
        cells = []
        for lab in labels:
            rows = fidelity[lab]
            r = rows[i] if i < len(rows) else None
            cells.append("—" if r is None or r["rho_mean"] is None else f"{r['rho_mean']:.2f} ± {r['rho_std']:.2f}")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def selection_table(selection: dict, labels: list[str] | None = None) -> str:
    if not selection:
        return "(not measured)"
    labels = labels or list(selection)
    rules = list(next(iter(selection.values())))
    head = "| rule (sampling NFE / prompt) | " + " | ".join(labels) + " |"
    lines = [head, "|---|" + "---|" * len(labels)]
    for rule in rules:
        nfe = selection[labels[0]][rule]["nfe_per_prompt"]
        cells = [f"{selection[lab][rule]['std']:.3f} / {selection[lab][rule]['clustered']:.0%}" for lab in labels]
        lines.append(f"| {rule} ({nfe}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def efficiency_table(eff: dict | None) -> str:
    if not eff:
        return "(not measured)"
    lines = [f"One batched forward of 384 rows: wide net {eff['forward_ms_384_rows']['wide']:.1f} ms, built-in net "
             f"{eff['forward_ms_384_rows']['builtin']:.2f} ms (1 thread).", "",
             "| model | schedule | NFE | NFE ratio | sampling wall (s) | wall ratio | wall/NFE ratio | CPU ratio | "
             "CPU/NFE ratio | proxy share of sampling | repeat spread |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, lab in (("sampling_wide", f"wide ({eff['hidden']})"), ("sampling_builtin", "built-in (192)")):
        for name, o in eff[key].items():
            lines.append(f"| {lab} | {name} | {o['nfe']} | {o['nfe_ratio']:.3f} | {o['wall_sampling_s']:.3f} | "
                         f"{o['wall_ratio']:.3f} | {o['wall_vs_nfe']:.3f} | {o['cpu_ratio']:.3f} | {o['cpu_vs_nfe']:.3f} | "
                         f"{o['proxy_share']:.1%} | {o['relative_spread']['sampling']:.0%} |")
    if eff.get("epoch_wide"):
        lines += ["", "| whole epoch, wide net | units | units ratio | wall (s) | wall ratio | wall/units | CPU ratio | CPU/units |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, o in eff["epoch_wide"].items():
            lines.append(f"| {name} | {o['units']:.0f} | {o['units_ratio']:.3f} | {o['wall_s']:.2f} | "
                         f"{o['wall_ratio']:.3f} | {o['wall_vs_units']:.3f} | {o['cpu_ratio']:.3f} | {o['cpu_vs_units']:.3f} |")
    return "\n".join(lines)


def wall_table(methods: dict) -> str:
    lines = ["| method | sampling wall s | proxy wall s | final scoring wall s | training wall s | proxy share | "
             "CPU s sampling / training | wall to baseline target | CPU to baseline target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        w, c = m["wall_phases_s"], m["cpu_phases_s"]
        r, rc = m.get("wall_to_baseline_ratio"), m.get("cpu_to_baseline_ratio")
        lines.append(f"| {name} | {w['sampling']:.1f} | {w['proxy']:.2f} | {w['final_scoring']:.2f} | {w['training']:.1f} | "
                     f"{m['proxy_share']:.1%} | {c['sampling']:.1f} / {c['training']:.1f} | "
                     f"{'—' if r is None else f'{r:.0%}'} | {'—' if rc is None else f'{rc:.0%}'} |")
    return "\n".join(lines)


def auto_table(methods: dict, runs: list[dict]) -> str:
    rs = [r for r in runs if r.get("auto")]
    if not rs:
        return "(no auto runs)"
    lines = ["| seed | probe at (units) | chosen checkpoints (prune after step) | efficiency | probe cost (units) |",
             "|---|---|---|---|---|"]
    for r in sorted(rs, key=lambda r: (r["method"], r["seed"])):
        for a in r["auto"]:
            lines.append(f"| {r['method']} s{r['seed']} | {a['units'] / 1000:.0f}k | {', '.join(str(c) for c in a['checkpoints'])} | "
                         f"{a['choice']['efficiency']:.2f} | {a['probe_units']:.0f} |")
    return "\n".join(lines)


def headline(results: dict) -> str:
    lines = []
    for name, m in results["methods"].items():
        r = m.get("compute_to_baseline_ratio")
        lines.append(f"  {name:18s} final eval {_fmt(m['final_eval'])}  to baseline: "
                     f"{_k(m.get('compute_to_baseline'))}{'' if r is None else f' ({r:.0%})'}")
    return "\n".join(lines)


def report_markdown(results: dict) -> str:
    m = results["methods"]
    mach = results["machine"]
    plan = results["plan"]
    parts = [
        "# Bench report (generated)", "",
        f"Command: `{results['command']}`  ",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['platform']}, torch {mach['torch']}, "
        f"load average at start {mach['loadavg_at_start']}  ",
        f"Plan: {plan['seeds']} seeds, budgets flow {plan['budget_flow']:.0f} / eps {plan['budget_eps']:.0f} / "
        f"gold {plan['budget_gold']:.0f} units, {plan['jobs']} parallel job(s), eval {plan['eval_seeds']} seeds × "
        "each model's eval prompts (10 digits; 16 of the 90 pairs); "
        f"bench wall {results['bench_wall_s'] / 60:.1f} min.  ",
        f"Unit: {results['unit']}.", "",
        "## Results per method", "", results_table(m), "",
        "## FLOPs per epoch (Table 4 form; GFLOPs, our digits models)", "", flops_table(m), "",
        "## The paper's Table 4 recomputed with our counting rules", "", paper_table(results["paper_flops"]), "",
        "## Proxy fidelity (within-group Spearman ρ, mean ± std over groups)", "", fidelity_table(results["fidelity"]), "",
        "## A costlier proxy: 2-step ODE lookahead (one extra model evaluation per row and checkpoint)", "",
        fidelity_table(results.get("fidelity_lookahead") or {}), "",
        "## What each selection rule keeps (final-reward std / clustered fraction |A| ≤ 0.5)", "",
        selection_table(results["selection"]), "",
        "## Auto schedule choices", "", auto_table(m, results["runs"]), "",
        "## Time per phase (mean per run; wall-clock on a shared machine, and process CPU time)", "", wall_table(m), "",
        "## Implementation efficiency", "", efficiency_table(results["efficiency"]), "",
    ]
    return "\n".join(parts)
