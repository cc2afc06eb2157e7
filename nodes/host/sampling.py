"""What the Expanded Group Sampler and the Latent Proxy Projector run inside the host."""
from __future__ import annotations

import torch

from progrpo_core.config import SamplerConfig
from progrpo_core.rewards import check_scores

from ..trace import record_group
from .convert import latent_samples
from .model import ComfyDenoiser
from .reward import for_model
from .ui import Progress


def resolve_sampler(family: str, sampler: str, noise_level: float) -> tuple[str, float]:
    """("auto" or a name, noise level < 0 = default) → the core's (sampler, noise level) for the family."""
    sc = SamplerConfig(sampler=None if sampler == "auto" else sampler,
                       noise_level=None if noise_level < 0 else float(noise_level)).resolved(family)
    return sc.sampler, float(sc.noise_level)


def sample_expanded_group(model, positive, negative, latent, *, prompt: str, seed: int, steps: int, schedule,
                          sampler: str, noise_level: float, cfg: float, reward=None, vae=None,
                          node_id: str | None = None):
    """The Expanded Group Sampler: ``(LATENT of the survivors, GroupTrace)``."""
    samples = latent_samples(latent)
    den = ComfyDenoiser(model, samples.shape[1:], vae=vae)
    sampler, noise_level = resolve_sampler(den.family, sampler, noise_level)
    cfg = cfg if cfg > 0 else den.default_cfg
    score_fn = None
    if schedule.checkpoints:
        if reward is None:
            raise ValueError(f"the prune schedule (checkpoints {list(schedule.checkpoints)}) scores proxies with a "
                             "reward model, but none is connected: connect a ProGRPO Reward Model Loader to 'reward'")
        if vae is None:
            raise ValueError("the prune schedule decodes proxies to score them: connect the model's VAE to 'vae'")

        fitted = for_model(reward.reward, den)

        def score_fn(images, prompts):
            out = fitted.evaluate(images, list(prompts))
            return check_scores(out[fitted.total_key], f"reward {fitted.total_key!r}")
    den.add_prompt(prompt, positive, negative)
    progress = Progress(steps, node_id)
    trace = den.run(lambda: record_group(den, prompt, seed, steps, schedule, sampler, noise_level, cfg, score_fn,
                                         to_output=den.latent_format.process_out,
                                         on_step=lambda i, n: progress.update(i, n)),
                    sigmas=den.sigmas(steps), max_rows=schedule.group_size)
    return den.to_latent(trace.latents[:, -1]), trace


def project_latent(model, positive, negative, latent, sigma: float, cfg: float) -> dict:
    """One-step x0 projection of a (noisy) LATENT at ``sigma``, as a LATENT."""
    samples = latent_samples(latent)
    den = ComfyDenoiser(model, samples.shape[1:])
    sigma_max = float(den.model_sampling().sigma_max)
    if not 0 < sigma <= sigma_max * (1 + 1e-6):
        raise ValueError(f"sigma {sigma} is outside this model's range (0, {sigma_max:.4g}]")
    den.add_prompt("", positive, negative)
    n = samples.shape[0]
    s = torch.full((n,), float(sigma))
    x = den.from_comfy(den.latent_format.process_in(samples.float()), s)
    x0 = den.run(lambda: den.denoise(x, s, den.encode_prompts([""] * n), cfg),
                 sigmas=torch.tensor([float(sigma), 0.0]), max_rows=n)
    return den.to_latent(x0)
