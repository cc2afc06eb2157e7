"""The nodes' widget vocabulary, and the GRPO LoRA Trainer's widgets: one table, from which the
node's inputs, the config a press of the node builds and the words its messages use are all made.

A row is a :class:`Widget`: its name (what saved workflows hold, by position: append new rows at
the end, optional), its kind and default, its tooltip, the config settings it sets and the widget
value that means ``auto`` (the config's ``None``). Adding a widget for a config field is one row.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from progrpo_core.config import MAX_SEED, TrainConfig, build_config
from progrpo_core.devices import PRECISIONS
from progrpo_core.methods import DEFAULT_METHOD, METHODS, auto_lr_help, presets_text
from progrpo_core.samplers import DEFAULT_SAMPLER, SAMPLER_SPECS, noise_help, sampler_help
from progrpo_core.training.state import Words

from .host.model import TARGET_PRESETS
from .trace import finite_widgets

CATEGORY = "ProGRPO"
SEED_MAX = 0xFFFFFFFFFFFFFFFF
SAMPLER_CHOICES = ("auto", *SAMPLER_SPECS)
_UNSET = object()

SAMPLER_TIP = (f"exploration sampler with log-probabilities: auto = {DEFAULT_SAMPLER['flow']} for flow models (SD3, "
               f"Flux), {DEFAULT_SAMPLER['eps']} for eps/v models (SD1.x, SDXL); {sampler_help()}")
NOISE_TIP = f"SDE noise level a (flow samplers) or DDIM eta; -1 = the sampler's default ({noise_help()})"
CFG_TIP = ("classifier-free guidance scale in sampling and training (1 = off); 0 = the model family's default: 1 for "
           "guidance-distilled and cfg-free models (Flux.1, Flux.2, Z-Image-Turbo; Flux's guidance comes from "
           "FluxGuidance), 2.5 Qwen-Image, 4 Chroma and Lumina 2, 5 HiDream, 6 Wan, 4.5 SD1.x/SDXL/SD3 and others")
_PRESETS = f"presets at T = 10 (checkpoints and SDE windows scale with T): {presets_text()}"


@dataclasses.dataclass(frozen=True)
class Widget:
    name: str
    kind: Any                         # "INT", "FLOAT", "BOOLEAN", "STRING", or a tuple of choices
    default: Any
    tooltip: str
    settings: tuple[str, ...] = ()    # the config settings it sets ("section.field"); () = the node's own
    auto: Any = _UNSET                # the widget value that means auto (the config's None)
    optional: bool = False            # in the node's optional inputs (rows added later are)
    opts: dict = dataclasses.field(default_factory=dict)   # min, max, step, multiline …
    value: Callable[[Any, dict], Any] | None = None   # the settings' value from this widget (and the others)
    said: str | None = None           # how messages name the settings (default: the widget's name)

    def input(self) -> tuple:
        kind = list(self.kind) if isinstance(self.kind, tuple) else self.kind
        return kind, {"default": self.default, **self.opts, "tooltip": self.tooltip}

    def setting_value(self, v: Any, values: dict[str, Any]) -> Any:
        if self.value is not None:
            return self.value(v, values)
        return None if self.auto is not _UNSET and v == self.auto else v


def _positive_or_auto(v, _):
    return int(v) if v > 0 else None


WIDGETS: tuple[Widget, ...] = (
    Widget("method", tuple(METHODS), DEFAULT_METHOD, "; ".join(f"{p.name}: {p.summary}" for p in METHODS.values()),
           ("grpo.method",)),
    Widget("epochs", "INT", 10, "sampling rounds (each: sample, score, prune, train)", ("run.epochs",),
           opts={"min": 1, "max": 100000}),
    Widget("prompts_per_epoch", "INT", 1, "B: prompts per epoch, each with a whole group", ("grpo.prompts_per_epoch",),
           opts={"min": 1, "max": 256}),
    Widget("steps", "INT", 10, "sampling steps T per trajectory", ("sampler.steps",), opts={"min": 2, "max": 1000}),
    Widget("group_size", "INT", 0, "G_max per prompt; 0 = the method's preset. " + _PRESETS, ("schedule.group_size",),
           opts={"min": 0, "max": 512}, value=_positive_or_auto),
    Widget("checkpoints", "STRING", "", "prune after this many steps (e.g. '5,7' of T=10), each in 1..T-1; empty = "
           "the method's preset", ("schedule.checkpoints",), value=lambda v, _: v.strip() or None),
    Widget("keep", "STRING", "", "survivors after each checkpoint (e.g. '24,12'); empty = the method's preset",
           ("schedule.keep",), value=lambda v, _: v.strip() or None),
    Widget("sampler", SAMPLER_CHOICES, "auto", SAMPLER_TIP, ("sampler.sampler",), auto="auto"),
    Widget("noise_level", "FLOAT", -1.0, NOISE_TIP, ("sampler.noise_level",), opts={"min": -1.0, "max": 10.0, "step": 0.01},
           value=lambda v, _: None if v < 0 else float(v)),
    Widget("cfg", "FLOAT", 0.0, CFG_TIP, ("sampler.cfg",), opts={"min": 0.0, "max": 100.0, "step": 0.1},
           value=lambda v, _: float(v) if v > 0 else None),
    Widget("learning_rate", "FLOAT", 0.0, f"AdamW learning rate of the LoRA; 0 = auto ({auto_lr_help()})",
           ("grpo.lr",), opts={"min": 0.0, "max": 1.0, "step": 0.0000001}, value=lambda v, _: float(v) if v > 0 else None),
    Widget("rank", "INT", 8, "LoRA rank", ("lora.rank",), opts={"min": 1, "max": 512}),
    Widget("alpha", "FLOAT", 16.0, "LoRA alpha (scale = alpha / rank)", ("lora.alpha",),
           opts={"min": 0.01, "max": 4096.0, "step": 0.01}),
    Widget("targets", TARGET_PRESETS, "attention", "layers that get a LoRA, found from the model's architecture: the "
           "attention projections of its blocks (with Flux's fused single-block layers), those and the blocks' MLPs, or "
           "every linear layer"),
    Widget("kl_beta", "FLOAT", 0.0, "weight of the KL penalty to the model without LoRA (0 = off; costs one more "
           "forward)", ("grpo.kl_beta",), opts={"min": 0.0, "max": 100.0, "step": 0.001}),
    Widget("seed", "INT", 0, "seed of the noise, prompt order and LoRA initialisation", ("run.seed",),
           opts={"min": 0, "max": MAX_SEED}),
    Widget("gradient_checkpointing", "BOOLEAN", True, "recompute activations in backward: less memory, more time "
           "(needed for Flux, whose blocks work in place); depth in checkpoint_depth"),
    Widget("run_name", "STRING", "progrpo", "name of the autosave file "
           "models/loras/progrpo/autosave/<run_name>.safetensors and of the run folder output/progrpo/<run_name>"),
    Widget("resume", "BOOLEAN", False, "continue this run_name's run from its newest checkpoint (its LoRA, optimizer "
           "and epoch count); off: a new run, refused if run_name already holds one (see overwrite)"),
    Widget("save_every", "INT", 1, "autosave every N epochs (0 = only at the end or when stopped)",
           ("run.save_every", "run.checkpoint_every"), opts={"min": 0, "max": 100000}),
    # optional inputs
    Widget("precision", PRECISIONS, "auto", "the model's compute dtype while training: auto = bf16 on GPUs that have "
           "it, else fp16 with loss scaling; fp32 on the CPU. The LoRA, its optimizer and EMA stay fp32",
           ("run.precision",), optional=True),
    Widget("sample_micro_batch", "INT", 0, "rows per model call while sampling (a guided row counts two); 0 = chosen "
           "from the free memory by the planner", ("run.sample_micro_batch",), optional=True,
           opts={"min": 0, "max": 4096}, value=_positive_or_auto),
    Widget("train_micro_batch", "INT", 0, "rows per forward/backward in training (gradients accumulate); 0 = chosen "
           "from the free memory by the planner", ("run.train_micro_batch",), optional=True,
           opts={"min": 0, "max": 4096}, value=_positive_or_auto),
    Widget("checkpoint_depth", "INT", 1, "gradient checkpointing at this module depth: 1 = the model's blocks (most "
           "memory saved), 2 = their parts", ("run.gradient_checkpointing",), optional=True, opts={"min": 1, "max": 4},
           value=lambda v, values: int(v) if values["gradient_checkpointing"] else 0,
           said="gradient_checkpointing / checkpoint_depth"),
    Widget("overwrite", "BOOLEAN", False, "start run_name over if it already holds a run (deletes that run's "
           "checkpoints); off: such a run_name is refused unless 'resume' is on", optional=True),
    Widget("proxy_scale", "FLOAT", 1.0, "the pruning previews are decoded from the latent pooled to this fraction of "
           "its size: 1 = full size; 0.5 at 512² (0.25 at 1024²) gives 256² previews for reward models that look at "
           "224², about a quarter (a sixteenth) of the decode's cost", ("schedule.proxy_scale",), optional=True,
           opts={"min": 0.05, "max": 1.0, "step": 0.05}),
)
BY_NAME = {w.name: w for w in WIDGETS}

# Settings the node fixes: evaluation is the comparison workflow's job, two checkpoints are kept,
# and the reward model's memory is ComfyUI's to manage (nodes.host.reward).
NODE_SETTINGS = {"run": {"eval_every": 0, "keep_checkpoints": 2}, "reward": {"offload": False}}


def input_types(required: dict, optional: dict) -> dict:
    """The node's INPUT_TYPES: the sockets given, the widgets in the table's order."""
    widgets = {w.name: w.input() for w in WIDGETS if not w.optional}
    extra = {w.name: w.input() for w in WIDGETS if w.optional}
    return {"required": {**required, **widgets}, "optional": {**extra, **optional}, "hidden": {"unique_id": "UNIQUE_ID"}}


def widget_values(given: dict[str, Any]) -> dict[str, Any]:
    """Every widget's value: the given ones, the table's defaults for the rest."""
    unknown = set(given) - set(BY_NAME)
    if unknown:
        raise TypeError(f"unknown trainer widget(s) {sorted(unknown)}")
    return {w.name: given.get(w.name, w.default) for w in WIDGETS}


def build_train_config(*, reward_spec: str, separate_reward_norm: bool = False, model_name: str = "ComfyUI MODEL",
                       run: dict[str, Any] | None = None, **widgets) -> TrainConfig:
    """A validated TrainConfig from the trainer node's widget values (the table's defaults for those
    not given), its reward and MODEL, and ``run`` settings the host fixes (the run folder). Errors
    name the widgets."""
    values = widget_values(widgets)
    finite_widgets(**{w.name: values[w.name] for w in WIDGETS if isinstance(values[w.name], float)})
    table: dict[str, dict[str, Any]] = {"model": {"comfyui": "(inside ComfyUI)", "checkpoint": model_name},
                                        "reward": {"name": reward_spec, **NODE_SETTINGS["reward"]},
                                        "grpo": {"separate_reward_norm": bool(separate_reward_norm)},
                                        "run": {**NODE_SETTINGS["run"], **(run or {})}}
    for w in WIDGETS:
        for setting in w.settings:
            section, name = setting.split(".")
            table.setdefault(section, {})[name] = w.setting_value(values[w.name], values)
    try:
        return build_config(table)
    except ValueError as e:
        raise ValueError(in_widget_words(str(e))) from None


# the trainer node's widgets (and inputs) by the config setting each one sets
SETTING_WIDGETS = {"model.checkpoint": "the MODEL input", "reward.name": "the reward input",
                   "grpo.separate_reward_norm": "the reward input's normalise_separately (Combine Rewards)",
                   **{s: w.said or w.name for w in WIDGETS for s in w.settings}}

# the loop's messages in the node's words
NODE_WORDS = Words(settings={**SETTING_WIDGETS, "run.max_bad_updates": "the limit of bad updates in a row",
                             "run.checkpoint_every": "save_every", "grpo.grad_clip": "gradient clipping"},
                   resume_how="'resume' on (same run_name)",
                   restart_how="start it over with 'overwrite' on (same run_name, 'resume' off)")


def in_widget_words(text: str) -> str:
    """A config message with its ``section.field`` names replaced by the widgets that set them."""
    names = sorted(SETTING_WIDGETS, key=len, reverse=True)
    return re.sub("|".join(re.escape(n) for n in names) + r"\b", lambda m: SETTING_WIDGETS[m.group(0)], text)
