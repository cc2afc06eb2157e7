"""GRPO LoRA Trainer, Prompt List and Save LoRA."""
from __future__ import annotations

from pathlib import Path

from . import host, widgets
from . import train_driver as training
from .reward_nodes import check_reward
from .trace import LORA, PROMPTS, REWARD, file_in_folder, save_lora_tensors
from .widgets import CATEGORY


class PromptList:
    DESCRIPTION = "A list of prompts for training: one per line (lines starting with # are ignored), or from a file."
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (PROMPTS, "INT")
    RETURN_NAMES = ("prompts", "count")
    OUTPUT_TOOLTIPS = ("the prompts", "how many")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"default": "a photo of a cat\na watercolor painting of a lighthouse",
                                    "multiline": True, "tooltip": "one prompt per line"}),
                "file": ("STRING", {"default": "", "tooltip":
                         "optional text file of prompts, one per line, in ComfyUI's input folder (a name relative "
                         "to it); its prompts follow the ones above"}),
            },
        }

    def build(self, text, file):
        prompts = training.parse_prompt_text(text)
        if file.strip():
            path = file_in_folder(host.input_dir() or Path.cwd(), file, "prompt file", "ComfyUI's input folder")
            try:
                prompts += training.parse_prompt_text(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise ValueError(f"prompt file {file.strip()!r} is not UTF-8 text; write one prompt per line") from None
        return (training.check_prompts(prompts), len(prompts))


class GRPOLoraTrainer:
    DESCRIPTION = ("Trains a LoRA of MODEL with GRPO against a reward model, with Pro-GRPO's expand-and-prune "
                   "sampling. The progress bar previews each epoch (top: the expanded group, pruned trajectories "
                   "dimmed; bottom: the trained survivors). Interrupting keeps the LoRA trained so far in "
                   "models/loras/progrpo/autosave/<run_name> (turn 'resume' on to continue). The MODEL given is "
                   "never changed: training runs on a copy.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES = ("MODEL", LORA, "IMAGE")
    RETURN_NAMES = ("model", "lora", "curves")
    OUTPUT_TOOLTIPS = ("MODEL with the trained LoRA applied", "the trained LoRA (for ProGRPO Save LoRA)",
                       "reward and policy-loss curves per epoch")

    @classmethod
    def INPUT_TYPES(cls):
        return widgets.input_types(
            required={
                "model": ("MODEL", {"tooltip": "the model to train a LoRA for (SD1.x, SDXL, SD3.x, Flux.1/2, Chroma, Z-Image, Lumina 2, Qwen-Image, HiDream, Wan; fp8 and GGUF weights too)"}),
                "vae": ("VAE", {"tooltip": "the model's VAE (decodes images for the reward)"}),
                "reward": (REWARD, {"tooltip": "the reward model to maximise"}),
                "prompts": (PROMPTS, {"tooltip": "training prompts from the ProGRPO Prompt List"}),
                "latent": ("LATENT", {"tooltip": "an empty latent of the training resolution; only its size is used"}),
            },
            optional={
                "clip": ("CLIP", {"tooltip": "the model's text encoder, to encode the prompt list"}),
                "positive": ("CONDITIONING", {"tooltip": "instead of a CLIP: the conditioning of the (single) prompt"}),
                "negative": ("CONDITIONING", {"tooltip": "negative conditioning (default: the empty prompt)"}),
                "proxy_vae": ("VAE", {"tooltip": "a cheaper decoder for the pruning previews only, e.g. the model's "
                                                 "TAESD from VAELoader (taesd, taesdxl, taesd3, taef1, taef2 in "
                                                 "models/vae_approx); the trained images' rewards still use 'vae'"}),
            })

    def train(self, model, vae, reward, prompts, latent, clip=None, positive=None, negative=None, proxy_vae=None,
              unique_id=None, **values):
        handle = check_reward(reward)
        prompts = training.check_prompts(prompts)
        w = widgets.widget_values(values)
        config = widgets.build_train_config(**w, reward_spec=handle.spec, separate_reward_norm=handle.separate_norm,
                                            model_name=type(getattr(model, "model", model)).__name__)
        out_model, lora, curves, summary = host.train_lora(
            model, vae, clip, positive, negative, latent, prompts, config, handle, targets=w["targets"],
            run_name=w["run_name"], resume=w["resume"], node_id=unique_id, overwrite=w["overwrite"], proxy_vae=proxy_vae)
        short, full = summary
        host.show_text(unique_id, short)
        return {"ui": {"text": [short], "details": [full]}, "result": (out_model, lora, curves)}


class SaveLoRA:
    DESCRIPTION = ("Saves a LoRA into models/loras (with its training settings in the file header). The stock "
                   "LoraLoader / LoraLoaderModelOnly load it.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("lora_name",)
    OUTPUT_TOOLTIPS = ("the saved file's name inside models/loras",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora": (LORA, {"tooltip": "the LoRA from the GRPO LoRA Trainer"}),
                "filename": ("STRING", {"default": "progrpo/progrpo_lora", "tooltip":
                             "file name inside models/loras, without extension; subfolders allowed"}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip":
                              "replace an existing file of that name; off = add a number (_00001_, _00002_ …) "
                              "so no other run's LoRA is overwritten"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def save(self, lora, filename, overwrite, unique_id=None):
        base = host.loras_dir()
        path = save_lora_tensors(lora, base, filename, overwrite)
        name = path.relative_to(base).as_posix()
        host.show_text(unique_id, f"saved models/loras/{name}")
        return {"ui": {"text": [f"saved models/loras/{name}"]}, "result": (name,)}
