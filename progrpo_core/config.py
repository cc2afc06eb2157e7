"""Typed configuration, one dataclass per concern, validated on construction.

TOML files use one table per section (``[sampler]``, ``[schedule]``, ``[grpo]``, ``[lora]``,
``[reward]``, ``[model]``, ``[run]``); the command line derives ``--section.field VALUE`` for every
field from the same dataclasses (``--sampler.steps 10``, ``--schedule.keep 24,12``).
Fields left ``None`` take the method's preset (``methods.METHODS``) or the sampler's default.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from typing import Any, Optional

from . import ovf
from .grpo import ADV_NORMS
from .methods import DEFAULT_METHOD, METHODS, PruneSchedule, auto_lr_help, presets_text
from .samplers import DEFAULT_SAMPLER, SAMPLER_SPECS, check_sampler, noise_help, sampler_names
from .toml_io import load_toml, toml_text  # noqa: F401  (load_toml: the config loader, re-exported)


MAX_NOISE = 10.0       # sampler.noise_level: beyond it every step is noise
MAX_CFG = 100.0        # sampler.cfg (ComfyUI's own widgets stop at 100)
MAX_KL_BETA = 1e3      # grpo.kl_beta
MAX_SEED = 2**32 - 1   # run.seed: the run derives its other seeds from it by products that must fit in 64 bits


def _help(text: str, default: Any = None, factory: Any = None) -> Any:
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": text})
    return dataclasses.field(default=default, metadata={"help": text})


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _expand_paths(section: Any, *names: str) -> None:
    """``~`` in a path setting means the home folder (as in a shell), in a TOML file too."""
    for name in names:
        v = getattr(section, name)
        if isinstance(v, str) and v.startswith("~"):
            object.__setattr__(section, name, os.path.expanduser(v))  # (frozen: settled while it is built)


def _check_device_name(label: str, name: str) -> None:
    """A device name's spelling (whether this machine has it is checked when the run starts)."""
    if name == "auto":
        return
    _need(name.split(":")[0] != "meta", f"{label}='meta' is PyTorch's shape-only device: it holds no data, so "
                                        "nothing can be sampled, scored or trained on it; use auto, cpu or cuda")
    import torch

    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        from .devices import available_devices
        raise ValueError(f"{label}={name!r} is not a device; expected auto or a torch device such as "
                         f"{', '.join(available_devices())}") from None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = _help("built-in model to train: digits-flow, digits-eps (one digit), digits-pair-flow, "
                      "digits-pair-eps (two digits in the prompted order, the harder task)", "digits-flow")
    path: Optional[str] = _help("weights file overriding the built-in one")
    comfyui: Optional[str] = _help("path to a ComfyUI checkout, to train a real checkpoint with its library")
    checkpoint: Optional[str] = _help("checkpoint file to load through ComfyUI (with --model.comfyui)")
    clip: Optional[str] = _help("text-encoder file, for a checkpoint that has none (with --model.comfyui)")
    clip_type: str = _help("ComfyUI CLIP type of model.clip: stable_diffusion, sd3, flux, …", "stable_diffusion")
    vae: Optional[str] = _help("VAE file, for a checkpoint that has none (with --model.comfyui)")
    resolution: Optional[int] = _help("training image size in pixels (default 512 for SD1.x, 1024 otherwise)")
    loader: Optional[str] = _help("'package.module:function' that loads model.checkpoint as a Denoiser "
                                  "(default: the pack's ComfyUI adapter)")

    def __post_init__(self):
        _expand_paths(self, "path", "comfyui", "checkpoint", "clip", "vae")
        if self.comfyui is None:
            from .embedded import MODELS
            _need(self.name in MODELS, f"model.name={self.name!r} is not a built-in model; expected one of "
                                       f"{', '.join(MODELS)}, or give --model.comfyui and --model.checkpoint")
        else:
            _need(bool(self.checkpoint), "model.comfyui is set but model.checkpoint is not; name the checkpoint file")
        _need(self.resolution is None or self.resolution >= 8,
              f"model.resolution={self.resolution} must be a number of pixels >= 8")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    sampler: Optional[str] = _help(f"exploration sampler: {sampler_names()}; default "
                                   f"{DEFAULT_SAMPLER['flow']} / {DEFAULT_SAMPLER['eps']} by model family")
    steps: int = _help("sampling steps T per rollout", 10)
    noise_level: Optional[float] = _help(f"SDE noise level a or DDIM eta (default: {noise_help()})")
    cfg: Optional[float] = _help("classifier-free guidance scale in sampling and training (1 = off; auto: the "
                                 "model's own default — 1 for the built-in and guidance-distilled models such as "
                                 "Flux, 4.5 otherwise)")
    eval_steps: int = _help("deterministic sampling steps for evaluation", 10)

    def __post_init__(self):
        _need(self.sampler is None or self.sampler in SAMPLER_SPECS,
              f"sampler.sampler={self.sampler!r} unknown; expected one of {', '.join(SAMPLER_SPECS)}")
        _need(isinstance(self.steps, int) and self.steps >= 2,
              f"sampler.steps={self.steps!r}: T must be an integer >= 2")
        _need(isinstance(self.eval_steps, int) and self.eval_steps >= 1,
              f"sampler.eval_steps={self.eval_steps!r} must be an integer >= 1")
        _need(self.noise_level is None or (math.isfinite(self.noise_level) and 0 <= self.noise_level <= MAX_NOISE),
              f"sampler.noise_level={self.noise_level!r} must be a number from 0 to {MAX_NOISE:g} (the SDE noise "
              f"level a or DDIM eta; defaults: {noise_help()}), or auto")
        _need(self.cfg is None or (math.isfinite(self.cfg) and 1.0 <= self.cfg <= MAX_CFG),
              f"sampler.cfg={self.cfg!r} must be a guidance scale from 1 (off) to {MAX_CFG:g}, or auto")

    def resolved(self, family: str, default_cfg: float = 1.0, method: Any = None) -> "SamplerConfig":
        """Every field set: the method's sampler and noise level (``method``: a ``MethodPreset``), else
        the family's default sampler and its default noise; the model's default cfg."""
        preset = method.default("sampler.sampler") if method is not None else None
        sampler = self.sampler or preset or DEFAULT_SAMPLER.get(family, "")
        check_sampler(family, sampler)
        noise = self.noise_level
        if noise is None and method is not None and sampler == preset:
            noise = method.default("sampler.noise_level")
        if noise is None:
            noise = SAMPLER_SPECS[sampler].default_noise
        cfg = self.cfg if self.cfg is not None else float(default_cfg)
        return dataclasses.replace(self, sampler=sampler, noise_level=noise, cfg=cfg)


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    group_size: Optional[int] = _help("G_max: trajectories sampled per prompt")
    checkpoints: Optional[tuple[int, ...]] = _help("pruning steps, each in 1..T-1, increasing (e.g. 5,7)")
    keep: Optional[tuple[int, ...]] = _help("survivors after each checkpoint, shrinking (e.g. 24,12)")
    final_keep: Optional[int] = _help("static selection on the final reward: train this many of the group")
    selector: str = _help("subset rule at checkpoints and final selection: ovf, random, topk, all", "ovf")
    sde_window: Optional[int] = _help("SDE steps per epoch, ODE elsewhere, only they trained (0: every step; "
                                      "default: the method's)")
    window_mode: Optional[str] = _help("where the SDE window sits: random (Flow-GRPO-Fast), progressive (MixGRPO), "
                                       "sliding, after-pruning (default: the method's)")
    window_draw: Optional[str] = _help("a random window drawn once per epoch or for each prompt's group (default: the "
                                       "method's)")
    slide_every: Optional[int] = _help("progressive or sliding window: epochs between its moves (default: the "
                                       "method's)")
    shared_noise: Optional[bool] = _help("a prompt's trajectories start from one noise, as MixGRPO's (default: the "
                                         "method's)")
    preview_reward: Optional[int] = _help("train on a preview's reward instead of the final image's: the survivors "
                                          "stop this many model calls after the last checkpoint and their one-step "
                                          "preview there is decoded and scored (0: the checkpoint's own preview; "
                                          "default: the method's, most finish)")
    preview_model: Optional[str] = _help("whose one-step prediction the scored previews are: policy (the model being "
                                         "trained) or reference (the frozen model, its LoRA off, which training "
                                         "cannot move; a checkpoint the survivors go on from then costs one more "
                                         "call for them) (default: the method's)")
    proxy_scale: float = _help("the pruning previews are decoded from the x0 latent area-pooled to this fraction of "
                               "its height and width (1 = full size; 0.5 at 512² gives 256² previews for a reward "
                               "model that looks at 224², about a quarter of the decode's cost)", 1.0)

    def __post_init__(self):
        _need(self.selector in ovf.SELECTORS,
              f"schedule.selector={self.selector!r} unknown; expected one of {', '.join(ovf.SELECTORS)}")
        _need(0.0 < self.proxy_scale <= 1.0,
              f"schedule.proxy_scale={self.proxy_scale} must be in (0, 1]: the fraction of the latent's height and "
              "width the pruning previews are decoded at (1 = full size, 0.5 = half)")

    def resolved(self, method: str, steps: int, family: str = "flow") -> PruneSchedule:
        """The method's preset for the model ``family`` (``methods.METHODS``, scaled to T steps) with
        this config's fields on top."""
        preset = METHODS[method].schedule(steps, self.selector, family)
        overrides = {f: getattr(self, f) for f in ("group_size", "checkpoints", "keep", "final_keep", "sde_window",
                                                   "window_mode", "window_draw", "slide_every", "shared_noise", "proxy_scale",
                                                   "preview_reward", "preview_model")
                     if getattr(self, f) is not None}
        if self.checkpoints is not None and self.keep is None and len(preset.keep) != len(self.checkpoints):
            raise ValueError(f"schedule.checkpoints={list(self.checkpoints)} given without schedule.keep; "
                             "give one survivor count per checkpoint (e.g. --schedule.keep 24,12)")
        sched = dataclasses.replace(preset, **overrides)
        if sched.prune_after_window and self.checkpoints is None and len(sched.keep) != 1:
            raise ValueError(f"schedule.keep={list(sched.keep)}: grpo.method={method!r} prunes once, right after "
                             "its SDE window, so it takes one survivor count (e.g. --schedule.keep 12); for a funnel "
                             "with several checkpoints use --method pro-grpo")
        sched.validate(steps)
        return sched


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    method: str = _help(f"training method and its default funnel: {presets_text()}", DEFAULT_METHOD)
    prompts_per_epoch: int = _help("B: prompts sampled per epoch (each gets a whole group)", 8)
    lr: Optional[float] = _help(f"AdamW learning rate (auto: {auto_lr_help()})")
    weight_decay: float = _help("AdamW weight decay", 1e-4)
    clip_range: Optional[float] = _help("PPO ratio clip epsilon (auto: the method's, else Flow-GRPO's 1e-4)")
    adv_clip: float = _help("advantages are clipped to +-this", 5.0)
    adv_norm: Optional[str] = _help("advantage normalisation: group (per prompt) or batch (per-prompt mean, batch std) "
                                    "(auto: the method's, else group)")
    kl_beta: float = _help("weight of the KL to the reference policy (0 = off)", 0.0)
    kl_form: str = _help("the KL's scale: flow-grpo (Flow-GRPO's: for flow_sde/dance_sde divided by the SDE's "
                         "noise coefficient, |dt| times the exact KL, so Flow-GRPO's kl_beta means the same here) "
                         "or transition (the exact KL between the two Gaussian transitions)", "flow-grpo")
    timestep_fraction: float = _help("fraction of the stochastic steps trained each epoch", 0.9)
    train_step_order: str = _help("which steps are trained: first (the first timestep_fraction of them in "
                                  "sampling order, as Flow-GRPO) or random (a new random subset each epoch)", "first")
    train_batch_size: int = _help("rows per backward pass", 48)
    grad_accum: int = _help("backward passes accumulated per optimizer step", 1)
    grad_clip: float = _help("gradient-norm clip (0 = off)", 1.0)
    saturated_lr: Optional[float] = _help("the learning rate is multiplied by this, once, when the policy has "
                                          "saturated the reward: the trained rewards' spread below 5 % of the first "
                                          "epoch's for 3 epochs in a row at a mean above the first epoch's (1 = off; "
                                          "auto: the method's, else 1)")
    ema: bool = _help("keep an EMA of the LoRA weights for evaluation and saving", True)
    ema_decay: float = _help("EMA decay per optimizer step", 0.9)
    separate_reward_norm: bool = _help("normalise each reward's advantages separately before weighting", False)
    nft_beta: float = _help("DiffusionNFT (--method nft): β, how far the implicit positive and negative policies "
                            "lie from the old one", 1.0)

    def __post_init__(self):
        _need(self.method in METHODS, f"grpo.method={self.method!r} unknown; expected one of {', '.join(METHODS)}")
        _need(self.adv_norm is None or self.adv_norm in ADV_NORMS,
              f"grpo.adv_norm={self.adv_norm!r} unknown; expected one of {ADV_NORMS}")
        _need(self.prompts_per_epoch >= 1, f"grpo.prompts_per_epoch={self.prompts_per_epoch} must be >= 1")
        _need(self.saturated_lr is None or isinstance(self.saturated_lr, (int, float)) and 0 < self.saturated_lr <= 1,
              f"grpo.saturated_lr={self.saturated_lr!r} must be in (0, 1]: the factor the learning rate is multiplied "
              "by once the reward has saturated (1 = off; 0.1 lowers it tenfold)")
        for name in ("lr", "clip_range", "adv_clip"):
            v = getattr(self, name)
            _need(v is None and name != "adv_clip" or isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
                  f"grpo.{name}={v!r} must be a finite number > 0")
        _need(math.isfinite(self.nft_beta) and self.nft_beta > 0, f"grpo.nft_beta={self.nft_beta!r} must be > 0")
        for name in ("weight_decay", "kl_beta", "grad_clip"):
            v = getattr(self, name)
            _need(math.isfinite(v) and v >= 0, f"grpo.{name}={v!r} must be a finite number >= 0")
        # magnitudes no run survives: Adam moves every weight by about lr per step
        _need(self.lr is None or self.lr < 1, f"grpo.lr={self.lr!r}: Adam moves every LoRA weight by about the "
              "learning rate at each step, so a rate of 1 or more destroys the LoRA in one step; LoRA rates are "
              "1e-5 to 1e-2 (leave it out for the default)")
        _need(self.weight_decay <= 1, f"grpo.weight_decay={self.weight_decay!r}: AdamW multiplies the weights by "
              "(1 - lr x weight_decay) each step, so a decay above 1 drives them to nothing or makes them flip "
              "sign; use 0 to 0.1 (default 1e-4)")
        _need(self.kl_beta <= MAX_KL_BETA, f"grpo.kl_beta={self.kl_beta!r} would make the KL penalty outweigh the "
              f"reward by orders of magnitude (or overflow); use 0 (off) to {MAX_KL_BETA:g}")
        _need(0 < self.timestep_fraction <= 1, f"grpo.timestep_fraction={self.timestep_fraction} must be in (0, 1]")
        _need(self.kl_form in ("flow-grpo", "transition"),
              f"grpo.kl_form={self.kl_form!r} unknown; expected flow-grpo or transition")
        _need(self.train_step_order in ("first", "random"),
              f"grpo.train_step_order={self.train_step_order!r} unknown; expected first or random")
        _need(self.train_batch_size >= 1, f"grpo.train_batch_size={self.train_batch_size} must be >= 1")
        _need(self.grad_accum >= 1, f"grpo.grad_accum={self.grad_accum} must be >= 1")
        _need(0 <= self.ema_decay < 1, f"grpo.ema_decay={self.ema_decay} must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = _help("LoRA rank", 8)
    alpha: float = _help("LoRA alpha (scale = alpha / rank)", 16.0)
    targets: Optional[tuple[str, ...]] = _help("module-name suffixes to adapt (default: the model's own list)")
    init_from: Optional[str] = _help("continue training from this LoRA file")

    def __post_init__(self):
        _expand_paths(self, "init_from")
        _need(isinstance(self.rank, int) and self.rank >= 1, f"lora.rank={self.rank!r} must be an integer >= 1")
        _need(math.isfinite(self.alpha) and self.alpha > 0, f"lora.alpha={self.alpha!r} must be > 0")
        _need(self.targets is None or (len(self.targets) > 0 and all(t.strip() for t in self.targets)),
              f"lora.targets={','.join(self.targets or ())!r} names no module; give module-name suffixes "
              "separated by commas (e.g. to_q,to_k,to_v), or leave it out for the model's own list")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    name: str = _help("reward to train on (digit, stroke, pickscore, hpsv2.1, …, or module:callable)", "digit")
    path: Optional[str] = _help("weights file or folder of the reward model")
    gold: Optional[str] = _help("a second reward that is only watched, never trained on (e.g. stroke)")
    device: str = _help("device for the reward model (auto = the generator's device)", "auto")
    dtype: str = _help("reward model dtype: fp32, bf16, fp16 (or float32, bfloat16, float16), or auto (fp32 on the "
                       "CPU, bf16 on a GPU that has it, else fp16)", "auto")
    offload: Optional[bool] = _help("keep the reward model on the CPU between scorings, so sampling and training "
                                    "have the GPU's memory (auto: when the planner finds memory short)")

    def __post_init__(self):
        _expand_paths(self, "path")
        from .rewards import available_rewards
        for label, n in (("reward.name", self.name), ("reward.gold", self.gold)):
            if n is not None and n not in available_rewards() and ":" not in n and "," not in n and "=" not in n:
                raise ValueError(f"{label}={n!r} is not a known reward; expected one of "
                                 f"{', '.join(available_rewards())}, or 'package.module:callable'")
        from .devices import DTYPE_ALIASES, DTYPES
        _need(self.dtype == "auto" or self.dtype in DTYPES or self.dtype in DTYPE_ALIASES,
              f"reward.dtype={self.dtype!r}; expected auto, {', '.join(DTYPES)} (or {', '.join(DTYPE_ALIASES)})")
        _check_device_name("reward.device", self.device)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    out: Optional[str] = _help("run folder (LoRA, metrics.jsonl, summary.json, plots); default: a new "
                               "runs/<date>-<time>-<method>, and runs/latest points at it")
    seed: int = _help("seed of everything: noise, prompts, LoRA init", 0)
    epochs: int = _help("sampling rounds (each: sample, score, train)", 100)
    max_steps: Optional[int] = _help("stop after this many optimizer steps")
    prompts: Optional[str] = _help("prompt file, one per line (default: the model's own prompt set)")
    eval_prompts: int = _help("prompts in the evaluation set (at most; chosen evenly from the prompt list)", 16)
    eval_seeds: Optional[int] = _help("seeds per eval prompt, deterministic sampling (default 8 for the built-in "
                                      "models, 2 for real ones)")
    eval_every: int = _help("evaluate every N epochs (0 = only before and after)", 10)
    save_every: int = _help("save the LoRA every N epochs (0 = only at the end)", 10)
    checkpoint_every: int = _help("write a resumable checkpoint to RUN/checkpoints every N epochs and at the end "
                                  "(0 = only when interrupted)", 10)
    keep_checkpoints: int = _help("checkpoints kept in RUN/checkpoints, newest first", 2)
    max_bad_updates: int = _help("stop after this many skipped updates in a row (non-finite reward, loss or "
                                 "gradient; 0 = never stop)", 10)
    check_disk: bool = _help("before training, check that the run folder is writable and has room for the run", True)
    device: str = _help("device for the generator: auto (CUDA when there is a GPU), cpu, cuda, cuda:1, …", "auto")
    precision: str = _help("the model's compute dtype: auto (bf16 on GPUs that have it, else fp16 with loss scaling; "
                           "fp32 on the CPU), fp32, bf16, fp16", "auto")
    sample_micro_batch: Optional[int] = _help("rows per model call while sampling, a guided row counting twice "
                                              "(auto: from the device's free memory)")
    train_micro_batch: Optional[int] = _help("rows per forward/backward in training (gradients accumulate up to "
                                             "grpo.train_batch_size; auto: from the device's free memory)")
    decode_micro_batch: Optional[int] = _help("images per decode and reward call (auto: from the device's free memory)")
    gradient_checkpointing: Optional[int] = _help("recompute activations in backward at this module depth "
                                                  "(1 = the model's blocks; 0 = off; auto: 1 for real models, 0 for "
                                                  "the built-in ones)")
    memory_gib: Optional[float] = _help("memory the run may use on its device, in GiB (auto: 0.9 × what is free when "
                                        "it starts)")

    def __post_init__(self):
        _expand_paths(self, "out", "prompts")
        _need(0 <= self.seed <= MAX_SEED, f"run.seed={self.seed} must be a whole number from 0 to {MAX_SEED} "
                                          "(2**32 - 1)")
        _need(self.epochs >= 1, f"run.epochs={self.epochs} must be >= 1")
        _need(self.max_steps is None or self.max_steps >= 1, f"run.max_steps={self.max_steps} must be >= 1")
        _need(self.eval_seeds is None or self.eval_seeds >= 1, f"run.eval_seeds={self.eval_seeds} must be >= 1")
        _need(self.eval_prompts >= 1, f"run.eval_prompts={self.eval_prompts} must be >= 1")
        _check_device_name("run.device", self.device)
        from .devices import PRECISIONS
        _need(self.precision in PRECISIONS,
              f"run.precision={self.precision!r} unknown; expected one of {', '.join(PRECISIONS)}")
        for name in ("sample_micro_batch", "train_micro_batch", "decode_micro_batch"):
            v = getattr(self, name)
            _need(v is None or v >= 1, f"run.{name}={v} must be a number of rows >= 1, or auto")
        _need(self.gradient_checkpointing is None or self.gradient_checkpointing >= 0,
              f"run.gradient_checkpointing={self.gradient_checkpointing} must be a depth >= 0 (0 = off), or auto")
        _need(self.memory_gib is None or (math.isfinite(self.memory_gib) and self.memory_gib > 0),
              f"run.memory_gib={self.memory_gib} must be a number of GiB > 0, or auto")
        _need(self.eval_every >= 0 and self.save_every >= 0, "run.eval_every and run.save_every must be >= 0")
        _need(self.checkpoint_every >= 0, f"run.checkpoint_every={self.checkpoint_every} must be >= 0 (0 = only on interrupt)")
        _need(self.keep_checkpoints >= 1, f"run.keep_checkpoints={self.keep_checkpoints} must be >= 1")
        _need(self.max_bad_updates >= 0, f"run.max_bad_updates={self.max_bad_updates} must be >= 0 (0 = never stop)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self):
        # The schedule checked against the step count up front, not at the first checkpoint: for the
        # built-in model's family, or for flow models when the model is only known once loaded.
        self.prune_schedule()

    @property
    def known_family(self) -> str | None:
        """The model family when the config alone says it (the built-in models), else None."""
        if self.model.comfyui is not None or self.model.path is not None:
            return None
        return "flow" if self.model.name.endswith("flow") else "eps"

    def prune_schedule(self, family: str | None = None) -> PruneSchedule:
        """The method's funnel for a ``family`` model (default: the one the config knows, else
        flow), with this config's overrides."""
        return self.schedule.resolved(self.grpo.method, self.sampler.steps, family or self.known_family or "flow")

    def to_dict(self) -> dict:
        return {s.name: {k: v for k, v in dataclasses.asdict(getattr(self, s.name)).items() if v is not None}
                for s in dataclasses.fields(self)}

    def replace(self, **sections: dict[str, Any]) -> "TrainConfig":
        """A new validated config with ``sections``' settings on top (``cfg.replace(run={"out": d})``):
        a config is never changed once built."""
        return build_config(merge(self.to_dict(), sections))


SECTIONS: dict[str, type] = {"model": ModelConfig, "sampler": SamplerConfig, "schedule": ScheduleConfig, "grpo": GRPOConfig,
            "lora": LoRAConfig, "reward": RewardConfig, "run": RunConfig}


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(underlying type, optional?) of a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def parse_value(section: str, name: str, raw: Any) -> Any:
    """Coerce a TOML value or command-line string to the field's type, with a clear error."""
    if section not in SECTIONS:
        raise ValueError(f"unknown config section {section!r}; expected one of {', '.join(SECTIONS)}")
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    if name not in hints:
        raise ValueError(f"unknown setting {section}.{name}; {section} has: {', '.join(hints)}")
    tp, optional = _base_type(hints[name])
    label = f"{section}.{name}"
    if optional and (raw is None or (isinstance(raw, str) and (raw.lower() in ("none", "null", "")
                                                                or (raw.lower() == "auto" and tp is not str)))):
        return None
    try:
        if typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0]
            items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).split(",") if s.strip()]
            return tuple(_scalar(elem, v) for v in items)
        return _scalar(tp, raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{label}={raw!r} is not a valid {getattr(tp, '__name__', tp)} ({e})") from None


def _scalar(tp: Any, raw: Any) -> Any:
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if tp in (int, float) and isinstance(raw, bool):
        raise ValueError("expected a number, got a boolean")
    if tp is int:
        if isinstance(raw, float) or (isinstance(raw, str) and not raw.strip().lstrip("-").isdigit()):
            raise ValueError("expected an integer")
        return int(raw)
    if tp is float:
        return float(raw)
    if tp is str:
        return str(raw).strip() if isinstance(raw, str) else str(raw)
    return raw


def build_config(table: dict[str, dict[str, Any]] | None = None) -> TrainConfig:
    """A validated TrainConfig from ``{section: {field: value}}`` (values coerced per field type)."""
    table = table or {}
    unknown = set(table) - set(SECTIONS)
    if unknown:
        hints = [f"{n} belongs in [{_section_of(n)}]" for n in sorted(unknown) if _section_of(n)]
        raise ValueError(f"unknown config section(s) {sorted(unknown)}; expected {', '.join(SECTIONS)}"
                         + (f" ({'; '.join(hints)})" if hints else ""))
    parts = {}
    for section, cls in SECTIONS.items():
        if not isinstance(table.get(section, {}), dict):
            raise ValueError(f"config section [{section}] must be a table of settings, got "
                             f"{table[section]!r}; write it as [{section}] followed by name = value lines")
        values = {k.replace("-", "_"): parse_value(section, k.replace("-", "_"), v)
                  for k, v in table.get(section, {}).items()}
        parts[section] = cls(**values)
    return TrainConfig(**parts)


def _section_of(name: str) -> str | None:
    """The section a setting named ``name`` belongs to, if exactly one has it."""
    owners = [s for s, cls in SECTIONS.items() if name in {f.name for f in dataclasses.fields(cls)}]
    return owners[0] if len(owners) == 1 else None


def merge(base: dict[str, dict[str, Any]], overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for section, values in base.items():
        if not isinstance(values, dict):
            hint = (f"a setting must be inside its section: write [{_section_of(section)}] and then {section} = "
                    f"{values!r}" if _section_of(section) else f"write [{section}] followed by name = value lines")
            raise ValueError(f"config: {section} = {values!r} is not a section; {hint}")
    out = {k: dict(v) for k, v in base.items()}
    for section, values in overrides.items():
        out.setdefault(section, {}).update(values)
    return out


def to_toml(cfg: TrainConfig) -> str:
    return toml_text(cfg.to_dict())


def field_specs() -> list[tuple[str, str, str, Any]]:
    """(section, field, help, default) of every setting, for the command line."""
    out = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append((section, f.name, f.metadata.get("help", ""), default))
    return out
