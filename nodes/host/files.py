"""Where the pack reads and writes inside ComfyUI: its folders, through ``folder_paths``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from progrpo_core.devices import auto_reward_dtype
from progrpo_core.lora_format import decode_header, read_lora_file

from ..trace import confined_path, safe_relative_name

REWARD_FOLDER = "reward_models"


def register_folders() -> None:
    """Register ``models/reward_models`` with folder_paths (idempotent)."""
    import folder_paths

    path = os.path.join(folder_paths.models_dir, REWARD_FOLDER)
    if path not in folder_paths.folder_names_and_paths.get(REWARD_FOLDER, ([], set()))[0]:
        folder_paths.add_model_folder_path(REWARD_FOLDER, path)


def reward_dirs() -> list[str]:
    try:
        import folder_paths
    except ImportError:
        return []
    register_folders()
    return list(folder_paths.get_folder_paths(REWARD_FOLDER))


AUTO_MODEL = "(search)"  # the loader's default: the reward's own file names, searched in the reward folders
WEIGHT_EXTENSIONS = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_LIST_DEPTH = 3


def _entries(base: Path, rel: str = "", depth: int = 0) -> list[str]:
    """Weight files and model folders (a folder with ``config.json``: listed whole, ``name/``)."""
    out: list[str] = []
    try:
        children = sorted(base.iterdir(), key=lambda p: p.name.lower())
    except OSError:
        return out
    for child in children:
        name = f"{rel}{child.name}"
        if child.name.startswith("."):
            continue
        if child.is_dir():
            if (child / "config.json").is_file():
                out.append(name + "/")
            elif depth < _LIST_DEPTH:
                out.extend(_entries(child, name + "/", depth + 1))
        elif child.suffix.lower() in WEIGHT_EXTENSIONS:
            out.append(name)
    return out


def reward_model_choices() -> list[str]:
    """What the Reward Model Loader offers: ``(search)``, then every weight file and model folder
    in ``models/reward_models`` (and the other registered reward folders), relative names."""
    seen: list[str] = []
    for d in reward_dirs():
        for name in _entries(Path(d)):
            if name not in seen:
                seen.append(name)
    return [AUTO_MODEL, *seen]


def reward_model_path(choice: str) -> str | None:
    """The file or folder a loader choice names, inside one of the reward folders; ``None`` for
    ``(search)``. Refuses names that leave the folder."""
    if choice in (AUTO_MODEL, ""):
        return None
    text = str(choice).strip().replace("\\", "/")
    dirs = reward_dirs()
    if (text.startswith(("/", "~")) or (len(text) > 1 and text[1] == ":")
            or any(p == ".." for p in text.split("/"))):
        raise ValueError(f"reward model {choice!r} must be a name from the list (a file or folder inside "
                         "models/reward_models); put the model there and refresh (R)")
    for d in dirs:
        root = Path(d).resolve()
        path = (root / text.rstrip("/")).resolve()
        if root in path.parents and path.exists():
            return str(path)
    raise ValueError(f"reward model {choice!r} is not in models/reward_models (any more); put it there, press R "
                     "to refresh the lists and pick it again, or choose (search)")


def loras_dir() -> Path:
    """The first ``loras`` folder (models/loras)."""
    import folder_paths

    return Path(folder_paths.get_folder_paths("loras")[0])


def input_dir() -> Path | None:
    try:
        import folder_paths
    except ImportError:
        return None
    return Path(folder_paths.get_input_directory())


def reward_device(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import comfy.model_management

        return str(comfy.model_management.get_torch_device())
    except ImportError:
        return "cpu"


def reward_dtype(device: str) -> str:
    """``auto`` reward precision: float32 on the CPU, bfloat16 on a GPU that computes it natively,
    else float16."""
    return auto_reward_dtype(device)


def lora_metadata_of(path: Path) -> dict[str, Any]:
    """The ``progrpo.*`` header of a LoRA file, values JSON-decoded where possible."""
    return decode_header(read_lora_file(path)[1])


def autosave_path(run_name: str) -> Path:
    """``models/loras/progrpo/autosave/<run_name>.safetensors``, its folders made inside models/loras."""
    rel = "progrpo/autosave/" + safe_relative_name(run_name, "run_name")
    stem = confined_path(loras_dir(), rel, "run_name", "models/loras")
    return stem.with_name(stem.name + ".safetensors")


def run_folder(run_name: str) -> Path:
    """``output/progrpo/<run_name>``: the trainer's resumable checkpoints (its parent folders made
    inside ComfyUI's output folder)."""
    import folder_paths

    rel = "progrpo/" + safe_relative_name(run_name, "run_name")
    return confined_path(Path(folder_paths.get_output_directory()), rel, "run_name", "ComfyUI's output folder")
