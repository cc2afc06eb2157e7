"""The expand-and-prune group sampler.

``B`` prompts, ``G = G_max`` trajectories each, ``T`` steps. A checkpoint ``c`` (in ``1..T−1``)
prunes after ``c`` model evaluations, as the paper's "steps 5 and 7 of 10": the output of the
``c``-th evaluation (at ``σ_{c−1}``), which the survivors then use for their next step, gives every
active latent's one-step x0 projection (the *latent proxy*); it is decoded and scored, and each
prompt keeps the selector's subset of its survivors (OVF by default). Pruned rows leave the batch
at once — the next model call is smaller — and their stored history is dropped with them.
Survivors finish; their per-step latents, stds and log-probs are returned for training (what the
policy update re-scores; nothing else is kept). With ``schedule.preview_reward`` they stop instead
a given number of model calls after the last checkpoint, where their previews are scored (at the
checkpoint itself the pruning's scores serve): the rollout ends there and the trainer takes those
scores as the rewards. With ``schedule.preview_model = "reference"`` the scored previews are the
frozen model's (the trainer's LoRA off, ``reference``): the policy being trained cannot move the
judge of its own latents; where rows go on after such a checkpoint, the survivors' next step takes
one more call, the policy's.

Noise: each prompt has its own generator on the model's device, seeded from the prompt's seed;
every step draws the noise of its whole group (``G`` rows, one call per prompt) and the active
rows take theirs by row id. A trajectory's noise therefore depends only on its prompt's seed, its
row id and the step — not on pruning, the other prompts in the batch, the number of processes or
the micro-batch size.
"""
from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from . import ovf
from .compute import Compute
from .denoiser import Denoiser, call_slices, cfg_rows, noise_to_start, proxy_decoder
from .methods import PruneSchedule, Windows
from .samplers import check_sampler, step_from_x0

ScoreFn = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


@dataclasses.dataclass
class Rollout:
    """Survivors of one expand-and-prune sampling round. ``N = B·K`` rows, grouped by prompt."""

    prompts: list[str]              # (B,)
    prompt_index: torch.Tensor      # (N,) which prompt each row belongs to
    row_id: torch.Tensor            # (N,) the row's index 0..G_max-1 in its original group
    sigmas: torch.Tensor            # (T+1,)
    latents: torch.Tensor           # (N, S+1, C, H, W): x at every step, the last is the final latent (S = T), or
                                    # the latent the survivors stopped at (preview_reward: S = the scored step)
    stds: torch.Tensor              # (N, S)
    log_probs: torch.Tensor         # (N, S), mean over latent elements
    cond: Any                       # the survivors' conditioning (rows aligned with N)
    checkpoints: list[dict]         # per checkpoint: step c, sigma, proxy rewards (B, K_prev), kept row ids (B, K_next)
    compute: Compute
    preview: dict | None = None     # preview_reward: the scored step, its rows' count and the survivors' positions
                                    # among them ({"step", "scored", "pos"}); None when the survivors finished

    @property
    def group(self) -> int:
        return self.latents.shape[0] // len(self.prompts)


def _prompt_generator(prompt_seed: int, step: int) -> torch.Generator:
    """The random selector's stream for one prompt at one checkpoint: like the rows' noise, it
    depends on the prompt's seed only, not on which prompts share the batch (or the process)."""
    return torch.Generator().manual_seed((int(prompt_seed) * 999_983 + step * 104_729 + 5) % (2**63 - 1))


class GroupNoise:
    """Standard normal noise for ``B`` prompts' groups of ``G`` rows: one generator per prompt on
    ``device``; :meth:`draw` returns the next step's noise of every row of every group, (B·G, C, H, W)."""

    def __init__(self, prompt_seeds: Sequence[int], group_size: int, shape: Sequence[int], device: torch.device):
        self.shape, self.group_size, self.device = tuple(shape), group_size, torch.device(device)
        self.gens = [torch.Generator(device=self.device).manual_seed((int(s) * 1_000_003 + 17) % (2**63 - 1))
                     for s in prompt_seeds]

    def draw(self) -> torch.Tensor:
        return torch.cat([torch.randn((self.group_size, *self.shape), generator=g, device=self.device)
                          for g in self.gens])

    def start(self, shared: bool = False) -> torch.Tensor:
        """The initial noise, (B·G, C, H, W): every row its own, or — ``shared`` (MixGRPO) — one per
        prompt for its whole group."""
        if not shared:
            return self.draw()
        return torch.cat([torch.randn((1, *self.shape), generator=g, device=self.device).expand(self.group_size, *self.shape)
                          for g in self.gens])


def denoise_rows(model: Denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: Any, cfg: float,
                 micro_batch: int | None, compute: Compute | None = None) -> torch.Tensor:
    """``model.denoise`` of the rows of ``x`` (A, C, H, W) at ``sigma`` (A,), at most
    ``micro_batch`` network rows per call (a guided row counts two). Float32 x0, (A, C, H, W)."""
    calls = call_slices(len(x), micro_batch, cfg)
    outs = []
    for sl in calls:
        c = cond if len(calls) == 1 else model.select_cond(cond, torch.arange(sl.start, sl.stop))
        outs.append(model.denoise(x[sl], sigma[sl], c, cfg).float())
        if compute is not None:
            compute.model_calls += cfg_rows(cfg)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def pooled_size(n: int, scale: float) -> int:
    """A latent side of ``n`` cells pooled to ``scale`` of it: at least 1, and even when ``n`` is (some
    VAEs decode in 2×2 patches)."""
    m = max(1, round(n * scale))
    return max(2, m - m % 2) if n % 2 == 0 and n >= 2 else m


def pool_latent(x0: torch.Tensor, scale: float) -> torch.Tensor:
    """``x0`` (A, C, H, W) or a video's (A, C, T, H, W) area-averaged to ``scale`` of its height and
    width: a preview decoded from it costs about ``scale²`` of a full decode. ``scale = 1``: ``x0``."""
    if scale == 1.0:
        return x0
    h, w = x0.shape[-2:]
    flat = x0.reshape(x0.shape[0], -1, h, w).float()
    pooled = F.interpolate(flat, size=(pooled_size(h, scale), pooled_size(w, scale)), mode="area")
    return pooled.reshape(*x0.shape[:-2], *pooled.shape[-2:]).to(x0.dtype)


def score_images_of(model: Denoiser, x0: torch.Tensor, prompts: Sequence[str], score_fn: ScoreFn,
                    micro_batch: int | None, scale: float = 1.0) -> torch.Tensor:
    """Decode the previews ``x0`` (A, C, H, W) with the model's proxy decoder — from the latent
    pooled to ``scale`` of its size (:func:`pool_latent`) — and score the images, ``micro_batch``
    at a time → (A,) float32 on the CPU."""
    decode, out = proxy_decoder(model), []
    with torch.no_grad():
        for sl in call_slices(len(x0), micro_batch):
            out.append(score_fn(decode(pool_latent(x0[sl], scale)), list(prompts[sl])).float().cpu())
    return torch.cat(out)


def sample_group(model: Denoiser, prompts: Sequence[str], prompt_seeds: Sequence[int], steps: int,
                 schedule: PruneSchedule, sampler: str, noise_level: float, cfg: float = 1.0,
                 score_fn: ScoreFn | None = None, select_generator: torch.Generator | None = None,
                 callback: Callable[[dict], None] | None = None, micro_batch: int | None = None,
                 decode_micro_batch: int | None = None, sde_steps: Windows = None,
                 reference: Callable[[], AbstractContextManager] | None = None) -> Rollout:
    """Sample ``G_max`` trajectories for each prompt, pruning at the schedule's checkpoints.

    ``score_fn(images, prompts) -> (A,)`` scores the decoded proxies (needed when the schedule has
    checkpoints). The ``random`` selector draws from ``select_generator`` if given, else from a
    stream per prompt seeded from its seed. ``callback`` receives ``{"step", "active", "x0",
    "row_prompt", "row_id"}`` after every model call (progress bars, live previews).
    ``micro_batch`` caps the rows of one model call (a guided row counts two) and
    ``decode_micro_batch`` the images of one decode-and-score call; results do not depend on them.
    ``sde_steps``: the steps that draw noise (the SDE window) — one tuple for every row, or a list
    with one per prompt; the others take the deterministic step (noise level 0, std 0: not
    trained). None: every step. With ``schedule.shared_noise`` a prompt's rows start from one noise,
    and until the first SDE step they are one latent: those model calls are made once per prompt.
    ``reference``: a context inside which ``model`` is the frozen reference (the trainer's LoRA
    off); with ``schedule.preview_model = "reference"`` the scored previews are made inside it.
    None: the model is its own reference (nothing is being trained)."""
    schedule.validate(steps)
    check_sampler(model.family, sampler)
    if schedule.checkpoints and score_fn is None:
        raise ValueError("this schedule prunes at checkpoints, which needs a reward (score_fn) for the proxies")
    if len(prompt_seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(prompt_seeds)} seeds; pass one seed per prompt")
    B, G, T = len(prompts), schedule.group_size, steps
    compute = Compute()
    device = device_of(model)
    sigmas = model.sigmas(T)  # (T+1,)
    noise = GroupNoise(prompt_seeds, G, model.latent_shape, device)
    row_prompt = torch.arange(B).repeat_interleave(G)  # (B·G,)
    row_id = torch.arange(G).repeat(B)  # (B·G,)
    cond = model.encode_prompts([prompts[b] for b in row_prompt.tolist()])
    x = noise_to_start(noise.start(schedule.shared_noise), sigmas[0], model.family)  # (B·G, C, H, W)
    hist_x: list[torch.Tensor] = []
    hist_std: list[torch.Tensor] = []
    hist_logp: list[torch.Tensor] = []
    checkpoints: list[dict] = []
    keep_after = {c - 1: k for c, k in zip(schedule.checkpoints, schedule.keep)}  # step index → K
    stop = schedule.preview_step(T) if schedule.preview_reward is not None else None
    preview = None
    mult = cfg_rows(cfg)

    # With shared noise a prompt's rows are one latent until the first SDE step: its model calls are
    # made once per prompt and the x0 given to every row (exactly what each would get; no noise yet).
    identical = schedule.shared_noise
    judged: set[int] = set()  # the steps whose previews the frozen reference makes
    if schedule.preview_model == "reference" and reference is not None:
        judged = {c - 1 for c in schedule.checkpoints} | ({stop} if stop is not None else set())

    def predict(sigma: torch.Tensor) -> torch.Tensor:
        """The active rows' x0 (A, C, H, W) at ``sigma``: one call per prompt while its rows are one latent."""
        a = x.shape[0]
        with compute.phase("sampling", device), torch.no_grad():
            if identical:
                _, inverse = torch.unique(row_prompt, return_inverse=True)
                first = torch.zeros(int(inverse.max()) + 1, dtype=torch.long).scatter_reduce(
                    0, inverse, torch.arange(a), "amin", include_self=False)  # each prompt's first row
                compute.nfe_sample += len(first) * mult
                return denoise_rows(model, x[first], sigma.expand(len(first)).to(device),
                                    model.select_cond(cond, first), cfg, micro_batch, compute)[inverse.to(device)]
            compute.nfe_sample += a * mult
            return denoise_rows(model, x, sigma.expand(a).to(device), cond, cfg, micro_batch, compute)

    for i in range(T):
        a = x.shape[0]
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if i in judged:
            with reference():
                x0 = predict(sigma)  # the frozen model's previews
        else:
            x0 = predict(sigma)  # (A, C, H, W)
        if callback is not None:
            callback({"step": i, "active": a, "x0": x0, "row_prompt": row_prompt, "row_id": row_id})
        if i in keep_after:
            kept_pos, record = _prune(model, x0, row_prompt, row_id, prompts, prompt_seeds, schedule,
                                      keep_after[i], score_fn, select_generator, compute, i, float(sigma),
                                      decode_micro_batch)
            checkpoints.append(record)
            # Pruned rows leave now: the latents, conditioning and history shrink.
            x, x0 = x[kept_pos], x0[kept_pos]
            cond = model.select_cond(cond, kept_pos)
            row_prompt, row_id = row_prompt[kept_pos], row_id[kept_pos]
            hist_x = [h[kept_pos] for h in hist_x]
            hist_std = [h[kept_pos] for h in hist_std]
            hist_logp = [h[kept_pos] for h in hist_logp]
        if i == stop:  # preview_reward: the survivors are scored here and stop
            preview = {"step": i + 1, "scored": a, "pos": kept_pos if i in keep_after else torch.arange(a)}
            if i not in keep_after:
                _score_previews(model, x0, row_prompt, prompts, schedule, score_fn, compute, decode_micro_batch)
            break
        if i in judged:  # the previews were the reference's; the survivors step on with the policy's own x0
            x0 = predict(sigma)
        eps = noise.draw()[(row_prompt * G + row_id).to(device)]  # (A, C, H, W): each row's own noise
        sde = _sde_rows(sde_steps, i, row_prompt)
        identical = identical and not (sde if isinstance(sde, bool) else bool(sde.any()))
        with compute.phase("sampling", device):
            prev, std, logp = _step(model.family, sampler, x, x0, sigma, sigma_next, noise_level, eps, sde)
        hist_x.append(x)
        hist_std.append(std)
        hist_logp.append(logp)
        x = prev

    latents = torch.stack(hist_x + [x], dim=1)  # (N, S+1, C, H, W)
    return Rollout(
        prompts=list(prompts), prompt_index=row_prompt, row_id=row_id, sigmas=sigmas, latents=latents,
        stds=torch.stack(hist_std, 1), log_probs=torch.stack(hist_logp, 1),
        cond=cond, checkpoints=checkpoints, compute=compute, preview=preview)


def _sde_rows(sde_steps: Windows, i: int, row_prompt: torch.Tensor) -> torch.Tensor | bool:
    """Which active rows take an SDE step at step ``i``: all (True), none (False), or a mask (A,)."""
    if sde_steps is None:
        return True
    if not sde_steps or isinstance(sde_steps[0], int):
        return i in sde_steps
    mask = torch.tensor([i in sde_steps[b] for b in row_prompt.tolist()])
    return bool(mask.all()) if mask.all() or not mask.any() else mask


def _step(family: str, sampler: str, x, x0, sigma, sigma_next, noise_level: float, eps,
          sde: torch.Tensor | bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the active rows: the SDE for the rows ``sde`` marks, the deterministic step for
    the others. Returns ``(prev, std (A,), log_prob (A,))``."""
    if isinstance(sde, bool):
        prev, _, std, logp = step_from_x0(family, sampler, x, x0, sigma, sigma_next, noise_level if sde else 0.0,
                                          noise=eps)
        return prev, std.flatten(1)[:, 0], logp
    prev_s, _, std_s, logp_s = step_from_x0(family, sampler, x, x0, sigma, sigma_next, noise_level, noise=eps)
    prev_d, _, _, _ = step_from_x0(family, sampler, x, x0, sigma, sigma_next, 0.0, noise=eps)
    m = sde.to(x.device)
    prev = torch.where(m.view(-1, *([1] * (x.ndim - 1))), prev_s, prev_d)
    return prev, torch.where(m, std_s.flatten(1)[:, 0], 0.0), torch.where(m, logp_s, 0.0)


def _prune(model: Denoiser, x0: torch.Tensor, row_prompt: torch.Tensor, row_id: torch.Tensor, prompts: Sequence[str],
           prompt_seeds: Sequence[int], schedule: PruneSchedule, k: int, score_fn: ScoreFn,
           select_generator: torch.Generator | None, compute: Compute, step: int,
           sigma: float, decode_micro_batch: int | None) -> tuple[torch.Tensor, dict]:
    """One checkpoint: decode and score the active rows' proxies ``x0`` (A, C, H, W), select ``k``
    per prompt. Returns the kept positions into the active batch (grouped by prompt) and the
    checkpoint's record."""
    B = len(prompts)
    proxy = _score_previews(model, x0, row_prompt, prompts, schedule, score_fn, compute, decode_micro_batch)
    per_prompt = proxy.view(B, -1)  # (B, K_prev)
    kept_pos = torch.cat([
        ovf.select(schedule.selector, per_prompt[b], k, select_generator or _prompt_generator(prompt_seeds[b], step))
        + b * per_prompt.shape[1] for b in range(B)])  # positions into the active batch, grouped by prompt
    record = {"step": step + 1, "sigma": sigma, "rewards": per_prompt, "row_id": row_id.view(B, -1).clone(),
              "kept": row_id[kept_pos].view(B, k).clone()}
    return kept_pos, record


def _score_previews(model: Denoiser, x0: torch.Tensor, row_prompt: torch.Tensor, prompts: Sequence[str],
                    schedule: PruneSchedule, score_fn: ScoreFn, compute: Compute,
                    decode_micro_batch: int | None) -> torch.Tensor:
    """The active rows' previews ``x0`` (A, C, H, W) decoded and scored, counted in ``compute`` → (A,)."""
    with compute.phase("proxy", x0.device):
        scores = score_images_of(model, x0, [prompts[b] for b in row_prompt.tolist()], score_fn,
                                 decode_micro_batch, schedule.proxy_scale)
    compute.proxy_decodes += len(x0)
    compute.proxy_rewards += len(x0)
    return scores


def select_rows(model: Denoiser, rollout: Rollout, index: torch.Tensor) -> Rollout:
    """The sub-rollout of rows ``index`` (e.g. the static OVF subset), in the given order."""
    return dataclasses.replace(
        rollout, prompt_index=rollout.prompt_index[index], row_id=rollout.row_id[index],
        latents=rollout.latents[index], stds=rollout.stds[index],
        log_probs=rollout.log_probs[index],
        cond=model.select_cond(rollout.cond, index))


def device_of(model: Denoiser) -> torch.device:
    """Where ``model`` computes: its own ``device``, else its first parameter's, else the CPU."""
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    try:
        return next(model.net.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")
