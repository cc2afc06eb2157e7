"""Finding reward-model weights on disk and loading them safely.

Nothing here downloads. A reward's weights come from, in this order:

1. the ``path`` the user gave (a file, or a folder holding the expected file or folder);
2. the ``search_dirs`` the caller passes (inside ComfyUI: ``models/reward_models``);
3. the folders in the ``PROGRPO_REWARD_DIR`` environment variable (``os.pathsep``-separated).

If a path is given, only it is searched: a typo must not silently fall back to another copy.
When nothing is found, :class:`RewardWeightsNotFound` names every path tried and what to download.

Checkpoints are read with ``safetensors`` or ``torch.load(weights_only=True)``; a pickle that needs
arbitrary Python objects is refused (:class:`UnsafeCheckpointError`), never unpickled.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

ENV_VAR = "PROGRPO_REWARD_DIR"


class RewardWeightsNotFound(FileNotFoundError):
    """No weights for a reward at any of the searched paths."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint that ``torch.load(weights_only=True)`` refuses to read."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not fit the model it was given to."""


@dataclass(frozen=True)
class WeightSource:
    """Where a reward's weights live and how to get them.

    ``names`` are the file or folder names looked for inside each search directory, first match
    wins; ``folder`` says whether the target is a folder (a Hugging Face repo snapshot) or a file.
    """
    names: tuple[str, ...]
    folder: bool
    download: str            # what to fetch, as a sentence fragment
    command: str = ""        # a download command with {dest} for the destination
    marker: str = ""         # for folders: a file that must exist inside (e.g. config.json)
    suggest: str = ""        # the name to download to, if not names[0] (which may be a conversion)

    @property
    def default_name(self) -> str:
        return self.suggest or self.names[0]


_HF = "hf download {repo} --local-dir {dest}"

# Keys are reward names and the names of companion weights some rewards need.
WEIGHT_SOURCES: dict[str, WeightSource] = {
    "pickscore": WeightSource(
        ("PickScore_v1",), folder=True, marker="config.json",
        download="the Hugging Face repo yuvalkirstain/PickScore_v1 (config.json, model weights, "
                 "tokenizer and preprocessor files)",
        command=_HF.format(repo="yuvalkirstain/PickScore_v1", dest="{dest}")),
    "hpsv2": WeightSource(
        ("HPS_v2_compressed.safetensors", "HPS_v2_compressed.pt",
         "HPSv2/HPS_v2_compressed.safetensors", "HPSv2/HPS_v2_compressed.pt"), folder=False,
        download="HPS_v2_compressed.pt from the Hugging Face repo xswu/HPSv2", suggest="HPS_v2_compressed.pt",
        command="hf download xswu/HPSv2 HPS_v2_compressed.pt --local-dir {parent}"),
    "hpsv2.1": WeightSource(
        ("HPS_v2.1_compressed.safetensors", "HPS_v2.1_compressed.pt",
         "HPSv2/HPS_v2.1_compressed.safetensors", "HPSv2/HPS_v2.1_compressed.pt"), folder=False,
        download="HPS_v2.1_compressed.pt from the Hugging Face repo xswu/HPSv2", suggest="HPS_v2.1_compressed.pt",
        command="hf download xswu/HPSv2 HPS_v2.1_compressed.pt --local-dir {parent}"),
    "clip": WeightSource(
        ("clip-vit-large-patch14", "CLIP-ViT-H-14-laion2B-s32B-b79K", "clip-vit-base-patch32"),
        folder=True, marker="config.json",
        download="a transformers CLIP model folder, e.g. the Hugging Face repo openai/clip-vit-large-patch14",
        command=_HF.format(repo="openai/clip-vit-large-patch14", dest="{dest}")),
    "aesthetic": WeightSource(
        ("sac+logos+ava1-l14-linearMSE.safetensors", "sac+logos+ava1-l14-linearMSE.pth",
         "aesthetic/sac+logos+ava1-l14-linearMSE.safetensors", "aesthetic/sac+logos+ava1-l14-linearMSE.pth"),
        folder=False, suggest="sac+logos+ava1-l14-linearMSE.pth",
        download="sac+logos+ava1-l14-linearMSE.pth from github.com/christophschuhmann/improved-aesthetic-predictor "
                 "(it also needs the CLIP ViT-L/14 folder 'clip-vit-large-patch14')",
        command="curl -L -o {dest} https://github.com/christophschuhmann/improved-aesthetic-predictor/"
                "raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"),
    "clip-vit-large-patch14": WeightSource(
        ("clip-vit-large-patch14",), folder=True, marker="config.json",
        download="the Hugging Face repo openai/clip-vit-large-patch14 (the aesthetic predictor's backbone)",
        command=_HF.format(repo="openai/clip-vit-large-patch14", dest="{dest}")),
    "imagereward": WeightSource(
        ("ImageReward/ImageReward.safetensors", "ImageReward/ImageReward.pt",
         "ImageReward.safetensors", "ImageReward.pt"), folder=False, suggest="ImageReward",
        download="ImageReward.pt and med_config.json from the Hugging Face repo THUDM/ImageReward (it also needs "
                 "bert-base-uncased's vocab.txt, see 'bert-base-uncased')",
        command="hf download THUDM/ImageReward ImageReward.pt med_config.json --local-dir {dest}"),
    "bert-base-uncased": WeightSource(
        ("bert-base-uncased",), folder=True, marker="vocab.txt",
        download="the tokenizer files of the Hugging Face repo google-bert/bert-base-uncased "
                 "(vocab.txt, tokenizer_config.json; ImageReward's text tokenizer)",
        command="hf download google-bert/bert-base-uncased vocab.txt tokenizer_config.json tokenizer.json "
                "--local-dir {dest}"),
}


def env_dirs() -> list[Path]:
    """The folders listed in ``PROGRPO_REWARD_DIR`` (empty entries ignored)."""
    raw = os.environ.get(ENV_VAR, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def _matches(candidate: Path, src: WeightSource) -> bool:
    if src.folder:
        return candidate.is_dir() and (not src.marker or (candidate / src.marker).is_file())
    return candidate.is_file()


def _why_not(candidate: Path, src: WeightSource) -> str:
    if not candidate.exists():
        return "does not exist"
    if src.folder and not candidate.is_dir():
        return "is a file, expected a folder"
    if not src.folder and candidate.is_dir():
        return "is a folder, expected a file"
    if src.folder and src.marker:
        return f"has no {src.marker}"
    return "unusable"


def find_reward_weights(name: str, path: str | os.PathLike | None = None,
                        search_dirs: Iterable[str | os.PathLike] = ()) -> Path:
    """The file or folder holding ``name``'s weights.

    ``name`` is a reward name or companion name from :data:`WEIGHT_SOURCES` (``"pickscore"``,
    ``"hpsv2.1"``, ``"clip-vit-large-patch14"``, ...). With ``path``, only that path is used: the
    target itself, or a folder containing one of the expected names. Otherwise each of
    ``search_dirs`` and then each ``PROGRPO_REWARD_DIR`` folder is searched for the expected names.
    Raises :class:`RewardWeightsNotFound` naming every path tried and what to download where.
    """
    if name not in WEIGHT_SOURCES:
        raise ValueError(f"no known weight files for {name!r}; known: {', '.join(sorted(WEIGHT_SOURCES))}")
    src = WEIGHT_SOURCES[name]
    tried: list[tuple[Path, str]] = []

    def probe(candidate: Path) -> Path | None:
        if _matches(candidate, src):
            return candidate
        tried.append((candidate, _why_not(candidate, src)))
        return None

    if path is not None:
        given = Path(path).expanduser()
        if found := probe(given):
            return found
        if given.is_dir():  # a folder holding the expected file or folder
            for n in src.names:
                if found := probe(given / n):
                    return found
        raise RewardWeightsNotFound(_not_found_message(name, src, tried, dest_dir=None, given=given))

    dirs = [Path(d).expanduser() for d in search_dirs] + env_dirs()
    for d in dirs:
        for n in src.names:
            if found := probe(d / n):
                return found
    raise RewardWeightsNotFound(_not_found_message(name, src, tried, dest_dir=dirs[0] if dirs else None, given=None))


def _not_found_message(name: str, src: WeightSource, tried: Sequence[tuple[Path, str]],
                       dest_dir: Path | None, given: Path | None) -> str:
    lines = [f"{name}: weights not found."]
    if tried:
        lines.append("Looked for:")
        lines += [f"  {p}  ({why})" for p, why in tried]
    if given is None:
        env = os.environ.get(ENV_VAR)
        lines.append(f"{ENV_VAR} is {'set to ' + repr(env) if env else 'not set'}"
                     + ("" if tried else " and no search folder was given"))
    if given is not None and src.folder:
        dest = given.parent if given.is_file() else given
    elif given is not None:
        dest = given / src.default_name if given.is_dir() else given
    elif dest_dir is not None:
        dest = dest_dir / src.default_name
    else:
        dest = Path(f"<{ENV_VAR}>") / src.default_name
    lines.append(f"Download {src.download} into {dest}")
    if src.command:
        lines.append("  e.g.  " + src.command.format(dest=dest, parent=dest.parent))
    lines.append(f"then pass that path, or put it under a folder listed in {ENV_VAR}"
                 " (inside ComfyUI: models/reward_models).")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Safe checkpoint loading

def load_state_dict_file(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors`` file or a weights-only torch pickle.

    A ``{"state_dict": ...}`` wrapper is unwrapped and a DDP ``module.`` prefix removed. A pickle
    holding arbitrary Python objects raises :class:`UnsafeCheckpointError`; it is never unpickled.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointMismatchError(f"{what}: {path} is not a readable safetensors file ({e})") from e
    else:
        obj = _torch_load_weights_only(path, what)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(
            f"{what}: {path} holds a {type(obj).__name__}, expected a dict of tensors (a state dict)")
    state = {str(k): v for k, v in obj.items()}
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointMismatchError(
            f"{what}: {path} is not a plain state dict: {len(not_tensors)} entries are not tensors "
            f"(e.g. {', '.join(not_tensors[:3])})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


_REFUSALS = ("Unsupported global", "GLOBAL", "allowlisted", "is blocked")


def _torch_load_weights_only(path: Path, what: str) -> object:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler names the globals or classes it will not build; other
        # failures (unknown opcodes, truncation) mean the file is not a checkpoint at all
        lines = str(e).strip().splitlines()
        refusal = next((ln for ln in lines if any(s in ln for s in _REFUSALS)), None)
        if refusal is not None:
            reason = refusal.split("error:", 1)[-1].strip().split(". Please", 1)[0]
            raise UnsafeCheckpointError(
                f"{what}: refused to load {path}: it is a pickle that needs Python objects besides tensors "
                f"({reason.strip()[:200]}). ProGRPO only reads checkpoints with torch.load(weights_only=True) "
                "or safetensors, because unpickling arbitrary objects can run code. If you trust the file, "
                "convert it once to safetensors:\n"
                "  python -c \"import torch, safetensors.torch as st; c = torch.load(r'IN', weights_only=False); "
                "sd = c.get('state_dict', c); st.save_file({k: v.contiguous() for k, v in sd.items()}, r'OUT.safetensors')\"\n"
                "and point the reward at OUT.safetensors.") from e
        raise CheckpointMismatchError(f"{what}: {path} is not a PyTorch checkpoint ({e})") from e
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise RewardWeightsNotFound(f"{what}: {path} does not exist") from e
        raise CheckpointMismatchError(f"{what}: {path} is not a readable PyTorch checkpoint ({e})") from e
    except RuntimeError as e:
        raise CheckpointMismatchError(f"{what}: {path} is not a readable PyTorch checkpoint ({e})") from e


def describe_mismatch(missing: list[str], unexpected: list[str], wrong_shape: int, n_expected: int,
                      n_given: int | None = None, shape_example: str = "") -> str:
    """How a checkpoint differs from its model, counted with a few examples, e.g. "3 of 120
    expected weights are missing (e.g. a, b, c); 2 weights are unexpected (e.g. x, y)"."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} of {n_expected} expected weights are missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        of = f" of its {n_given}" if n_given is not None else ""
        parts.append(f"{len(unexpected)}{of} weights are unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong_shape:
        parts.append(f"{wrong_shape} have the wrong shape" + (f" (e.g. {shape_example})" if shape_example else ""))
    return "; ".join(parts)


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, source: str,
                     ignore_missing: Iterable[str] = (), ignore_unexpected: Iterable[str] = (),
                     expected_download: str = "") -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` fits ``module`` exactly.

    Compares key sets (``ignore_*`` are key prefixes allowed to differ) and shapes, and reports how
    many keys are missing, unexpected or misshaped, with a few examples, instead of torch's raw error.
    """
    want = {k: v.shape for k, v in module.state_dict(keep_vars=True).items()}
    ignore_missing, ignore_unexpected = tuple(ignore_missing), tuple(ignore_unexpected)
    missing = sorted(k for k in want if k not in state and not k.startswith(ignore_missing))
    unexpected = sorted(k for k in state if k not in want and not k.startswith(ignore_unexpected))
    misshaped = sorted(k for k in want if k in state and tuple(state[k].shape) != tuple(want[k]))
    if not (missing or unexpected or misshaped):
        return
    example = ""
    if misshaped:
        k = misshaped[0]
        example = f"{k}: {tuple(state[k].shape)} in the file, {tuple(want[k])} in the model"
    report = describe_mismatch(missing, unexpected, len(misshaped), len(want), len(state), example)
    hint = f" Expected {expected_download}." if expected_download else ""
    raise CheckpointMismatchError(f"{what}: {source} is not a checkpoint of this model: {report}.{hint}")


def empty_weights():
    """Build modules with their parameters on the ``meta`` device (no memory, no random init),
    while buffers (causal masks, position ids) are still computed for real — accelerate's
    ``init_empty_weights(include_buffers=False)``. Load real weights afterwards with
    :func:`load_into`; any parameter still on ``meta`` was not in the checkpoint."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a checked state dict into a module built under :func:`empty_weights`."""
    module.load_state_dict(dict(state), strict=False, assign=True)
    left = [n for n, p in module.named_parameters() if p.device.type == "meta"]
    if left:  # check_state_dict should have caught this
        raise CheckpointMismatchError(f"{len(left)} weights were not loaded (e.g. {', '.join(left[:3])})")


# --------------------------------------------------------------------------------------------
# Device and dtype

def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"fp16"``/``"bf16"``/... or a torch dtype, as a torch dtype."""
    from ..devices import torch_dtype

    try:
        return torch_dtype(dtype)
    except ValueError:
        raise ValueError(f"reward dtype {dtype!r} is not supported; use float32, float16 (fp16) or bfloat16 (bf16)") from None


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"reward device {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from e
