"""Reward Model Loader, Combine Rewards, Reward Scorer and OVF Pruner."""
from __future__ import annotations

import torch

from progrpo_core import plots
from progrpo_core.devices import LONG_NAMES
from progrpo_core.rewards import WeightedReward, available_rewards, build_reward, reward_help
from progrpo_core.rewards.video import VideoReward
from progrpo_core.rewards.weighted import component_names
from progrpo_core.rewards.weights import WEIGHT_SOURCES

from . import host
from .sampling_nodes import CATEGORY, SEED_MAX, SELECTORS
from .trace import PROMPTS, REWARD, SCORES, RewardHandle, Scores, kept_json, parse_ints, prune, score_images

DTYPES = ("auto", *LONG_NAMES.values())  # the long names, as saved workflows hold them


def reward_choices() -> list[str]:
    """Reward names the loader offers (combinations are built with the Combine Rewards node)."""
    return [n for n in available_rewards() if n != "weighted"]


class RewardModelLoader:
    DESCRIPTION = ("Loads a reward model. 'model' lists the files and folders in models/reward_models; "
                   "(search) finds the reward's usual file names there. Nothing is downloaded: a missing file "
                   "names what to fetch. To combine rewards, connect several loaders to Combine Rewards.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (REWARD,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = ("the loaded reward model",)

    @classmethod
    def INPUT_TYPES(cls):
        helps = "; ".join(f"{k}: {v}" for k, v in reward_help().items() if k != "weighted")
        choices = reward_choices()
        return {
            "required": {
                "reward": (choices, {"default": "pickscore" if "pickscore" in choices else choices[0],
                                     "tooltip": helps}),
                "model": (host.reward_model_choices(), {"default": host.AUTO_MODEL, "tooltip":
                          "the weights: a file or folder in models/reward_models (press R after adding one); "
                          "(search) looks there for the reward's usual names (e.g. PickScore_v1/, "
                          "HPS_v2.1_compressed.pt); built-in rewards need none"}),
                "device": (["auto", "cpu"], {"default": "auto", "tooltip":
                           "where the reward model runs: auto = ComfyUI's device (the GPU when there is one), "
                           "loaded and offloaded by ComfyUI's memory manager like its own models"}),
                "dtype": (list(DTYPES), {"default": "auto", "tooltip":
                          "reward model precision: auto = float32 on the CPU, bfloat16 (or float16) on a GPU"}),
            },
        }

    def load(self, reward, model, device, dtype):
        if reward not in reward_choices():
            raise ValueError(f"reward {reward!r} is not one of {', '.join(reward_choices())}; to combine rewards, "
                             "load each with its own loader and connect them to ProGRPO Combine Rewards")
        path = host.reward_model_path(model)
        dev = host.reward_device(device)
        dirs = host.reward_dirs()
        extra = {"search_dirs": tuple(dirs)} if dirs and reward in WEIGHT_SOURCES else {}
        if dtype == "auto":
            dtype = host.reward_dtype(dev)
        loaded = build_reward(reward, path, device="cpu" if dev != "cpu" else dev, dtype=dtype, **extra)
        return (RewardHandle(host.managed_reward(loaded, dev), reward, dev),)


class CombineRewards:
    DESCRIPTION = ("Trains on a weighted sum of rewards (e.g. PickScore 0.7 + HPSv2.1 0.3). Each part's scores are "
                   "still shown and logged. A weight of 0 keeps a reward as a watched metric; negative penalises.")
    CATEGORY = CATEGORY
    FUNCTION = "combine"
    RETURN_TYPES = (REWARD,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = ("the combined reward, for the trainer or a scorer",)

    @classmethod
    def INPUT_TYPES(cls):
        def weight(default):
            return ("FLOAT", {"default": default, "min": -100.0, "max": 100.0, "step": 0.05,
                              "tooltip": "this reward's weight in the sum (0: watched only, negative: penalised)"})
        required = {"reward_1": (REWARD, {"tooltip": "a reward from a Reward Model Loader"}), "weight_1": weight(0.5),
                    "reward_2": (REWARD, {"tooltip": "a second reward"}), "weight_2": weight(0.5),
                    "normalise_separately": ("BOOLEAN", {"default": True, "tooltip":
                                             "on: each reward's advantages are normalised within the group before "
                                             "weighting, so rewards on different scales (PickScore ~20, HPS ~0.3) "
                                             "count by their weights; off: the raw weighted sum is normalised"})}
        optional = {}
        for i in (3, 4):
            optional[f"reward_{i}"] = (REWARD, {"tooltip": "another reward (optional)"})
            optional[f"weight_{i}"] = weight(0.0)
        return {"required": required, "optional": optional}

    def combine(self, reward_1, weight_1, reward_2, weight_2, normalise_separately, reward_3=None, weight_3=0.0,
                reward_4=None, weight_4=0.0):
        pairs = [(r, w, i) for i, (r, w) in enumerate(((reward_1, weight_1), (reward_2, weight_2),
                                                        (reward_3, weight_3), (reward_4, weight_4)), start=1)
                 if r is not None]
        handles = [(check_reward(r, f"reward_{i}"), float(w)) for r, w, i in pairs]
        if not any(w != 0 for _, w in handles):
            raise ValueError("every weight is 0, so there is nothing to train on: give at least one reward a "
                             "non-zero weight")
        names = component_names([h.spec for h, _ in handles])
        combined = WeightedReward([(n, h.reward, w) for n, (h, w) in zip(names, handles)])
        spec = ",".join(f"{n}*{w:g}" for n, (_, w) in zip(names, handles))
        return (RewardHandle(combined, spec, handles[0][0].device, separate_norm=bool(normalise_separately)),)


class VideoRewardNode:
    DESCRIPTION = ("Scores videos with an image reward: the mean of its score over the frames 0, stride, 2·stride, … "
                   "(frames of them), optionally plus a frame-consistency term, the mean CLIP similarity of "
                   "consecutive frames times its weight (connect a Reward Model Loader with reward 'clip'). Only "
                   "the latent frames these need are decoded, for the proxies and the final videos alike. A video "
                   "model given a plain image reward scores frames 0, 4, 8, 12 and takes their mean.")
    CATEGORY = CATEGORY
    FUNCTION = "wrap"
    RETURN_TYPES = (REWARD,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = ("the video reward, for the trainer or the group sampler",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reward": (REWARD, {"tooltip": "the image reward scored on each frame"}),
                "frames": ("INT", {"default": 4, "min": 1, "max": 1024, "tooltip": "how many frames are scored"}),
                "stride": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip":
                           "frames between scored frames (1: consecutive; Wan's VAE makes 4 frames per latent frame)"}),
                "consistency_weight": ("FLOAT", {"default": 0.0, "min": -100.0, "max": 100.0, "step": 0.05,
                                                 "tooltip": "weight of the frame-consistency term (0: off)"}),
            },
            "optional": {
                "consistency_clip": (REWARD, {"tooltip": "a 'clip' reward whose image embeddings compare consecutive "
                                                         "frames (needed when consistency_weight is not 0)"}),
            },
        }

    def wrap(self, reward, frames, stride, consistency_weight, consistency_clip=None):
        handle = check_reward(reward)
        clip = None
        if consistency_weight:
            if consistency_clip is None:
                raise ValueError(f"consistency_weight {consistency_weight:g} needs a CLIP model: connect a ProGRPO Reward "
                                 "Model Loader with reward 'clip' to consistency_clip, or set the weight to 0")
            clip = check_reward(consistency_clip, "consistency_clip").reward
        video = VideoReward(handle.reward, frames, stride, consistency=clip, weight=consistency_weight)
        spec = f"video({handle.spec}, {frames} frames every {stride}" + (
            f", consistency*{consistency_weight:g})" if clip is not None else ")")
        return (RewardHandle(video, spec, handle.device, separate_norm=handle.separate_norm or clip is not None),)


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
        return {"ui": {"text": [scores.summary()], "details": [scores.details()]},
                "result": (scores, float(scores.values.mean()))}


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


def check_reward(reward, what: str = "reward") -> RewardHandle:
    if not isinstance(reward, RewardHandle):
        raise ValueError(f"'{what}' is not a loaded reward model: connect a ProGRPO Reward Model Loader "
                         f"(got {type(reward).__name__})")
    return reward
