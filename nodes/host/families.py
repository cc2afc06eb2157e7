"""The model families ProGRPO trains inside ComfyUI: one table, and the structural rules it rests on.

A MODEL's family is found from its ComfyUI model config (``type(model.model_config).__name__``, the
class ComfyUI's detection picked in ``comfy/supported_models.py``) and its prediction type. The
table gives what a run needs beyond the samplers' maths: the guidance scale and guidance value the
family is used with, whether it takes a negative prompt, the block layers that fuse attention and
MLP, whether its latents are video, and the step count it is usually sampled with.

LoRA targets are found from the architecture, the same way for every family:

* the **blocks** are the network's repeated blocks: the modules one level down, looking through
  containers (``ModuleList``, ``Sequential``, ``ModuleDict``), that sit inside a container and hold
  Linear layers (Flux's double and single blocks, SD3's joint blocks, a UNet's ResBlocks and
  transformers, Lumina's refiners and layers, Wan's blocks, …) — the modules gradient checkpointing
  wraps at depth 1;
* inside a block, a Linear layer is **attention** when a module on its path is named like one
  (``attn``, ``img_attn``, ``self_attn``, ``attn1``, ``attention``) or is an ``…Attention`` class,
  and **MLP** when one is named ``mlp``, ``ffn``, ``ff``/``ff_i``, ``feed_forward``, ``experts``
  (or is a ``FeedForward``/``Mlp``/``MoE`` class); modulation, norm and embedding layers are neither;
* a family's ``fused`` layers compute attention and MLP in one matrix (Flux's single blocks:
  ``linear1``, ``linear2``) and count as both.

Presets: ``attention``; ``attention+mlp``; ``all linear`` (every Linear layer of the network). A
family that is not in the table is trained by the same structural rules, and a preset that finds
nothing is refused with what was looked for and what was found — never a run with no trainable layer.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable

from torch import nn

TARGET_PRESETS = ("attention", "attention+mlp", "all linear")
_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)
_ATTN_NAME = re.compile(r"(^|_)(attn\d*|attention)($|_)")
_MLP_NAME = re.compile(r"(^|_)(mlp|ffn|ff|feed_forward|experts|shared_experts)($|_|\d)")
_ATTN_CLASS = re.compile(r"attention", re.I)
_MLP_CLASS = re.compile(r"feedforward|^mlp$|mlp$|^moe|moe$|swiglu|geglu", re.I)


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family as ProGRPO trains it."""

    name: str                         # as the docs and messages name it
    configs: tuple[str, ...]          # ComfyUI model config classes (comfy.supported_models)
    cfg: float                        # guidance scale by default (1: guidance-distilled or cfg-free)
    prediction: str = ""              # "" any; "v" only for v-prediction models (SDXL v-pred)
    guidance: float | None = None     # guidance embedding value when the conditioning sets none
    negative: bool = True             # sampled with a negative prompt (cfg > 1)
    fused: tuple[str, ...] = ()       # in-block Linear names that fuse attention and MLP
    video: bool = False               # latents (B, C, T, H, W)
    steps: int = 0                    # the step count it is usually sampled with (few-step models)
    note: str = ""                    # how it is used, for the docs and tooltips
    listed: bool = True               # False: a family by structure only (not in the table)

    @property
    def few_step(self) -> bool:
        return 0 < self.steps <= 8


# ComfyUI's own templates and the model cards give the guidance each is used with.
FAMILIES: tuple[Family, ...] = (
    Family("SD1.x", ("SD15", "SD20", "SD21UnclipL", "SD21UnclipH"), 4.5, note="ε-prediction UNet, negative prompt"),
    Family("SDXL v-prediction", ("SDXL",), 4.5, prediction="v",
           note="v-prediction fine-tunes (NoobAI-style), negative prompt"),
    Family("SDXL", ("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"), 4.5,
           note="ε-prediction UNet, negative prompt"),
    Family("SD3.x", ("SD3",), 4.5, note="MMDiT, negative prompt"),
    Family("Flux.1", ("Flux",), 1.0, guidance=3.5, negative=False, fused=("linear1", "linear2"),
           note="guidance-distilled: cfg 1, guidance 3.5 (FluxGuidance)"),
    Family("Flux.1 schnell", ("FluxSchnell",), 1.0, negative=False, fused=("linear1", "linear2"), steps=4,
           note="timestep-distilled: 4 steps, cfg 1"),
    Family("Flux.2", ("Flux2",), 1.0, guidance=4.0, negative=False, fused=("linear1", "linear2"),
           note="dev: guidance-distilled (guidance 4); klein: distilled, cfg 1, no guidance input"),
    Family("Chroma", ("Chroma",), 4.0, fused=("linear1", "linear2"), note="Flux-derived, real cfg with a negative prompt"),
    Family("Z-Image", ("ZImage",), 1.0, negative=False, steps=8,
           note="Turbo: 8 steps, cfg 1 (the base model: cfg about 4 with a negative prompt)"),
    Family("Lumina 2", ("Lumina2",), 4.0, note="NextDiT, negative prompt"),
    Family("Qwen-Image", ("QwenImage",), 2.5, note="MMDiT, cfg 2.5 with a negative prompt"),
    Family("HiDream", ("HiDream",), 5.0, note="full: cfg 5 with a negative prompt (dev/fast: cfg 1)"),
    Family("Wan 2.1", ("WAN21_T2V",), 6.0, video=True, note="text-to-video, negative prompt (Wan 2.2 14B loads as this)"),
    Family("Wan 2.2 5B", ("WAN22_T2V",), 5.0, video=True, note="text(-image)-to-video, 48-channel latents"),
)


def family_of(config_name: str, v_prediction: bool = False) -> Family:
    """The table's family for a ComfyUI model config class name, or an unlisted one by structure."""
    for f in FAMILIES:
        if config_name in f.configs and (f.prediction != "v" or v_prediction):
            return f
    return Family(f"unlisted ({config_name})", (config_name,), 4.5, listed=False,
                  note="not in ProGRPO's family table: LoRA targets by structure, cfg 4.5")


def listed_families() -> str:
    return ", ".join(f.name for f in FAMILIES)


# ---- LoRA targets from the architecture -------------------------------------------------------

def blocks(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The network's repeated blocks (see the module docstring): ``(path, module)`` in order."""
    out: list[tuple[str, nn.Module]] = []

    def walk(m: nn.Module, prefix: str, inside: bool) -> None:
        for name, child in m.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, _CONTAINERS):
                walk(child, path + ".", True)
            elif inside and any(True for _ in child.children()) and _linears(child):
                out.append((path, child))

    walk(net, "", False)
    return out


def _linears(m: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, c) for n, c in m.named_modules() if is_linear(c)]


def is_linear(m: nn.Module) -> bool:
    """A Linear layer with a 2-D weight (ComfyUI's ops, fp8 and GGUF layers included)."""
    if not isinstance(m, nn.Linear):
        return False
    w = getattr(m, "weight", None)
    return w is not None and len(tuple(w.shape)) == 2


def _kinds(block: nn.Module, rel: str, fused: Iterable[str]) -> set[str]:
    """What an in-block Linear layer at ``rel`` is: {"attention"}, {"mlp"}, both (fused) or neither."""
    parts = rel.split(".")
    kinds = set()
    m = block
    for part in parts[:-1]:
        m = m._modules[part]
        cls = type(m).__name__
        if _ATTN_NAME.search(part) or _ATTN_CLASS.search(cls):
            kinds.add("attention")
        if _MLP_NAME.search(part) or _MLP_CLASS.search(cls):
            kinds.add("mlp")
    if "attention" in kinds and "mlp" in kinds:
        kinds = {"attention"}  # an MLP inside attention (e.g. a gate) belongs to the attention
    if parts[-1] in fused and len(parts) == 1:
        kinds = {"attention", "mlp"}
    return kinds


def target_modules(net: nn.Module, preset: str, family: Family | None = None) -> list[str]:
    """Module paths (relative to ``net``) of the Linear layers a LoRA preset adapts."""
    if preset not in TARGET_PRESETS:
        raise ValueError(f"LoRA targets {preset!r} unknown; expected one of {', '.join(TARGET_PRESETS)}")
    if preset == "all linear":
        out = [n for n, m in net.named_modules() if is_linear(m)]
        if not out:
            raise ValueError(f"{_who(net, family)} has no Linear layer: ProGRPO's LoRA adapts Linear layers, so "
                             "there is nothing to train")
        return out
    wanted = {"attention"} if preset == "attention" else {"attention", "mlp"}
    fused = family.fused if family is not None else ()
    found = blocks(net)
    out = []
    for path, block in found or [("", net)]:  # no blocks by structure: the layers' names alone decide
        for rel, _ in _linears(block):
            if _kinds(block, rel, fused) & wanted:
                out.append(f"{path}.{rel}" if path else rel)
    if not out:
        raise ValueError(_nothing_found(net, family, preset, found))
    return out


def _who(net: nn.Module, family: Family | None) -> str:
    name = family.name if family is not None else type(net).__name__
    return f"the model {name} ({type(net).__name__})"


def _nothing_found(net: nn.Module, family: Family | None, preset: str, found) -> str:
    what = "attention layers" if preset == "attention" else "attention or MLP layers"
    looked = ("(Linear layers under a module named attn/attention or an …Attention class"
              + (", or mlp/ffn/ff/feed_forward/experts" if preset != "attention" else "") + ")")
    if not found:
        where = "no repeated blocks holding Linear layers (modules inside a ModuleList/Sequential)"
    else:
        containers = sorted({p.rsplit(".", 1)[0] for p, _ in found})
        where = f"{len(found)} block(s) in {', '.join(containers)} but no {what} in them"
    listed = "" if family is not None and family.listed else f" It is not one of ProGRPO's families ({listed_families()})."
    return (f"LoRA targets {preset!r}: {_who(net, family)} has {where} {looked}.{listed} "
            "Choose targets 'all linear' to adapt every Linear layer of the network.")


def summary(net: nn.Module, targets: list[str]) -> str:
    """``"24 layers in 2 blocks"``-style description of a target list (for messages)."""
    roots = {p for p, _ in blocks(net)}
    inside = {next((r for r in roots if t.startswith(r + ".")), None) for t in targets} - {None}
    return f"{len(targets)} Linear layer(s) in {len(inside)} block(s)"
