"""Reward Model Loader, Reward Scorer and OVF Pruner."""
from __future__ import annotations

import torch

from progrpo_core import plots
from progrpo_core.rewards import available_rewards, build_reward, reward_help
from progrpo_core.rewards.weights import WEIGHT_SOURCES

from . import host
from .sampling_nodes import CATEGORY, SEED_MAX, SELECTORS
from .trace import PROMPTS, REWARD, SCORES, RewardHandle, Scores, kept_json, parse_ints, prune, score_images

DTYPES = ("auto", "float32", "float16", "bfloat16")


def reward_choices() -> list[str]:
    return available_rewards()


class RewardModelLoader:
    DESCRIPTION = ("Loads a reward model by name. Weights are found in 'path', else in models/reward_models or the "
                   "folders in PROGRPO_REWARD_DIR; nothing is downloaded (a missing file names what to fetch). "
                   "'weighted' combines several: path = 'pickscore*0.7,hpsv2.1*0.3'.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (REWARD,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = ("the loaded reward model",)

    @classmethod
    def INPUT_TYPES(cls):
        helps = "; ".join(f"{k}: {v}" for k, v in reward_help().items())
        return {
            "required": {
                "reward": (reward_choices(), {"default": "pickscore" if "pickscore" in reward_choices() else
                                              reward_choices()[0], "tooltip": helps}),
                "path": ("STRING", {"default": "", "tooltip":
                         "weights file or folder (empty: search models/reward_models and PROGRPO_REWARD_DIR); "
                         "for 'weighted', the spec NAME[=PATH][*WEIGHT],... e.g. 'pickscore*0.7,hpsv2.1*0.3'"}),
                "device": (["auto", "cpu"], {"default": "auto", "tooltip":
                           "where the reward model runs: auto = ComfyUI's device (the GPU when there is one), "
                           "loaded and offloaded by ComfyUI's memory manager like its own models"}),
                "dtype": (list(DTYPES), {"default": "auto", "tooltip":
                          "reward model precision: auto = float32 on the CPU, bfloat16 (or float16) on a GPU"}),
            },
        }

    def load(self, reward, path, device, dtype):
        path = path.strip() or None
        dev = host.reward_device(device)
        dirs = host.reward_dirs()
        extra = {"search_dirs": tuple(dirs)} if dirs and (reward in WEIGHT_SOURCES or reward == "weighted") else {}
        if reward == "weighted" and path is None:
            raise ValueError("the 'weighted' reward needs its spec in 'path', e.g. 'pickscore*0.7,hpsv2.1*0.3'")
        if dtype == "auto":
            dtype = host.reward_dtype(dev)
        model = build_reward(reward, path, device="cpu" if dev != "cpu" else dev, dtype=dtype, **extra)
        return (RewardHandle(host.managed_reward(model, dev), reward, dev),)


class RewardScorer:
    DESCRIPTION = "Scores images against their prompt with a reward model; the scores are also shown on the node."
    CATEGORY = CATEGORY
    FUNCTION = "score"
    OUTPUT_NODE = True
    RETURN_TYPES = (SCORES, "FLOAT")
    RETURN_NAMES = ("scores", "mean")
    OUTPUT_TOOLTIPS = ("one score per image (for the OVF Pruner)", "the mean score")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reward": (REWARD, {"tooltip": "a reward model from the ProGRPO Reward Model Loader"}),
                "images": ("IMAGE", {"tooltip": "the images to score"}),
                "prompt": ("STRING", {"default": "", "multiline": True,
                                      "tooltip": "the prompt every image is scored against"}),
            },
            "optional": {
                "prompts": (PROMPTS, {"tooltip": "instead of 'prompt': one prompt per image (or one for all)"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def score(self, reward, images, prompt, prompts=None, unique_id=None):
        handle = check_reward(reward)
        batch = host.image_to_core(images, "images")
        scores = score_images(handle, batch, list(prompts) if prompts else [prompt])
        host.show_text(unique_id, scores.summary())
        return {"ui": {"text": [scores.summary()]}, "result": (scores, float(scores.values.mean()))}


class OVFPruner:
    DESCRIPTION = ("Keeps the subset of each prompt's images with the largest reward variance (OVF; or top-k / random "
                   "for comparison), in one round ('4') or several ('6,4'). Outputs the kept images and latents, their "
                   "indices, and a histogram of the rewards with kept and dropped marked.")
    CATEGORY = CATEGORY
    FUNCTION = "prune"
    RETURN_TYPES = ("IMAGE", "LATENT", "STRING", "IMAGE")
    RETURN_NAMES = ("kept_images", "kept_latent", "kept_indices", "histogram")
    OUTPUT_TOOLTIPS = ("the kept images (when 'images' is connected)", "the kept latents (when 'latent' is connected)",
                       "JSON list of the kept indices", "reward histogram, kept vs dropped")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "scores": (SCORES, {"tooltip": "rewards from the ProGRPO Reward Scorer"}),
                "keep": ("STRING", {"default": "4", "tooltip":
                         "images kept per prompt; a shrinking list ('6,4') prunes in several rounds"}),
                "selector": (list(SELECTORS), {"default": "ovf", "tooltip":
                             "ovf: maximum-variance subset; topk: highest rewards; random: a uniform subset"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "seed of the random selector"}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "the scored images, in the same order, to filter"}),
                "latent": ("LATENT", {"tooltip": "their latents, in the same order, to filter"}),
            },
        }

    def prune(self, scores, keep, selector, seed, images=None, latent=None):
        if not isinstance(scores, Scores):
            raise ValueError(f"'scores' must come from the ProGRPO Reward Scorer, got {type(scores).__name__}")
        n = len(scores.values)
        for name, t in (("images", images), ("latent", None if latent is None else host.latent_samples(latent))):
            if t is not None and t.shape[0] != n:
                raise ValueError(f"{n} scores but {t.shape[0]} {name}; connect the batch that was scored")
        kept = prune(scores.values, scores.prompts, parse_ints(keep, "keep"), selector, seed)
        hist = plots.reward_histogram(scores.values, kept, title=f"{scores.reward}: kept {len(kept)} of {n} ({selector})")
        out_images = images[kept] if images is not None else None
        out_latent = None
        if latent is not None:
            out_latent = {k: (v[kept] if isinstance(v, torch.Tensor) and v.shape[:1] == (n,) else v)
                          for k, v in latent.items() if k != "batch_index"}
        return (out_images, out_latent, kept_json(kept), host.core_to_image(hist[None]))


def check_reward(reward) -> RewardHandle:
    if not isinstance(reward, RewardHandle):
        raise ValueError("'reward' is not a loaded reward model: connect a ProGRPO Reward Model Loader "
                         f"(got {type(reward).__name__})")
    return reward
