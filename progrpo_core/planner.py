"""The preflight planner: what a run will need, before it trains.

:func:`measure_costs` runs the model once or twice per phase on the run's device — a guided
sampling call, a forward and backward of one trained step, a decode and reward call — with 1 and
2 rows, and fits each phase's memory and time as ``fixed + per_row·rows``. On CUDA memory is the
allocator's peak, on the CPU the bytes of the tensors the work allocates
(:class:`~progrpo_core.memory.MemoryMeter`). :func:`make_plan` turns those costs into the largest
micro-batches that fit the memory budget (``run.memory_gib``, default 0.9 × what is free), the peak
memory of every phase, and the seconds per epoch and for the whole run.

The seconds are the run's average epoch: where epochs differ (a checkpoint that follows a moving
SDE window, shared initial noise that runs the calls before the window once per prompt) they are
averaged over the run's epochs.

Once the micro-batches are chosen, :func:`retime` times one call of each phase at its micro-batch
(known to fit) and refits the seconds through that and the 1-row time: the 2-row line extrapolates
badly to large micro-batches.

Planning for a GPU this machine does not have (``plan --plan.gpu h100``): memory per row is measured
here in the run's precision, and time is the counted FLOPs at an assumed 40 % of the GPU's dense
bf16/fp16 throughput.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Sequence

import torch

from torch.utils._python_dispatch import TorchDispatchMode

from .denoiser import cfg_rows
from .memory import measure

GiB = 1024**3
MFU = 0.4  # assumed fraction of a GPU's peak dense throughput reached by these workloads
LAUNCH_S = 8e-6  # the least a GPU operation costs: PyTorch launches each one from the CPU (eager mode)

# Memory (GiB) and dense bf16/fp16 tensor throughput (TFLOPS) of common GPUs, for --plan.gpu.
GPUS: dict[str, tuple[float, float]] = {
    "rtx3090": (24, 71), "rtx4090": (24, 165), "rtx5090": (32, 209), "a10": (24, 125), "l4": (24, 121),
    "a6000": (48, 155), "l40s": (48, 362), "a100-40": (40, 312), "a100-80": (80, 312), "h100": (80, 989),
    "h200": (141, 989), "b200": (180, 2250),
}


@dataclasses.dataclass
class Linear:
    """``fixed + per·n`` (bytes or seconds)."""

    fixed: float
    per: float

    def at(self, n: float) -> float:
        return self.fixed + self.per * n

    @classmethod
    def fit(cls, one: float, two: float) -> "Linear":
        per = max(0.0, two - one)
        return cls(max(0.0, one - per), per)


@dataclasses.dataclass
class Costs:
    """What one row costs in each phase, on ``device`` in ``precision``."""

    device: str
    precision: str
    weights: int            # the denoiser's parameters as stored
    lora_state: int         # LoRA parameters, gradients, two Adam moments and the EMA, float32
    reward_weights: int     # the reward model's parameters
    latent: int             # one float32 latent
    cfg_rows: int           # network rows per trajectory row (2 with guidance)
    sample: Linear          # one no-grad model call, per network row
    train: Linear           # forward + backward of one trained step, per trajectory row
    decode: Linear          # decode + reward call, per image
    sample_s: Linear
    train_s: Linear
    decode_s: Linear
    flops: dict[str, float]  # per sampling network row, per trained row (fwd+bwd), per image
    ops: dict[str, float] = dataclasses.field(default_factory=dict)  # operations one call launches, per phase
    weights_fp32: int = 0   # the same parameters in float32 (what quantized weights, fp8 or GGUF, save)
    proxy: Linear | None = None    # a pruning preview's decode + reward call, per image (None: a decode's)
    proxy_s: Linear | None = None

    def preview(self) -> tuple[Linear, Linear, str]:
        """A pruning preview's memory and seconds per image, and the key of its FLOPs and operations:
        its own where the previews have a cheaper decoder or a smaller latent, else a decode's."""
        if self.proxy is None or self.proxy_s is None:
            return self.decode, self.decode_s, "decode"
        return self.proxy, self.proxy_s, "proxy"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _param_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) if module is not None else 0


def _phase_calls(model, adapter, reward, sampler, device: torch.device, prompt: str,
                 proxy_scale: float | None = None) -> dict:
    """``{phase: make(n)}``: ``make(n)`` returns a call doing that phase's work on ``n`` rows —
    a sampling call, a forward and backward of one trained step, a decode and reward call, and
    (``proxy_scale`` given) a pruning preview's: the model's preview decoder (:func:`proxy_decoder`)
    on the latent pooled to that scale, and the reward call."""
    from .denoiser import proxy_decoder
    from .group import pool_latent
    from .samplers import step_from_x0

    sig = model.sigmas(sampler.steps)
    i = max(0, len(sig) // 2 - 1)
    prompt = [prompt]
    gen = torch.Generator().manual_seed(0)
    lora = adapter.parameters()

    def inputs(n):
        x = torch.randn((n, *model.latent_shape), generator=gen).to(device)
        return x, sig[i].expand(n).to(device), model.encode_prompts(prompt * n)

    def sample_call(n):
        x, s, c = inputs(n)
        return lambda: _no_grad(model.denoise, x, s, c, sampler.cfg)

    def train_call(n):
        x, s, c = inputs(n)

        def run():
            x0 = model.denoise(x, s, c, sampler.cfg)
            _, _, _, logp = step_from_x0(model.family, sampler.sampler, x, x0, sig[i], sig[i + 1], sampler.noise_level,
                                         prev_sample=x + 0.01)
            (-logp.mean()).backward()
            for p in lora:
                p.grad = None
        return run

    def decode_call(n):
        x, _, _ = inputs(n)
        return lambda: _no_grad(lambda: reward.evaluate(model.decode(x), prompt * n))

    def proxy_call(n):
        x, _, _ = inputs(n)
        return lambda: _no_grad(lambda: reward.evaluate(proxy_decoder(model)(pool_latent(x, proxy_scale)), prompt * n))

    calls = {"sample": sample_call, "train": train_call, "decode": decode_call}
    if has_own_preview(model, proxy_scale):
        calls["proxy"] = proxy_call
    return calls


def has_own_preview(model, proxy_scale: float | None) -> bool:
    """Whether a run's pruning previews cost other than a decode: it prunes (``proxy_scale`` is
    given) and its previews are decoded by a cheaper decoder or from a pooled latent."""
    from .denoiser import proxy_decoder

    return proxy_scale is not None and (proxy_scale != 1.0 or proxy_decoder(model) != model.decode)


@contextlib.contextmanager
def _train_mode(net):
    """The network in training mode while probed (checkpointing is active in training mode, as in
    the update), restored after."""
    was = net.training
    net.train()
    try:
        yield
    finally:
        net.train(was)


def measure_costs(model, adapter, reward, sampler, device: torch.device, precision: str, prompt: str,
                  timed: bool = True, proxy_scale: float | None = None) -> Costs:
    """Probe the model, the LoRA and the reward with 1 and 2 rows per phase (see the module
    docstring). ``timed=False`` measures memory and FLOPs only (planning for another device).
    ``proxy_scale``: the run prunes, with previews pooled to this scale (None: it does not)."""
    device = torch.device(device)
    mult = cfg_rows(sampler.cfg)
    lora = adapter.parameters()
    phases = _phase_calls(model, adapter, reward, sampler, device, prompt, proxy_scale)
    mem, sec, flops, ops = {}, {}, {}, {}
    with _train_mode(model.net):
        for name, make in phases.items():
            if timed and device.type == "cuda":
                make(1)()  # warm-up (lazy initialisation, kernels, the allocator)
            m1, t1, flops[name], ops[name] = _probe(make(1), device, repeats=3 if timed else 0, count_flops=True)
            m2, t2, _, _ = _probe(make(2), device, repeats=3 if timed else 0)
            mem[name], sec[name] = Linear.fit(m1, m2), Linear.fit(t1, t2)
    if mult == 2:  # per network row while sampling
        mem["sample"] = Linear(mem["sample"].fixed, mem["sample"].per / 2)
        sec["sample"] = Linear(sec["sample"].fixed, sec["sample"].per / 2)
        flops["sample"] /= 2
    n_lora = sum(p.numel() for p in lora)
    ids = {id(p) for p in lora}
    # as stored: a quantized parameter's own bytes (fp8: 1 per weight; a GGUF tensor holds its packed
    # blocks, its numel() counts those bytes while its .shape is the logical one)
    weights = sum(p.numel() * p.element_size() for p in model.net.parameters() if id(p) not in ids)
    weights_fp32 = sum(4 * math.prod(p.shape) for p in model.net.parameters() if id(p) not in ids)
    return Costs(device=str(device), precision=precision, weights=weights,
                 lora_state=4 * n_lora * 5, reward_weights=sum(_param_bytes(m) for m in _modules(reward)),
                 latent=4 * math.prod(model.latent_shape), cfg_rows=mult,
                 sample=mem["sample"], train=mem["train"], decode=mem["decode"],
                 sample_s=sec["sample"], train_s=sec["train"], decode_s=sec["decode"], flops=flops, ops=ops,
                 weights_fp32=weights_fp32, proxy=mem.get("proxy"), proxy_s=sec.get("proxy"))


def retime(costs: Costs, plan: "Plan", model, adapter, reward, sampler, device: torch.device, prompt: str,
           proxy_scale: float | None = None) -> Costs:
    """``costs`` with each phase's seconds refitted through its 1-row time and one call at the
    plan's micro-batch. A line through 1 and 2 rows extrapolates badly to a micro-batch of 16 or
    more (on a real-size SD1.5 on the CPU it put GRPO's training at 46 s against 105 s measured);
    the plan's micro-batch is known to fit, so timing it is safe."""
    device = torch.device(device)
    mult = costs.cfg_rows
    rows = {"sample": max(1, plan.sample_micro_batch // mult), "train": max(1, plan.train_micro_batch // mult),
            "decode": plan.decode_micro_batch}
    old = {"sample": costs.sample_s, "train": costs.train_s, "decode": costs.decode_s}
    if costs.proxy_s is not None:
        rows["proxy"], old["proxy"] = plan.decode_micro_batch, costs.proxy_s  # previews go by the decode micro-batch
    new = dict(old)
    phases = _phase_calls(model, adapter, reward, sampler, device, prompt,
                          proxy_scale if costs.proxy_s is not None else None)
    with _train_mode(model.net):
        for name, n in rows.items():
            if n <= 2:  # the 1- and 2-row fit already covers it
                continue
            unit = mult if name == "sample" else 1  # sample_s is per network row: a row samples `mult` of them
            call = phases[name](n)
            if device.type == "cuda":
                call()  # warm-up at this size
            t = _seconds(call, device)
            t_one = old[name].at(unit)
            per = max(0.0, (t - t_one) / ((n - 1) * unit))
            fixed = t_one - per * unit
            # a row in a large call dearer than one alone (no fixed cost left): keep the micro-batch's time exact
            new[name] = Linear(fixed, per) if fixed >= 0 else Linear(0.0, t / (n * unit))
    return dataclasses.replace(costs, sample_s=new["sample"], train_s=new["train"], decode_s=new["decode"],
                               proxy_s=new.get("proxy"))


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def _probe(fn, device: torch.device, repeats: int = 3, enough_s: float = 0.5,
           count_flops: bool = False) -> tuple[float, float, float, float]:
    """Peak bytes (metered), the median seconds of up to ``repeats`` unmetered calls (fewer once
    they add up to ``enough_s``: a slow call times itself well) and, if asked, the matmul and
    convolution FLOPs and the number of operations of the metered call."""
    from torch.utils.flop_counter import FlopCounterMode

    ops = _OpCounter()
    with FlopCounterMode(display=False) if count_flops else _nothing() as counter, ops if count_flops else _nothing():
        peak, _ = measure(fn, device)
    flops = float(counter.get_total_flops()) if count_flops else 0.0
    return float(peak), _seconds(fn, device, repeats, enough_s), flops, float(ops.count)


class _OpCounter(TorchDispatchMode):
    """Counts the operations a call runs (each a kernel launch on a GPU; views launch none)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if torch.Tag.view_copy not in func.tags and not func.is_view:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _seconds(fn, device: torch.device, repeats: int = 3, enough_s: float = 0.5) -> float:
    """The median seconds of up to ``repeats`` calls of ``fn`` (fewer once they add up to
    ``enough_s``); 0 for ``repeats=0``."""
    import statistics
    import time

    times: list[float] = []
    while len(times) < repeats and sum(times) < enough_s:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times)) if times else 0.0


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _modules(reward) -> list:
    mods = getattr(reward, "modules", None)
    return list(mods()) if callable(mods) else []


@dataclasses.dataclass
class Target:
    """The device a plan is for: its memory budget and, when planning for another device, its speed."""

    name: str
    budget: int                  # bytes the run may use
    tflops: float | None = None  # None: time from this device's measured seconds


@dataclasses.dataclass
class Plan:
    target: str
    precision: str
    sample_micro_batch: int
    train_micro_batch: int
    decode_micro_batch: int
    reward_offload: bool
    budget_bytes: int
    peaks: dict[str, int]        # phase → bytes
    peak_bytes: int
    seconds: dict[str, float]    # phase → seconds per epoch
    epoch_s: float
    eval_s: float
    run_s: float
    fits: bool
    problems: list[str]
    costs: Costs

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["costs"] = self.costs.as_dict()
        return d

    def summary(self) -> str:
        """Two lines for a node's status text."""
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"plan: peak {_gib(self.peak_bytes)} of {_gib(self.budget_bytes)} ({verdict}); micro-batches sample "
                f"{self.sample_micro_batch}, train {self.train_micro_batch}, decode {self.decode_micro_batch}\n"
                f"~{_dur(self.epoch_s)} per epoch, ~{_dur(self.run_s)} for the run"
                + (f" (evaluation {_dur(self.eval_s)} each)" if self.eval_s else ""))

    def brief(self) -> str:
        """Two short lines for a node's status text (the whole plan is in the log)."""
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"plan: peak {_gib(self.peak_bytes)} of {_gib(self.budget_bytes)}, {verdict}\n"
                f"~{_dur(self.epoch_s)} per epoch, ~{_dur(self.run_s)} in all")

    def text(self) -> str:
        rows = [f"plan for {self.target} ({self.precision}), memory budget {_gib(self.budget_bytes)}",
                f"  model weights {_size(self.costs.weights)} as stored ({_size(self.costs.weights_fp32)} in float32)",
                f"  micro-batches: sampling {self.sample_micro_batch} network rows, training "
                f"{self.train_micro_batch} network rows, decode/reward {self.decode_micro_batch} images"
                + (", reward model offloaded between scorings" if self.reward_offload else ""),
                "  peak memory by phase:"]
        rows += [f"    {k:<10} {_gib(v)}" for k, v in self.peaks.items()]
        rows.append(f"  peak {_gib(self.peak_bytes)}: " + ("fits" if self.fits else "does NOT fit"))
        rows.append("  seconds per epoch: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())
                    + f" = {self.epoch_s:.1f} s")
        rows.append(f"  evaluation {_dur(self.eval_s)} each; whole run ≈ {_dur(self.run_s)}")
        rows += [f"  ! {p}" for p in self.problems]
        return "\n".join(rows)


def _dur(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _size(n: float) -> str:
    return _gib(n) if n >= GiB else f"{n / 2**20:.2f} MiB"


def rollout_bytes(latent: int, group: int, prompts: int, steps: int, checkpoints: Sequence[int],
                  keep: Sequence[int]) -> int:
    """Peak bytes of one rank's sampling round beside the model: the stored latents of the active
    rows, their current latent, x0 and noise, and the per-step noise draw of every group."""
    alive, peak = group, 0
    for i in range(steps):
        peak = max(peak, prompts * alive * (i + 4) + prompts * group)
        for c, k in zip(checkpoints, keep):
            if c - 1 == i:
                alive = k
    return latent * max(peak, prompts * alive * (steps + 1))


def make_plan(costs: Costs, cfg, schedule, sampler, prompts_per_rank: int, eval_images: int, target: Target,
              given: dict[str, int | None] | None = None, reward_offload: bool | None = None) -> Plan:
    """Micro-batches, peak memory, seconds: see the module docstring. ``given`` holds explicit
    micro-batch sizes (``sample``, ``train``, ``decode``; None = choose)."""
    given = given or {}
    mult = costs.cfg_rows
    G, B, T = schedule.group_size, prompts_per_rank, sampler.steps
    storage = rollout_bytes(costs.latent, G, B, T, schedule.checkpoints, schedule.keep)
    trained_rows = B * schedule.trained
    base = costs.weights + costs.lora_state
    offload = reward_offload if reward_offload is not None else (
        base + storage + costs.reward_weights + costs.train.at(mult) > target.budget)
    resident = base + (0 if offload else costs.reward_weights)
    problems: list[str] = []

    def largest(fixed_extra: float, cost: Linear, cap: int, step: int, what: str) -> int:
        room = target.budget - resident - fixed_extra - cost.fixed
        n = int(room // cost.per) if cost.per > 0 else cap
        n = min(cap, n - n % step)
        if n < step:
            problems.append(f"{what}: even {step} row(s) need {_gib(resident + fixed_extra + cost.at(step))}, more "
                            f"than the budget {_gib(target.budget)}")
            return step
        return n

    sample_mb = given.get("sample") or largest(storage, costs.sample, B * G * mult, mult, "sampling")
    preview = costs.preview()[0]  # a decode-and-score call holds final images or previews: room for the dearer
    scoring = costs.decode if not schedule.checkpoints else Linear(max(costs.decode.fixed, preview.fixed),
                                                                   max(costs.decode.per, preview.per))
    decode_mb = given.get("decode") or largest(storage + (costs.reward_weights if offload else 0), scoring,
                                               B * G, 1, "decoding and scoring")
    # a training call holds (row, step) pairs of one minibatch, across its steps (update.trained_pairs)
    train_cap = min(cfg.grpo.train_batch_size, trained_rows) * _trained_steps(cfg, schedule, sampler) * mult
    train_mb = given.get("train") or largest(storage, Linear(costs.train.fixed, costs.train.per / mult), train_cap,
                                             mult, "training")
    peaks = {
        "sampling": int(resident + storage + costs.sample.at(min(sample_mb, B * G * mult))),
        "scoring": int(resident + storage + (costs.reward_weights if offload else 0)
                       + scoring.at(min(decode_mb, B * G))),
        "training": int(resident + storage + costs.train.at(max(1, min(train_mb, train_cap) // mult))),
        "evaluation": int(resident + costs.sample.at(min(sample_mb, eval_images * mult))
                          + eval_images * costs.latent * 3),
    }
    peak = max(peaks.values())
    fits = peak <= target.budget and not problems
    if peak > target.budget and not problems:
        problems.append(f"peak {_gib(peak)} exceeds the budget {_gib(target.budget)}")
    seconds = _mean_epoch_seconds(costs, cfg, schedule, sampler, B, sample_mb, train_mb, decode_mb, target)
    epoch_s = sum(seconds.values())
    eval_s = _eval_seconds(costs, sampler, eval_images, sample_mb, decode_mb, target)
    n_evals = 2 + (cfg.run.epochs // cfg.run.eval_every if cfg.run.eval_every else 0)
    return Plan(target=target.name, precision=costs.precision, sample_micro_batch=int(sample_mb),
                train_micro_batch=int(train_mb), decode_micro_batch=int(decode_mb), reward_offload=bool(offload),
                budget_bytes=int(target.budget), peaks=peaks, peak_bytes=int(peak), seconds=seconds,
                epoch_s=epoch_s, eval_s=eval_s, run_s=cfg.run.epochs * epoch_s + n_evals * eval_s, fits=fits,
                problems=problems, costs=costs)


def _calls(rows: int, per_call: int) -> list[int]:
    full, rest = divmod(rows, per_call)
    return [per_call] * full + ([rest] if rest else [])


def _time(cost_s: Linear, flops_per_row: float, rows: list[int], target: Target, ops_per_call: float = 0.0) -> float:
    """Seconds of calls of ``rows`` rows each: measured here, or on a named GPU its FLOPs at ``MFU``
    of its throughput, but never less than the call's operations at ``LAUNCH_S`` each (a small
    model on a fast GPU waits on the CPU launching kernels, not on arithmetic)."""
    if target.tflops:
        return sum(max(r * flops_per_row / (target.tflops * 1e12 * MFU), ops_per_call * LAUNCH_S) for r in rows)
    return sum(cost_s.at(r) for r in rows)


def _mean_epoch_seconds(costs: Costs, cfg, schedule, sampler, B: int, sample_mb: int, train_mb: int,
                        decode_mb: int, target: Target, most: int = 64) -> dict[str, float]:
    """The run's average epoch. Where epochs differ in cost — the checkpoint follows a moving SDE
    window (``prune_after_window``), or shared initial noise makes the model calls up to the
    window's first step once per prompt — the average of its epochs' (``most`` of them at most,
    evenly spread); else the one epoch's."""
    if not (schedule.prune_after_window or schedule.shared_noise):
        return _epoch_seconds(costs, cfg, schedule, sampler, B, sample_mb, train_mb, decode_mb, target)
    n = max(1, cfg.run.epochs)
    epochs = sorted({round(i * (n - 1) / (most - 1)) for i in range(most)}) if n > most else range(n)
    total: dict[str, float] = {}
    for e in epochs:
        sched, sde = schedule.for_epoch(sampler.steps, e, cfg.run.seed)
        s = _epoch_seconds(costs, cfg, sched, sampler, B, sample_mb, train_mb, decode_mb, target,
                           once=once_per_prompt(sched, sde, sampler.steps))
        for k, v in s.items():
            total[k] = total.get(k, 0.0) + v
    return {k: v / len(epochs) for k, v in total.items()}


def once_per_prompt(schedule, sde, steps: int) -> int:
    """The leading model calls a sampling round makes once per prompt: with shared initial noise a
    prompt's rows are one latent until the first SDE step has drawn its noise (that step's call
    included; :func:`progrpo_core.group.sample_group`)."""
    if not schedule.shared_noise:
        return 0
    if sde is None:                      # every step draws noise: only the first call is shared
        return 1
    firsts = [w[0] for w in (sde if sde and not isinstance(sde[0], int) else [sde]) if w]
    return min(steps, min(firsts) + 1) if firsts else steps


def _epoch_seconds(costs: Costs, cfg, schedule, sampler, B: int, sample_mb: int, train_mb: int, decode_mb: int,
                   target: Target, once: int = 0) -> dict[str, float]:
    """One epoch's seconds by phase; its first ``once`` model calls run one row per prompt."""
    mult = costs.cfg_rows
    ops = {k: costs.ops.get(k, 0.0) for k in ("sample", "train", "decode", "proxy")}
    _, preview_s, preview = costs.preview()
    alive, sampling, scoring, proxy = schedule.group_size, 0.0, 0.0, 0.0
    last = schedule.sampled_steps(sampler.steps) - 1  # the survivors' last model call
    pruned_at = {c - 1 for c in schedule.checkpoints}
    for i in range(last + 1):
        rows = B * (1 if i < once else alive) * mult
        sampling += _time(costs.sample_s, costs.flops["sample"], _calls(rows, sample_mb), target, ops["sample"])
        for c, k in zip(schedule.checkpoints, schedule.keep):
            if c - 1 == i:
                proxy += _time(preview_s, costs.flops[preview], _calls(B * alive, decode_mb), target, ops[preview])
                alive = k
                if schedule.preview_model == "reference" and i != last:  # the reference judged; the survivors'
                    rows = B * (1 if i < once else alive) * mult       # own call to step on
                    sampling += _time(costs.sample_s, costs.flops["sample"], _calls(rows, sample_mb), target,
                                      ops["sample"])
    if schedule.preview_reward is None:
        scoring += _time(costs.decode_s, costs.flops["decode"], _calls(B * alive, decode_mb), target, ops["decode"])
    elif last not in pruned_at:  # the survivors' own previews, later than the checkpoint's
        proxy += _time(preview_s, costs.flops[preview], _calls(B * alive, decode_mb), target, ops[preview])
    steps = _trained_steps(cfg, schedule, sampler)
    per_call = max(1, train_mb // mult)
    # each minibatch's (row, step) pairs, cut into calls of up to the micro-batch across steps
    calls = [c for mb in _calls(B * schedule.trained, cfg.grpo.train_batch_size) for c in _calls(mb * steps, per_call)]
    training = _time(costs.train_s, costs.flops["train"], calls, target, ops["train"])
    if cfg.grpo.kl_beta > 0:  # the reference policy's forward, on the same pairs
        training += _time(costs.sample_s, costs.flops["sample"], [c * mult for c in calls], target, ops["sample"])
    return {"sampling": sampling, "proxy": proxy, "scoring": scoring, "training": training}


def _trained_steps(cfg, schedule, sampler) -> int:
    """The steps each trained row trains: its SDE window's, or Flow-GRPO's share of all."""
    # a windowed method trains only its window's steps; survivors that stop at a preview, the steps before it
    stochastic = schedule.sde_window or schedule.sampled_steps(sampler.steps) - 1
    return max(1, round(cfg.grpo.timestep_fraction * stochastic))


def _eval_seconds(costs: Costs, sampler, images: int, sample_mb: int, decode_mb: int, target: Target) -> float:
    if not images:
        return 0.0
    mult = costs.cfg_rows
    calls = _calls(images * mult, sample_mb)
    return (sampler.eval_steps * _time(costs.sample_s, costs.flops["sample"], calls, target, costs.ops.get("sample", 0.0))
            + _time(costs.decode_s, costs.flops["decode"], _calls(images, decode_mb), target, costs.ops.get("decode", 0.0)))

