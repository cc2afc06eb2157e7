"""GRPO training of a LoRA with the expand-and-prune sampler.

One epoch: pick ``B`` prompts; sample ``G_max`` trajectories each with the current policy,
pruning at the schedule's checkpoints (``pro-grpo``), or none (``grpo``), optionally selecting on
the final reward (``ovf``); score the finished images; normalise advantages over each prompt's
trained trajectories; then take the per-step clipped policy-gradient updates on their stored
steps (METHOD.md §6).
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import grpo, ovf
from .compute import Compute
from .config import TrainConfig, to_toml
from .denoiser import Denoiser, noise_to_start
from .group import Rollout, sample_group, select_rows
from .io import write_json, write_text
from .lora import LoraAdapter, lora_from_file
from .rewards import Reward, build_reward, check_scores
from .samplers import randn_rows, sample_ode, step_from_x0

EVAL_SEED_BASE = 1_000_000_007  # eval noise never coincides with training noise


def load_model(cfg: TrainConfig) -> Denoiser:
    if cfg.model.comfyui:
        try:
            from nodes.headless import load_comfy_denoiser  # type: ignore[import-not-found]
        except ImportError as e:
            raise RuntimeError(
                "training a ComfyUI checkpoint needs the pack's host adapter (nodes/headless.py) on the "
                f"Python path: run from the pack's folder ({e})") from e
        return load_comfy_denoiser(cfg.model.comfyui, cfg.model.checkpoint, device=cfg.run.device)
    from .embedded import load_digits_model

    model = load_digits_model(cfg.model.name, cfg.model.path)
    model.net.to(cfg.run.device)
    return model


def load_prompts(path: str | None, model: Denoiser) -> list[str]:
    if path is None:
        prompts = list(getattr(model, "default_prompts", ()) or ())
        if not prompts:
            raise ValueError("this model has no built-in prompt set; give a prompt file with --run.prompts")
        return prompts
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {p} has no prompts; write one prompt per line")
    return prompts


@torch.no_grad()
def sample_deterministic(model: Denoiser, prompts: Sequence[str], seeds: Sequence[int], steps: int,
                         cfg: float = 1.0, batch: int = 256) -> torch.Tensor:
    """Final latents of deterministic (ODE / DDIM η=0) sampling, one seed per prompt; a row's
    result depends only on its prompt and seed."""
    sig = model.sigmas(steps)
    device = next(model.net.parameters()).device
    outs = []
    for i in range(0, len(prompts), batch):
        ps, ss = prompts[i:i + batch], seeds[i:i + batch]
        gens = [torch.Generator().manual_seed(int(s)) for s in ss]
        x = noise_to_start(randn_rows((len(ps), *model.latent_shape), gens), sig[0], model.family).to(device)
        outs.append(sample_ode(model, x, sig, {"cond": model.encode_prompts(ps), "cfg": cfg}))
    return torch.cat(outs)


class EMA:
    """Exponential moving average of the LoRA parameters."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and averaged weights (call twice to restore)."""
        for s, p in zip(self.shadow, self.params):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


@dataclasses.dataclass
class EpochResult:
    rollout: Rollout
    scores: dict[str, torch.Tensor]   # component → (N,) final rewards of the trained rows
    advantages: torch.Tensor          # (N,)
    metrics: dict[str, Any]


class Trainer:
    """Pro-GRPO / GRPO on any :class:`~progrpo_core.denoiser.Denoiser`."""

    def __init__(self, cfg: TrainConfig, model: Denoiser | None = None, reward: Reward | None = None,
                 gold: Reward | None = None, prompts: Sequence[str] | None = None,
                 adapter: LoraAdapter | None = None, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.log = log
        self.model = model if model is not None else load_model(cfg)
        self.sampler = cfg.sampler.resolved(self.model.family)
        self.schedule = cfg.prune_schedule()
        self.reward = reward if reward is not None else build_reward(
            cfg.reward.name, cfg.reward.path, device=cfg.reward.device, dtype=cfg.reward.dtype)
        if gold is None and cfg.reward.gold:
            gold = build_reward(cfg.reward.gold, device=cfg.reward.device, dtype=cfg.reward.dtype)
        self.gold = gold
        self.prompts = list(prompts) if prompts is not None else load_prompts(cfg.run.prompts, self.model)
        if not self.prompts:
            raise ValueError("the prompt list is empty; give at least one prompt")
        if adapter is not None:  # e.g. the host's own weight adapters, same interface as LoraAdapter
            self.adapter = adapter
        elif cfg.lora.init_from:
            self.adapter = lora_from_file(self.model, cfg.lora.init_from)
        else:
            self.adapter = LoraAdapter(self.model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, seed=cfg.run.seed)
        g = cfg.grpo
        self.optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=g.lr, weight_decay=g.weight_decay)
        self.ema = EMA(self.adapter.parameters(), g.ema_decay) if g.ema else None
        self.compute = Compute()
        self.epoch = 0
        self.optimizer_steps = 0
        self.skipped_updates = 0
        self._rng = torch.Generator().manual_seed(cfg.run.seed * 7 + 3)

    # -- sampling -----------------------------------------------------------------------------
    def epoch_prompts(self, epoch: int) -> tuple[list[str], list[int]]:
        """The ``B`` prompts of an epoch and their seeds (global: epoch·B + b)."""
        B = self.cfg.grpo.prompts_per_epoch
        g = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + epoch)
        idx = torch.randint(0, len(self.prompts), (B,), generator=g).tolist()
        seeds = [self.cfg.run.seed * 1_000_000 + epoch * B + b for b in range(B)]
        return [self.prompts[i] for i in idx], seeds

    def score(self, reward: Reward, latents: torch.Tensor, prompts: Sequence[str], compute: Compute,
              phase: str = "final") -> dict[str, torch.Tensor]:
        with compute.phase(f"{phase}_scoring"), torch.no_grad():
            images = self.model.decode(latents)
            out = reward.evaluate(images, list(prompts))
        for k, v in out.items():
            check_scores(v, f"reward {k!r}")
        return out

    def sample_epoch(self, epoch: int, callback=None) -> EpochResult:
        """Sample, score and select one epoch's trajectories; no gradient step."""
        prompts, seeds = self.epoch_prompts(epoch)
        sel_gen = torch.Generator().manual_seed(self.cfg.run.seed * 31 + epoch)
        s = self.sampler
        reward = self.reward

        def proxy_score(images, row_prompts):
            scores = reward.evaluate(images, row_prompts)
            return check_scores(scores[reward.total_key], "proxy reward")

        rollout = sample_group(self.model, prompts, seeds, s.steps, self.schedule, s.sampler, s.noise_level,
                               s.cfg, score_fn=proxy_score, select_generator=sel_gen, callback=callback)
        comp = rollout.compute
        row_prompts = [prompts[b] for b in rollout.prompt_index.tolist()]
        scores = self.score(reward, rollout.latents[:, -1], row_prompts, comp)
        comp.final_decodes += rollout.latents.shape[0]
        comp.final_rewards += rollout.latents.shape[0]
        B = len(prompts)
        total = scores[reward.total_key].view(B, -1)  # (B, K_finished)
        adv_finished = grpo.advantages(total, self.cfg.grpo.adv_norm)
        metrics: dict[str, Any] = {
            "reward_finished_mean": float(total.mean()),
            "clustered_finished": grpo.clustered_fraction(adv_finished),
        }
        if self.schedule.final_keep is not None:  # static selection on the true reward (ovf method)
            keep = torch.cat([ovf.select(self.schedule.selector, total[b], self.schedule.final_keep, sel_gen)
                              + b * total.shape[1] for b in range(B)])
            rollout = select_rows(self.model, rollout, keep)
            scores = {k: v[keep] for k, v in scores.items()}
            total = scores[reward.total_key].view(B, -1)
        if self.cfg.grpo.separate_reward_norm and len(reward.components()) > 1:
            weights = dict(reward.components())
            adv = grpo.combined_advantages({k: scores[k].view(B, -1) for k in weights}, weights,
                                           self.cfg.grpo.adv_norm)
        else:
            adv = grpo.advantages(total, self.cfg.grpo.adv_norm)
        if rollout.checkpoints:
            first = rollout.checkpoints[0]["rewards"]  # proxy rewards of the expanded group
            metrics["clustered_expanded"] = grpo.clustered_fraction(grpo.advantages(first, self.cfg.grpo.adv_norm))
        metrics.update({
            "reward_mean": float(total.mean()), "reward_std": float(total.std(unbiased=False)),
            "clustered_trained": grpo.clustered_fraction(adv),
            "components": {k: float(v.mean()) for k, v in scores.items()},
            "proxy": [{"step": c["step"], "sigma": round(c["sigma"], 4), "mean": float(c["rewards"].mean()),
                       "std": float(c["rewards"].std(unbiased=False)), "kept": c["kept"].tolist()}
                      for c in rollout.checkpoints],
            "prompts": prompts,
        })
        return EpochResult(rollout, scores, adv.reshape(-1), metrics)

    # -- training -----------------------------------------------------------------------------
    def train_steps_for(self, rollout: Rollout, epoch: int) -> list[int]:
        """The stochastic steps (std > 0) trained this epoch: a seeded random fraction of them."""
        stochastic = [j for j in range(rollout.stds.shape[1]) if bool((rollout.stds[:, j] > 0).all())]
        if not stochastic:
            raise ValueError("no stochastic sampling step to train on; use a noise level > 0")
        n = max(1, round(self.cfg.grpo.timestep_fraction * len(stochastic)))
        g = torch.Generator().manual_seed(self.cfg.run.seed * 131 + epoch)
        pick = torch.randperm(len(stochastic), generator=g)[:n].sort().values.tolist()
        return [stochastic[i] for i in pick]

    def train_on(self, result: EpochResult, epoch: int, max_updates: int | None = None) -> dict[str, float]:
        """Policy-gradient updates on one epoch's trained trajectories."""
        g, s = self.cfg.grpo, self.sampler
        ro, adv = result.rollout, result.advantages
        n_rows = ro.latents.shape[0]
        steps = self.train_steps_for(ro, epoch)
        perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(self.cfg.run.seed * 977 + epoch))
        chunks = list(perm.split(g.train_batch_size))
        mult = 1 if s.cfg == 1.0 else 2
        comp = self.compute
        stats: dict[str, list[float]] = {"loss": [], "kl": [], "clip_frac": [], "approx_kl": [], "grad_norm": []}
        params = self.adapter.parameters()
        self.model.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        updates = 0
        poisoned = False
        for ci, rows in enumerate(chunks):
            cond = self.model.select_cond(ro.cond, rows)
            for j in steps:
                with comp.phase("training"):
                    x, prev = ro.latents[rows, j], ro.latents[rows, j + 1]
                    sig, sig_next = ro.sigmas[j], ro.sigmas[j + 1]
                    sig_rows = sig.expand(len(rows)).to(x.device)
                    x0 = self.model.denoise(x, sig_rows, cond, s.cfg)
                    _, mean, std, logp = step_from_x0(self.model.family, s.sampler, x, x0, sig, sig_next,
                                                      s.noise_level, prev_sample=prev)
                    loss, st = grpo.clipped_loss(logp, ro.log_probs[rows, j], adv[rows].to(logp), g.clip_range,
                                                 g.adv_clip)
                    kl = torch.zeros(())
                    if g.kl_beta > 0:
                        with torch.no_grad(), self.adapter.disabled():
                            x0_ref = self.model.denoise(x, sig_rows, cond, s.cfg)
                        mean_ref = step_from_x0(self.model.family, s.sampler, x, x0_ref, sig, sig_next,
                                                s.noise_level, prev_sample=prev)[1]
                        kl = grpo.kl_to_reference(mean, mean_ref, std).mean()
                        loss = loss + g.kl_beta * kl
                        comp.nfe_train_fwd += len(rows) * mult
                    if not torch.isfinite(loss):
                        poisoned = True
                    else:
                        (loss / (len(steps) * g.grad_accum)).backward()
                comp.nfe_train_fwd += len(rows) * mult
                comp.nfe_train_bwd += len(rows) * mult
                comp.model_calls += mult
                stats["loss"].append(float(loss.detach()))
                stats["kl"].append(float(kl))
                stats["clip_frac"].append(st["clip_frac"])
                stats["approx_kl"].append(st["approx_kl"])
            if (ci + 1) % g.grad_accum == 0 or ci == len(chunks) - 1:
                with comp.phase("training"):
                    gn = torch.nn.utils.clip_grad_norm_(params, g.grad_clip if g.grad_clip > 0 else float("inf"))
                    if poisoned or not torch.isfinite(gn):
                        self.skipped_updates += 1
                        warnings.warn(f"epoch {epoch}: non-finite loss or gradient; update skipped "
                                      f"({self.skipped_updates} so far)", RuntimeWarning, stacklevel=2)
                    else:
                        self.optimizer.step()
                        if self.ema is not None:
                            self.ema.update()
                        self.optimizer_steps += 1
                        updates += 1
                        stats["grad_norm"].append(float(gn))
                    self.optimizer.zero_grad(set_to_none=True)
                    poisoned = False
                if max_updates is not None and updates >= max_updates:
                    break
        self.model.net.eval()
        out = {k: (sum(v) / len(v) if v else 0.0) for k, v in stats.items()}
        out["updates"] = updates
        out["trained_steps"] = steps
        return out

    # -- evaluation ---------------------------------------------------------------------------
    def eval_prompts(self) -> tuple[list[str], list[int]]:
        n = self.cfg.run.eval_seeds
        prompts = [p for p in self.prompts for _ in range(n)]
        seeds = [EVAL_SEED_BASE + i for i in range(len(prompts))]
        return prompts, seeds

    @torch.no_grad()
    def evaluate(self, use_ema: bool = True) -> dict[str, Any]:
        """Deterministic sampling on fixed prompts and seeds; mean reward (and the gold reward)."""
        swap = use_ema and self.ema is not None
        if swap:
            self.ema.swap()
        try:
            prompts, seeds = self.eval_prompts()
            latents = self.sample_deterministic(prompts, seeds)
            comp = Compute()
            scores = self.score(self.reward, latents, prompts, comp, phase="eval")
            out = {"reward": float(scores[self.reward.total_key].mean()),
                   "components": {k: float(v.mean()) for k, v in scores.items()},
                   "latents": latents}
            if self.gold is not None:
                out["gold"] = float(self.score(self.gold, latents, prompts, comp, phase="eval")
                                    [self.gold.total_key].mean())
            return out
        finally:
            if swap:
                self.ema.swap()

    def sample_deterministic(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        return sample_deterministic(self.model, prompts, seeds, self.sampler.eval_steps, self.sampler.cfg)

    # -- the run ------------------------------------------------------------------------------
    def lora_metadata(self) -> dict[str, Any]:
        c = self.cfg
        return {"method": c.grpo.method, "schedule": dataclasses.asdict(self.schedule),
                "sampler": dataclasses.asdict(self.sampler), "steps": self.optimizer_steps, "epochs": self.epoch,
                "reward": c.reward.name, "base_model": c.model.checkpoint or c.model.name, "seed": c.run.seed}

    def save_lora(self, path: str | Path) -> Path:
        if self.ema is not None:
            self.ema.swap()
        try:
            return self.adapter.save(path, self.lora_metadata())
        finally:
            if self.ema is not None:
                self.ema.swap()

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Train for ``run.epochs`` (or until ``run.max_steps`` optimizer steps); write the run folder."""
        from tqdm.auto import tqdm

        from . import plots

        c = self.cfg
        out = Path(c.run.out)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.toml", to_toml(c))
        metrics_path = out / "metrics.jsonl"
        metrics_path.write_text("")
        t_start = time.perf_counter()
        before = self.evaluate()
        n_per_prompt = c.run.eval_seeds
        plots.save_grid(self.model.decode(before["latents"]), n_per_prompt, out / "samples_before.png")
        self.log(f"eval reward before: {before['reward']:.4f}"
                 + (f" (gold {before['gold']:.4f})" if "gold" in before else ""))
        eval_points = [(0, before["reward"])]
        curve_epochs, curve_reward, curve_loss = [], [], []
        bar = tqdm(range(c.run.epochs), desc=f"{c.grpo.method}", disable=not progress, unit="epoch")
        for epoch in bar:
            self.epoch = epoch + 1
            t0 = time.perf_counter()
            res = self.sample_epoch(epoch)
            self.compute.add(res.rollout.compute)
            remaining = None if c.run.max_steps is None else c.run.max_steps - self.optimizer_steps
            tstats = self.train_on(res, epoch, max_updates=remaining)
            row = {"epoch": self.epoch, "optimizer_step": self.optimizer_steps, **res.metrics,
                   "loss": tstats["loss"], "kl": tstats["kl"], "clip_frac": tstats["clip_frac"],
                   "approx_kl": tstats["approx_kl"], "grad_norm": tstats["grad_norm"],
                   "trained_steps": tstats["trained_steps"], "skipped_updates": self.skipped_updates,
                   "nfe": self.compute.nfe_sample, "nfe_train_fwd": self.compute.nfe_train_fwd,
                   "nfe_train_bwd": self.compute.nfe_train_bwd,
                   "decodes": self.compute.proxy_decodes + self.compute.final_decodes,
                   "reward_calls": self.compute.proxy_rewards + self.compute.final_rewards,
                   "epoch_wall_s": round(time.perf_counter() - t0, 4),
                   "wall_s": round(time.perf_counter() - t_start, 3)}
            last = epoch == c.run.epochs - 1 or (c.run.max_steps is not None and self.optimizer_steps >= c.run.max_steps)
            if c.run.eval_every and self.epoch % c.run.eval_every == 0 and not last:
                ev = self.evaluate()
                row["eval_reward"] = ev["reward"]
                if "gold" in ev:
                    row["eval_gold"] = ev["gold"]
                eval_points.append((self.epoch, ev["reward"]))
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            curve_epochs.append(self.epoch)
            curve_reward.append(row["reward_mean"])
            curve_loss.append(row["loss"])
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", steps=self.optimizer_steps)
            if c.run.save_every and self.epoch % c.run.save_every == 0:
                self.save_lora(out / "lora.safetensors")
            if last:
                break
        after = self.evaluate()
        eval_points.append((self.epoch, after["reward"]))
        lora_path = self.save_lora(out / "lora.safetensors")
        plots.save_grid(self.model.decode(after["latents"]), n_per_prompt, out / "samples_after.png")
        plots.reward_curve(curve_epochs, curve_reward, eval_points, out / "reward_curve.png",
                           title=f"{c.grpo.method} on {c.model.name}: {c.reward.name}", loss=curve_loss)
        wall = time.perf_counter() - t_start
        summary = {
            "method": c.grpo.method, "model": c.model.checkpoint or c.model.name, "reward": c.reward.name,
            "eval_reward_before": before["reward"], "eval_reward_after": after["reward"],
            "epochs": self.epoch, "optimizer_steps": self.optimizer_steps, "skipped_updates": self.skipped_updates,
            "nfe_total": self.compute.nfe_sample + self.compute.nfe_train_fwd,
            "compute": self.compute.as_dict(), "compute_units": self.compute.units(),
            "wall_s": round(wall, 2), "lora": str(lora_path), "seed": c.run.seed,
            "schedule": dataclasses.asdict(self.schedule),
        }
        if "gold" in after:
            summary["gold"] = c.reward.gold
            summary["eval_gold_before"], summary["eval_gold_after"] = before["gold"], after["gold"]
        write_json(out / "summary.json", summary)
        self.log(f"eval reward after: {after['reward']:.4f} ({self.optimizer_steps} optimizer steps, "
                 f"{wall:.0f}s); run folder {out}")
        return summary
