"""What the nodes pass between them, and the host-independent work behind them.

Custom socket types (their names are frozen: saved workflows store them):

* ``PROGRPO_GROUP``   a :class:`GroupTrace`, one expanded group's trajectory record;
* ``PROGRPO_REWARD``  a :class:`RewardHandle`, a loaded reward model;
* ``PROGRPO_SCORES``  a :class:`Scores`, rewards of a batch of images;
* ``PROGRPO_PROMPTS`` a list of prompt strings;
* ``LORA_MODEL``      ComfyUI's own type (a dict of LoRA tensors), so the stock SaveLoRA and
                      LoraModelLoader nodes accept the trainer's LoRA too.

Nothing here imports ComfyUI: these functions run on any core Denoiser (the CI tests drive them
with the built-in digits model).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from progrpo_core import ovf
from progrpo_core.group import sample_group
from progrpo_core.methods import PruneSchedule
from progrpo_core.rewards import Reward, check_scores

GROUP = "PROGRPO_GROUP"
REWARD = "PROGRPO_REWARD"
SCORES = "PROGRPO_SCORES"
PROMPTS = "PROGRPO_PROMPTS"
LORA = "LORA_MODEL"


@dataclasses.dataclass
class RewardHandle:
    """A loaded reward and the spec it was built from (``digit``, ``pickscore*0.7,hpsv2.1*0.3``…)."""

    reward: Reward
    spec: str
    device: str = "cpu"
    separate_norm: bool = False  # a combination whose parts' advantages are normalised one by one

    def total(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Every component's scores plus the trained one under ``self.reward.total_key``."""
        out = self.reward.evaluate(images, list(prompts))
        for k, v in out.items():
            check_scores(v, f"reward {k!r}")
        return out


@dataclasses.dataclass
class Scores:
    """Rewards of N images: ``values`` (N,) is what selection uses, ``components`` every part."""

    values: torch.Tensor
    prompts: list[str]
    components: dict[str, torch.Tensor]
    reward: str

    def summary(self) -> str:
        """Two short lines for the node: the mean and spread, the best and the worst image."""
        v = self.values
        lines = [f"{self.reward}: mean {float(v.mean()):.4g} ± {float(v.std(unbiased=False)):.3g}, {len(v)} image(s)"]
        if len(v) > 1:
            hi, lo = int(v.argmax()), int(v.argmin())
            lines.append(f"best #{hi} {float(v[hi]):.4g} · worst #{lo} {float(v[lo]):.4g}")
        return "\n".join(lines)

    def details(self) -> str:
        """Everything, for the prompt history: every image's score, one per line, and each part's mean."""
        v = self.values
        lines = [f"{self.reward}: mean {float(v.mean()):.6g}, std {float(v.std(unbiased=False)):.6g} over {len(v)} image(s)"]
        lines += [f"#{i}: {float(s):.6g}  {p}" for i, (s, p) in enumerate(zip(v.tolist(), self.prompts))]
        for name, c in self.components.items():
            if name != self.reward and len(self.components) > 1:
                lines.append(f"{name}: mean {float(c.mean()):.6g}")
        return "\n".join(lines)


def score_images(handle: RewardHandle, images: torch.Tensor, prompts: Sequence[str]) -> Scores:
    """Score core-layout images (N, 3, H, W); one prompt for all, or one per image."""
    prompts = list(prompts)
    if len(prompts) == 1 and images.shape[0] > 1:
        prompts = prompts * images.shape[0]
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts; give one prompt, or one per image")
    out = handle.total(images, prompts)
    key = handle.reward.total_key
    return Scores(out[key].float().cpu(), prompts, {k: v.float().cpu() for k, v in out.items()}, key)


# ---- schedules --------------------------------------------------------------------------------

def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``"5, 7"`` → ``(5, 7)``; empty text → ``()``."""
    parts = [p.strip() for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{what} {text!r} must be whole numbers separated by commas, e.g. '5,7'") from None


def prune_schedule(group_size: int, steps: int, checkpoints: str, keep: str, selector: str = "ovf") -> PruneSchedule:
    """A validated schedule from the sampler node's widgets (messages name the fix)."""
    cps, ks = parse_ints(checkpoints, "checkpoints"), parse_ints(keep, "keep")
    sched = PruneSchedule(group_size=int(group_size), checkpoints=cps, keep=ks, selector=selector)
    sched.validate(int(steps))
    return sched


# ---- the expanded group ------------------------------------------------------------------------

@dataclasses.dataclass
class GroupTrace:
    """One prompt's expanded group, as sampled.

    ``proxies[i]`` is step ``i``'s one-step x0 projection of every row alive at that step
    (``proxy_rows[i]`` their row ids in 0..G_max−1), already in output LATENT space; the
    survivors' per-step latents, log-probs and sigmas are the core's rollout."""

    prompt: str
    family: str
    group_size: int
    sigmas: torch.Tensor                  # (T+1,)
    proxies: list[torch.Tensor]           # T × (A_i, C, H, W) output space
    proxy_rows: list[torch.Tensor]        # T × (A_i,)
    checkpoints: list[dict]               # step, sigma, rewards (G_prev,), row_id, kept
    survivors: torch.Tensor               # (K,) row ids
    latents: torch.Tensor                 # (K, T+1, C, H, W) native space
    log_probs: torch.Tensor               # (K, T)
    compute: dict

    @property
    def steps(self) -> int:
        return self.sigmas.shape[0] - 1

    def proxy(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 proxies, row ids) of the rows alive at ``step``."""
        if not 0 <= step < self.steps:
            raise ValueError(f"step {step} is outside the group's 0..{self.steps - 1} ({self.steps} sampling steps)")
        return self.proxies[step], self.proxy_rows[step]

    def describe(self) -> str:
        """Two short lines for the node."""
        funnel = " → ".join(str(n) for n in [self.group_size] + [len(c["kept"]) for c in self.checkpoints])
        cps = ", ".join(str(c["step"]) for c in self.checkpoints)
        return (f"group {funnel}" + (f" at steps {cps}" if cps else "") + f" of {self.steps}\n"
                f"{len(self.survivors)} survivors")

    def details(self) -> str:
        """Everything, for the prompt history: each checkpoint's kept rows and the survivors."""
        lines = [f"group of {self.group_size}, {self.steps} steps"]
        lines += [f"step {c['step']}: kept {list(c['kept'])}" for c in self.checkpoints]
        lines.append(f"survivors {self.survivors.tolist()}")
        return "\n".join(lines)


def record_group(model, prompt: str, seed: int, steps: int, schedule: PruneSchedule, sampler: str,
                 noise_level: float, cfg: float, score_fn=None,
                 to_output: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                 on_step: Callable[[int, int], None] | None = None) -> GroupTrace:
    """Sample one prompt's expanded group with the core sampler, keeping every step's proxies.

    ``to_output`` maps x0 estimates (model space) to the output latent space; ``on_step(i, T)``
    is called after each model call (progress bars)."""
    proxies: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []

    def callback(info: dict) -> None:
        proxies.append(to_output(info["x0"].detach().float()).cpu())
        rows.append(info["row_id"].clone())
        if on_step is not None:
            on_step(info["step"] + 1, steps)

    ro = sample_group(model, [prompt], [int(seed)], steps, schedule, sampler, noise_level, cfg,
                      score_fn=score_fn, select_generator=torch.Generator().manual_seed(int(seed)), callback=callback)
    checkpoints = [{"step": c["step"], "sigma": c["sigma"], "rewards": c["rewards"][0].clone(),
                    "row_id": c["row_id"][0].clone(), "kept": c["kept"][0].clone()} for c in ro.checkpoints]
    return GroupTrace(prompt=prompt, family=model.family, group_size=schedule.group_size, sigmas=ro.sigmas.cpu(),
                      proxies=proxies, proxy_rows=rows, checkpoints=checkpoints, survivors=ro.row_id.cpu(),
                      latents=ro.latents.detach().cpu(), log_probs=ro.log_probs.detach().cpu(),
                      compute=ro.compute.as_dict())


# ---- pruning on given scores --------------------------------------------------------------------

def prune(values: torch.Tensor, prompts: Sequence[str], keep: Sequence[int], selector: str = "ovf",
          seed: int = 0) -> torch.Tensor:
    """Indices (ascending) kept by successive selections ``keep = (k1, k2, …)`` applied within
    each prompt's group of ``values`` (N,)."""
    if not keep:
        raise ValueError("keep is empty; give the number of images to keep, e.g. '4' (or '6,4' for two rounds)")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    gen = torch.Generator().manual_seed(int(seed))
    kept: list[int] = []
    for p, idx in groups.items():
        current = torch.tensor(idx)
        for k in keep:
            if k > len(current):
                raise ValueError(f"keep {k} of {len(current)} image(s) for prompt {p[:40]!r}: a selection cannot keep "
                                 f"more than it has; make each number at most the group size ({len(idx)}) and shrinking")
            current = current[ovf.select(selector, values[current], int(k), gen)]
        kept += current.tolist()
    return torch.tensor(sorted(kept), dtype=torch.long)


def kept_json(kept: torch.Tensor) -> str:
    return json.dumps([int(i) for i in kept])


# ---- files ----------------------------------------------------------------------------------------

MAX_NAME = 150  # characters per file or folder name the nodes make (room for _00001_, .safetensors, temp names)


def finite_widgets(**values: float) -> None:
    """Refuse NaN or infinite numbers a workflow's JSON can carry past the widgets' min/max (a NaN
    compares false with both, and would silently mean "auto")."""
    import math

    for name, v in values.items():
        if v is not None and not math.isfinite(float(v)):
            raise ValueError(f"{name}={v} is not a number; set it in the node (the workflow file holds {v} for it)")


def safe_relative_name(name: str, what: str = "filename") -> str:
    """A relative file name without extension, refusing absolute paths, ``..`` and names longer
    than file systems allow."""
    text = str(name).strip().replace("\\", "/")
    if text.endswith(".safetensors"):
        text = text[: -len(".safetensors")]
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or text.startswith("/") or any(p == ".." for p in parts):
        raise ValueError(f"{what} {name!r} must be a relative name like 'progrpo/my_lora' (no '..', not absolute)")
    long = [p for p in parts if len(p.encode()) > MAX_NAME]
    if long or len(parts) > 16:
        raise ValueError(f"{what} {str(name)[:40]!r}… is too long: "
                         + (f"a name of {len(long[0])} characters, at most {MAX_NAME} per file or folder name"
                            if long else f"{len(parts)} folders deep, at most 16") + "; use a shorter one")
    bad = sorted({c for p in parts for c in p if not (c.isalnum() or c in "-_. ")})
    if bad:
        raise ValueError(f"{what} {name!r} contains {''.join(bad)!r}; use letters, digits, '-', '_', '.' and '/'")
    return "/".join(parts)


def file_in_folder(base: Path, name: str, what: str, where: str) -> Path:
    """The existing file ``name`` inside the folder ``base``: a relative name without ``..``,
    ``~`` or a drive, that resolves (symlinks followed) inside ``base``. Refusals and "not found"
    never say anything about paths outside ``base``."""
    text = str(name).strip().replace("\\", "/")
    if (not text or text.startswith(("/", "~")) or (len(text) > 1 and text[1] == ":")
            or any(p == ".." for p in text.split("/"))):
        raise ValueError(f"{what} {name!r} must be a file name inside {where} (relative, without '..', '~' or a "
                         "leading '/'); put the file there")
    if len(text) > 1024 or any(len(p.encode()) > 255 for p in text.split("/")):
        raise ValueError(f"{what} {text[:40]!r}… ({len(text)} characters) is too long to be a file name inside "
                         f"{where} (at most 255 characters per name); put the file there under a shorter name")
    root = Path(base).resolve()
    try:
        path = (root / text).resolve()
        found = root in path.parents and path.is_file()
    except OSError:  # (a name the file system refuses)
        found = False
    if not found:
        raise ValueError(f"{what} {text!r} not found in {where}; put the file there")
    return path


def confined_path(base: Path, rel: str, what: str, where: str) -> Path:
    """``base/rel`` for writing, inside ``base``: its existing folders are resolved (symlinks
    followed, as :func:`file_in_folder` reads) and must stay inside ``base``; missing ones are made,
    one by one, never through a link. ``rel`` is a :func:`safe_relative_name`."""
    from progrpo_core.io import make_folder

    Path(base).mkdir(parents=True, exist_ok=True)  # (ComfyUI's own folder, missing in a fresh install)
    root = Path(base).resolve()
    folder = root
    for part in rel.split("/")[:-1]:
        nxt = folder / part
        if os.path.lexists(nxt):
            real = nxt.resolve()
            if real != root and root not in real.parents:
                raise ValueError(f"{what} {rel!r}: the folder {part!r} in {where} is a link leading outside it; the "
                                 f"pack writes only inside {where}: choose another name")
            if not real.is_dir():
                raise ValueError(f"{what} {rel!r}: {part!r} in {where} is a file, not a folder; choose another name")
            folder = real
        else:
            folder = make_folder(nxt)
    return folder / rel.split("/")[-1]


def save_lora_tensors(lora: dict, base: Path, filename: str, overwrite: bool) -> Path:
    """Write a LORA_MODEL to ``base/<filename>.safetensors`` (or ``<filename>_00001_.safetensors``,
    the next free number, when ``overwrite`` is off) with its header, atomically, inside ``base``
    (:func:`confined_path`)."""
    from progrpo_core.io import save_safetensors
    from progrpo_core.lora_format import retitled

    if not isinstance(lora, dict) or not lora:
        raise ValueError("the LoRA is empty or not a LORA_MODEL; connect the trainer's 'lora' output")
    rel = safe_relative_name(filename)
    stem = confined_path(base, rel, "filename", "models/loras")
    if overwrite:
        path = stem.with_name(stem.name + ".safetensors")
    else:
        n = 1
        while os.path.lexists(path := stem.with_name(f"{stem.name}_{n:05d}_.safetensors")):
            n += 1
    meta = {str(k): str(v) for k, v in (getattr(lora, "metadata", None) or {}).items()}
    save_safetensors({k: v for k, v in lora.items()}, path, retitled(meta, Path(rel).name))
    return Path(base) / Path(rel).parent / path.name  # the name as given (the loaders list links' names too)
