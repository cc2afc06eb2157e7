"""The host adapter: the one place in the pack that knows ComfyUI.

Everything that touches a ModelPatcher (MODEL), CONDITIONING, LATENT dicts, IMAGE tensors
``(B, H, W, C)``, VAE/CLIP objects, ``folder_paths``, progress bars or the interrupt flag lives in
this package, and converts to the core's types at the boundary, once. By concern:

* :mod:`.convert`       IMAGE/LATENT layouts ↔ the core's tensors (no ComfyUI needed)
* :mod:`.model`         ``ComfyDenoiser``: a MODEL as the core's Denoiser; model family
* :mod:`.families`      the family table: defaults per architecture, LoRA targets from the structure
* :mod:`.quantized`     fp8 and GGUF base weights (what they are stored as; GGUF under dispatch modes)
* :mod:`.lora`          ``ComfyLoraAdapter``: a trainable LoRA through ComfyUI's weight wrappers
* :mod:`.train_context` ``training_model``: the clone and inference-mode context
* :mod:`.ui`            progress bars (the interrupt check), previews, status text
* :mod:`.files`         the pack's folders (``folder_paths``)
* :mod:`.reward`        reward models under ComfyUI's memory manager
* :mod:`.sampling`      what the sampler and projector nodes run
* :mod:`.trainer`       the trainer node: a thin driver of the core's training loop
* :mod:`.headless`      ``load_comfy_denoiser`` for ``python -m progrpo_core train --model.comfyui``

ComfyUI modules are imported inside functions only, so this package (and with it the node
definitions) imports where ComfyUI is absent; the functions that need ComfyUI say so.
"""
from .convert import core_to_image, image_to_core, latent_samples, pil_of
from .files import (AUTO_MODEL, autosave_path, input_dir, lora_metadata_of, loras_dir, register_folders,
                    reward_device, reward_dirs, reward_dtype, reward_model_choices, reward_model_path, run_folder)
from .lora import ComfyLoraAdapter, LoraBranch, apply_lora
from .model import TARGET_PRESETS, ComfyDenoiser, model_family, target_modules
from .reward import managed as managed_reward
from .sampling import project_latent, resolve_sampler, sample_expanded_group
from .trainer import train_lora
from .train_context import training_model
from .ui import Progress, is_interrupt, show_text

__all__ = ["core_to_image", "image_to_core", "latent_samples", "pil_of", "autosave_path", "input_dir",
           "lora_metadata_of", "loras_dir", "register_folders", "reward_device", "reward_dirs", "reward_dtype",
           "AUTO_MODEL", "reward_model_choices", "reward_model_path", "run_folder", "managed_reward",
           "ComfyLoraAdapter", "LoraBranch", "apply_lora", "TARGET_PRESETS", "ComfyDenoiser", "model_family",
           "target_modules", "project_latent", "resolve_sampler", "sample_expanded_group", "train_lora",
           "training_model", "Progress", "is_interrupt", "show_text"]
