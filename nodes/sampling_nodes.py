"""Expanded Group Sampler and Latent Proxy Projector."""
from __future__ import annotations

from progrpo_core import ovf

from . import host
from .trace import GROUP, REWARD, GroupTrace, finite_widgets, kept_json, prune_schedule
from .widgets import CATEGORY, CFG_TIP, NOISE_TIP, SAMPLER_CHOICES, SAMPLER_TIP, SEED_MAX

SELECTORS = tuple(s for s in ovf.SELECTORS if s != "all")


class ExpandedGroupSampler:
    """Sample an expanded group of trajectories for one prompt, optionally pruning while sampling."""

    DESCRIPTION = ("Samples G_max trajectories of one prompt with an exploration SDE and records every step "
                   "(latents, log-probs, sigmas, one-step x0 proxies). With a prune schedule, a reward model and "
                   "the VAE, it scores the decoded proxies at each checkpoint and keeps the maximum-variance "
                   "subset (OVF): pruned trajectories stop at once. Its noise comes from ProGRPO's own per-row "
                   "seeds, so it does not reproduce KSampler images for the same seed.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", GROUP)
    RETURN_NAMES = ("survivors", "group")
    OUTPUT_TOOLTIPS = ("final latents of the trajectories that survived pruning (decode with VAE Decode)",
                       "the whole group's record: per-step latents, log-probs, sigmas, proxies, proxy rewards, "
                       "kept indices")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "the diffusion/flow model (SD1.x, SDXL, SD3.x, Flux.1/2, Chroma, Z-Image, Lumina 2, Qwen-Image, HiDream, Wan; fp8 and GGUF weights too)"}),
                "positive": ("CONDITIONING", {"tooltip": "the prompt's conditioning"}),
                "negative": ("CONDITIONING", {"tooltip": "negative conditioning (used when cfg > 1)"}),
                "latent": ("LATENT", {"tooltip": "an empty latent of the size to sample (e.g. EmptySD3LatentImage); "
                                                 "only its size is used"}),
                "group_size": ("INT", {"default": 8, "min": 2, "max": 512,
                                       "tooltip": "G_max: trajectories sampled for the prompt"}),
                "steps": ("INT", {"default": 10, "min": 2, "max": 1000, "tooltip": "sampling steps T"}),
                "sampler": (list(SAMPLER_CHOICES), {"default": "auto", "tooltip": SAMPLER_TIP}),
                "noise_level": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 10.0, "step": 0.01,
                                          "tooltip": NOISE_TIP}),
                "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": CFG_TIP}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX,
                                 "tooltip": "seed of the group's noise (each trajectory gets its own stream)"}),
                "checkpoints": ("STRING", {"default": "", "tooltip":
                                "prune after this many steps, comma-separated, each in 1..T-1 and increasing "
                                "(e.g. '5,7' for T=10, as the paper); empty = no pruning"}),
                "keep": ("STRING", {"default": "", "tooltip":
                         "survivors after each checkpoint, shrinking (e.g. '24,12'); one number per checkpoint"}),
                "selector": (list(SELECTORS), {"default": "ovf", "tooltip":
                             "which subset survives a checkpoint: ovf (maximum reward variance), topk, random"}),
                "prompt": ("STRING", {"default": "", "multiline": True, "tooltip":
                           "the prompt's text, which the reward model scores the proxies against"}),
            },
            "optional": {
                "reward": (REWARD, {"tooltip": "reward model scoring the proxies at checkpoints (needed to prune)"}),
                "vae": ("VAE", {"tooltip": "decodes the proxies for the reward (needed to prune): the model's VAE, or "
                                "its TAESD from VAELoader (taesd, taesdxl, taesd3, taef1, taef2 in "
                                "models/vae_approx), much cheaper at large sizes"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sample(self, model, positive, negative, latent, group_size, steps, sampler, noise_level, cfg, seed,
               checkpoints, keep, selector, prompt, reward=None, vae=None, unique_id=None):
        finite_widgets(noise_level=noise_level, cfg=cfg)
        schedule = prune_schedule(group_size, steps, checkpoints, keep, selector)
        survivors, trace = host.sample_expanded_group(
            model, positive, negative, latent, prompt=prompt, seed=seed, steps=steps, schedule=schedule,
            sampler=sampler, noise_level=noise_level, cfg=cfg, reward=reward, vae=vae, node_id=unique_id)
        host.show_text(unique_id, trace.describe())
        return {"ui": {"text": [trace.describe()], "details": [trace.details()]}, "result": (survivors, trace)}


class LatentProxyProjector:
    """One-step x0 projection: of a recorded group at a step, or of a latent at a sigma."""

    DESCRIPTION = ("The latent proxy: the model's one-step x0 estimate. From a GROUP it returns the proxies of all "
                   "trajectories alive at 'step' (recorded while sampling: no model call); otherwise it runs the "
                   "model once on 'latent' at 'sigma'. Decode the result with the stock VAE Decode.")
    CATEGORY = CATEGORY
    FUNCTION = "project"
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("proxies", "rows")
    OUTPUT_TOOLTIPS = ("x0 projections as a LATENT batch", "JSON list of the group row ids in the batch")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "step": ("INT", {"default": 5, "min": 0, "max": 1000, "tooltip":
                         "with a GROUP: the sampling step (0..T-1) whose proxies to return; a pruning "
                         "checkpoint c scored the proxies of step c-1"}),
            },
            "optional": {
                "group": (GROUP, {"tooltip": "a group from the Expanded Group Sampler"}),
                "model": ("MODEL", {"tooltip": "without a GROUP: the model that projects 'latent'"}),
                "positive": ("CONDITIONING", {"tooltip": "without a GROUP: positive conditioning"}),
                "negative": ("CONDITIONING", {"tooltip": "without a GROUP: negative conditioning"}),
                "latent": ("LATENT", {"tooltip": "without a GROUP: a noisy latent at 'sigma'"}),
                "sigma": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1000.0, "step": 0.001,
                                    "tooltip": "without a GROUP: the noise level of 'latent' (flow models: 0..1)"}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 100.0, "step": 0.1,
                                  "tooltip": "without a GROUP: guidance scale of the projection"}),
            },
        }

    def project(self, step, group=None, model=None, positive=None, negative=None, latent=None, sigma=0.5, cfg=1.0):
        finite_widgets(sigma=sigma, cfg=cfg)
        if group is not None:
            if not isinstance(group, GroupTrace):
                raise ValueError(f"'group' must come from the ProGRPO Expanded Group Sampler, got {type(group).__name__}")
            x0, rows = group.proxy(int(step))
            return ({"samples": x0.clone()}, kept_json(rows))
        missing = [n for n, v in (("model", model), ("positive", positive), ("negative", negative), ("latent", latent))
                   if v is None]
        if missing:
            raise ValueError(f"connect a GROUP, or all of model, positive, negative and latent (missing: {', '.join(missing)})")
        return (host.project_latent(model, positive, negative, latent, float(sigma), float(cfg)), "[]")
