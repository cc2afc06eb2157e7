"""Where the pack reads and writes inside ComfyUI: its folders, through ``folder_paths``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from progrpo_core.lora_format import decode_header, read_lora_file

from ..trace import safe_relative_name

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
    """``auto`` reward precision: float32 on the CPU, bfloat16 (else float16) on a GPU."""
    import torch

    if torch.device(device).type != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def lora_metadata_of(path: Path) -> dict[str, Any]:
    """The ``progrpo.*`` header of a LoRA file, values JSON-decoded where possible."""
    return decode_header(read_lora_file(path)[1])


def autosave_path(run_name: str) -> Path:
    return loras_dir() / "progrpo" / "autosave" / (safe_relative_name(run_name, "run_name") + ".safetensors")


def run_folder(run_name: str) -> Path:
    """``output/progrpo/<run_name>``: the trainer's resumable checkpoints."""
    import folder_paths

    return Path(folder_paths.get_output_directory()) / "progrpo" / safe_relative_name(run_name, "run_name")
