"""GRPO LoRA Trainer, Prompt List and Save LoRA."""
from __future__ import annotations

from pathlib import Path

from progrpo_core.devices import PRECISIONS
from progrpo_core.methods import DEFAULT_METHOD, METHODS, presets_text

from . import host
from . import train_driver as training
from .reward_nodes import check_reward

from .sampling_nodes import _CFG_TIP, _NOISE_TIP, _SAMPLER_TIP, CATEGORY, SEED_MAX
from .trace import LORA, PROMPTS, REWARD, file_in_folder, save_lora_tensors

_PRESETS = f"presets (checkpoints scale with T): {presets_text()}"


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
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "the model to train a LoRA for (SD3.x, Flux, SD1.x, SDXL)"}),
                "vae": ("VAE", {"tooltip": "the model's VAE (decodes images for the reward)"}),
                "reward": (REWARD, {"tooltip": "the reward model to maximise"}),
                "prompts": (PROMPTS, {"tooltip": "training prompts from the ProGRPO Prompt List"}),
                "latent": ("LATENT", {"tooltip": "an empty latent of the training resolution; only its size is used"}),
                "method": (list(METHODS), {"default": DEFAULT_METHOD, "tooltip":
                           "; ".join(f"{p.name}: {p.summary}" for p in METHODS.values())}),
                "epochs": ("INT", {"default": 10, "min": 1, "max": 100000,
                                   "tooltip": "sampling rounds (each: sample, score, prune, train)"}),
                "prompts_per_epoch": ("INT", {"default": 1, "min": 1, "max": 256,
                                              "tooltip": "B: prompts per epoch, each with a whole group"}),
                "steps": ("INT", {"default": 10, "min": 2, "max": 1000, "tooltip": "sampling steps T per trajectory"}),
                "group_size": ("INT", {"default": 0, "min": 0, "max": 512,
                                       "tooltip": "G_max per prompt; 0 = the method's preset. " + _PRESETS}),
                "checkpoints": ("STRING", {"default": "", "tooltip":
                                "prune after this many steps (e.g. '5,7' of T=10), each in 1..T-1; empty = the method's preset"}),
                "keep": ("STRING", {"default": "", "tooltip":
                         "survivors after each checkpoint (e.g. '24,12'); empty = the method's preset"}),
                "sampler": (list(training.SAMPLER_CHOICES), {"default": "auto", "tooltip": _SAMPLER_TIP}),
                "noise_level": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 10.0, "step": 0.01,
                                          "tooltip": _NOISE_TIP}),
                "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": _CFG_TIP}),
                "learning_rate": ("FLOAT", {"default": 0.0003, "min": 0.0000001, "max": 1.0, "step": 0.0000001,
                                            "tooltip": "AdamW learning rate of the LoRA"}),
                "rank": ("INT", {"default": 8, "min": 1, "max": 512, "tooltip": "LoRA rank"}),
                "alpha": ("FLOAT", {"default": 16.0, "min": 0.01, "max": 4096.0, "step": 0.01,
                                    "tooltip": "LoRA alpha (scale = alpha / rank)"}),
                "targets": (list(host.TARGET_PRESETS), {"default": "attention", "tooltip":
                            "layers that get a LoRA: attention projections, or every linear layer"}),
                "kl_beta": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.001, "tooltip":
                            "weight of the KL penalty to the model without LoRA (0 = off; costs one more forward)"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX,
                                 "tooltip": "seed of the noise, prompt order and LoRA initialisation"}),
                "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip":
                                           "recompute activations in backward: less memory, more time "
                                           "(needed for Flux, whose blocks work in place); depth in checkpoint_depth"}),
                "run_name": ("STRING", {"default": "progrpo", "tooltip":
                             "name of the autosave file models/loras/progrpo/autosave/<run_name>.safetensors"}),
                "resume": ("BOOLEAN", {"default": False, "tooltip":
                           "continue this run_name's run from its newest checkpoint (its LoRA, optimizer and epoch "
                           "count); off: a new run, refused if run_name already holds one (see overwrite)"}),
                "save_every": ("INT", {"default": 1, "min": 0, "max": 100000, "tooltip":
                               "autosave every N epochs (0 = only at the end or when stopped)"}),
            },
            "optional": {
                "precision": (list(PRECISIONS), {"default": "auto", "tooltip":
                              "the model's compute dtype while training: auto = bf16 on GPUs that have it, else "
                              "fp16 with loss scaling; fp32 on the CPU. The LoRA, its optimizer and EMA stay fp32"}),
                "sample_micro_batch": ("INT", {"default": 0, "min": 0, "max": 4096, "tooltip":
                                       "rows per model call while sampling (a guided row counts two); 0 = chosen "
                                       "from the free memory by the planner"}),
                "train_micro_batch": ("INT", {"default": 0, "min": 0, "max": 4096, "tooltip":
                                      "rows per forward/backward in training (gradients accumulate); 0 = chosen "
                                      "from the free memory by the planner"}),
                "checkpoint_depth": ("INT", {"default": 1, "min": 1, "max": 4, "tooltip":
                                     "gradient checkpointing at this module depth: 1 = the model's blocks (most "
                                     "memory saved), 2 = their parts"}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip":
                              "start run_name over if it already holds a run (deletes that run's checkpoints); "
                              "off: such a run_name is refused unless 'resume' is on"}),
                "clip": ("CLIP", {"tooltip": "the model's text encoder, to encode the prompt list"}),
                "positive": ("CONDITIONING", {"tooltip": "instead of a CLIP: the conditioning of the (single) prompt"}),
                "negative": ("CONDITIONING", {"tooltip": "negative conditioning (default: the empty prompt)"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, vae, reward, prompts, latent, method, epochs, prompts_per_epoch, steps, group_size,
              checkpoints, keep, sampler, noise_level, cfg, learning_rate, rank, alpha, targets, kl_beta, seed,
              gradient_checkpointing, run_name, resume, save_every, precision="auto", sample_micro_batch=0,
              train_micro_batch=0, checkpoint_depth=1, overwrite=False, clip=None, positive=None, negative=None,
              unique_id=None):
        handle = check_reward(reward)
        prompts = training.check_prompts(prompts)
        config = training.build_train_config(
            method=method, epochs=epochs, prompts_per_epoch=prompts_per_epoch, steps=steps, group_size=group_size,
            checkpoints=checkpoints, keep=keep, sampler=sampler, noise_level=noise_level, cfg=cfg,
            learning_rate=learning_rate, rank=rank, alpha=alpha, kl_beta=kl_beta, seed=seed, reward_spec=handle.spec,
            separate_reward_norm=handle.separate_norm,
            model_name=type(getattr(model, "model", model)).__name__, precision=precision,
            sample_micro_batch=sample_micro_batch, train_micro_batch=train_micro_batch,
            gradient_checkpointing=gradient_checkpointing, checkpoint_depth=checkpoint_depth)
        out_model, lora, curves, summary = host.train_lora(
            model, vae, clip, positive, negative, latent, prompts, config, handle, targets=targets,
            run_name=run_name, resume=resume, save_every=save_every, node_id=unique_id, overwrite=overwrite)
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
