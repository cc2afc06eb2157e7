"""A run's settings with every ``auto`` settled: the :class:`RunSpec`.

A :class:`~progrpo_core.config.TrainConfig` holds what the user gave, validated and never changed;
``auto`` (``None``) stands for "choose for me". :func:`resolve` settles every such choice once,
for the model the run trains and the device it runs on, and returns a frozen :class:`RunSpec`:

=======================  =====================================================================
setting                  settled from
=======================  =====================================================================
``sampler``              the family's default sampler, that sampler's noise level, the model's cfg
``schedule``             the method's preset for the model's family, the config's overrides on top
``lr``                   ``methods.auto_lr``: the method and whether the model is a built-in one
``precision``            bf16 on a GPU that computes it natively, else fp16; fp32 on the CPU
``reward_dtype``         the same rule for the reward model; ``reward_device`` the run's device
``gradient_checkpointing``  1 (the model's blocks) for real models, 0 for the built-in ones
``eval_prompts/seeds``   at most ``run.eval_prompts`` prompts, ``run.eval_seeds`` seeds each
``micro``                the planner's micro-batches (:meth:`RunSpec.planned`; ``None`` until then)
=======================  =====================================================================

The trainer reads a RunSpec and never changes it; the command line, the ComfyUI node and the bench
build a config, resolve it and hand the spec over (``Trainer.build`` does the three steps). A run
folder's ``run.json`` records the spec, and ``--resume`` compares the checkpoint's spec with the
new one (:data:`RESUMABLE_CHANGES`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from .config import GRPOConfig, SamplerConfig, TrainConfig
from .devices import Precision, auto_reward_dtype, dtype_name, resolve_device, resolve_precision
from .methods import METHODS, PruneSchedule, auto_lr

EVAL_SEED_BASE = 1_000_000_007  # eval noise never coincides with training noise


@dataclasses.dataclass(frozen=True)
class MicroBatches:
    """Rows per model call: ``sample`` (a guided row counts two), ``train`` (forward and backward)
    and ``decode`` (decode and reward); ``None`` until the planner chooses."""

    sample: int | None = None
    train: int | None = None
    decode: int | None = None

    @property
    def complete(self) -> bool:
        return None not in (self.sample, self.train, self.decode)

    def as_dict(self) -> dict[str, int | None]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Every setting of one run, settled (see the module docstring)."""

    config: TrainConfig              # the settings as the user gave them
    device: torch.device
    family: str                      # "flow" or "eps"
    builtin: bool                    # a built-in digits model
    sampler: SamplerConfig           # sampler, noise level and cfg all set
    schedule: PruneSchedule          # the funnel for the model's family
    grpo: GRPOConfig                 # lr, clip range and advantage normalisation all set
    objective: str                   # grpo (clipped policy gradient) or nft (DiffusionNFT)
    precision: Precision
    reward_device: str
    reward_dtype: str                # fp32, bf16, fp16
    gradient_checkpointing: int      # module depth (0 = off)
    eval_prompts: tuple[str, ...]    # one entry per evaluated image
    eval_seeds: tuple[int, ...]
    micro: MicroBatches = MicroBatches()
    reward_offload: bool | None = None   # keep the reward on the CPU between scorings (None: the plan decides)
    plan: Any = None                 # the planner's Plan, when one was made

    # the config's sections, read through the spec
    run = property(lambda self: self.config.run)
    lora = property(lambda self: self.config.lora)
    reward = property(lambda self: self.config.reward)
    model = property(lambda self: self.config.model)

    @property
    def lr(self) -> float:
        return self.grpo.lr

    @property
    def eval_seeds_per_prompt(self) -> int:
        return self.config.run.eval_seeds or (8 if self.builtin else 2)

    def planned(self, plan) -> "RunSpec":
        """This spec with the micro-batches (those left on auto) and the reward offload of ``plan``."""
        given = self.micro
        micro = MicroBatches(given.sample or plan.sample_micro_batch, given.train or plan.train_micro_batch,
                             given.decode or plan.decode_micro_batch)
        offload = self.config.reward.offload if self.config.reward.offload is not None else plan.reward_offload
        return dataclasses.replace(self, micro=micro, reward_offload=bool(offload), plan=plan)

    def settled(self) -> dict[str, dict[str, Any]]:
        """The settings as run, in the config's sections (what ``run.json`` and checkpoints record
        and ``--resume`` compares): the config with every auto replaced by what it became."""
        d = self.config.to_dict()
        d["sampler"].update(sampler=self.sampler.sampler, noise_level=self.sampler.noise_level, cfg=self.sampler.cfg)
        d["schedule"] = {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in dataclasses.asdict(self.schedule).items() if v is not None}
        if d["schedule"].get("preview_model") == "policy":  # recorded when not, so older runs resume
            del d["schedule"]["preview_model"]
        d["grpo"].update(lr=self.grpo.lr, clip_range=self.grpo.clip_range, adv_norm=self.grpo.adv_norm)
        d["grpo"].pop("saturated_lr", None)  # recorded when on, so runs from before the setting existed resume
        if self.grpo.saturated_lr != 1:
            d["grpo"]["saturated_lr"] = self.grpo.saturated_lr
        d["run"].update(device=str(self.device), precision=self.precision.name,
                        gradient_checkpointing=self.gradient_checkpointing, eval_seeds=self.eval_seeds_per_prompt,
                        **{f"{k}_micro_batch": v for k, v in self.micro.as_dict().items() if v is not None})
        d["reward"].update(device=self.reward_device, dtype=self.reward_dtype)
        if self.reward_offload is not None:
            d["reward"]["offload"] = self.reward_offload
        d["model"]["family"] = self.family
        return d


# Settings a resumed run may change: how long it runs, where and how often it writes, and how its
# work is cut into calls (the results do not depend on the micro-batches). Anything else changes
# the trajectory, so resuming with it would not continue the same run.
RESUMABLE_CHANGES = {
    "run": {"out", "epochs", "max_steps", "eval_every", "save_every", "checkpoint_every", "keep_checkpoints",
            "max_bad_updates", "check_disk", "device", "sample_micro_batch", "train_micro_batch",
            "decode_micro_batch", "memory_gib"},
    "reward": {"device", "offload"},
}


def eval_set(prompts: Sequence[str], seeds_per_prompt: int, max_prompts: int | None = None) -> tuple[list[str], list[int]]:
    """The evaluation's prompts — at most ``max_prompts``, spread evenly over the list — each
    repeated per seed, and their fixed seeds."""
    n = len(prompts) if max_prompts is None else min(max_prompts, len(prompts))
    chosen = [prompts[(i * len(prompts)) // n] for i in range(n)]
    rows = [p for p in chosen for _ in range(seeds_per_prompt)]
    return rows, [EVAL_SEED_BASE + i for i in range(len(rows))]


def resolve(cfg: TrainConfig, model, device: torch.device | str | None = None,
            prompts: Sequence[str] | None = None) -> RunSpec:
    """Settle every ``auto`` of ``cfg`` for ``model`` (a Denoiser) on ``device`` (default: the
    model's, else ``run.device``); ``prompts`` default to the model's own set. The micro-batches
    stay as given until :meth:`RunSpec.planned`."""
    device = torch.device(device) if device is not None else resolve_device(cfg.run.device)
    builtin = bool(getattr(model, "builtin", False))
    family = model.family
    method = METHODS[cfg.grpo.method]
    sampler = cfg.sampler.resolved(family, getattr(model, "default_cfg", 1.0), method)
    g = cfg.grpo
    grpo = dataclasses.replace(g, lr=g.lr if g.lr is not None else auto_lr(g.method, builtin),
                               clip_range=g.clip_range if g.clip_range is not None else method.default("grpo.clip_range", 1e-4),
                               adv_norm=g.adv_norm or method.default("grpo.adv_norm", "group"),
                               saturated_lr=g.saturated_lr if g.saturated_lr is not None
                               else method.for_family(family).default("grpo.saturated_lr", 1.0))
    if method.objective == "grpo" and (sampler.sampler == "ode" or not sampler.noise_level):
        raise ValueError(f"sampler.sampler={sampler.sampler}, sampler.noise_level={sampler.noise_level:g}: every "
                         "sampling step is deterministic, so there is no policy to train; use a noise level > 0 with "
                         "an exploration sampler (the default noise when you leave it out)")
    schedule = cfg.prune_schedule(family)
    if method.objective == "nft" and schedule.preview_reward is not None:
        raise ValueError(f"schedule.preview_reward={schedule.preview_reward} with grpo.method={cfg.grpo.method!r}: NFT "
                         "trains on the finished images, so its survivors must finish; leave preview_reward unset")
    r = cfg.reward
    reward_device = str(device if r.device == "auto" else resolve_device(r.device, "reward.device"))
    reward_dtype = dtype_name(r.dtype) if r.dtype != "auto" else auto_reward_dtype(reward_device)
    depth = cfg.run.gradient_checkpointing
    prompts = list(prompts) if prompts is not None else list(getattr(model, "default_prompts", ()) or ())
    seeds = cfg.run.eval_seeds or (8 if builtin else 2)
    ev_prompts, ev_seeds = eval_set(prompts, seeds, cfg.run.eval_prompts) if prompts else ([], [])
    return RunSpec(
        config=cfg, device=device, family=family, builtin=builtin, sampler=sampler,
        schedule=schedule, grpo=grpo, objective=method.objective,
        precision=resolve_precision(cfg.run.precision, device), reward_device=reward_device, reward_dtype=reward_dtype,
        gradient_checkpointing=(0 if builtin else 1) if depth is None else depth,
        eval_prompts=tuple(ev_prompts), eval_seeds=tuple(ev_seeds),
        micro=MicroBatches(cfg.run.sample_micro_batch, cfg.run.train_micro_batch, cfg.run.decode_micro_batch),
        reward_offload=r.offload)


def check_resume(saved: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]) -> list[tuple[str, str, Any, Any]]:
    """The settings that differ between a checkpoint's spec and this run's and may not change on
    resume: ``(section, key, in the checkpoint, now)``."""
    diffs = []
    for section in sorted(set(saved) | set(now)):
        a, b = saved.get(section, {}), now.get(section, {})
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES.get(section, set()):
                diffs.append((section, k, a.get(k), b.get(k)))
    return diffs
