"""The methods: prune schedules and the presets ``--method`` names.

A :class:`PruneSchedule` is the funnel one group goes through: ``G_max = K_0 > K_1 > … > K_I``
trajectories, pruned after ``t_1 < … < t_I`` model calls (a checkpoint ``c`` prunes after ``c`` of
the ``T`` steps, the paper's "steps 5 and 7 of 10"), optionally followed by a selection on the
*true* final reward (``final_keep``, static OVF).

:data:`METHODS` is the one table of method presets. The config resolves ``--method`` through it,
the trainer node's tooltips and the README's method table are generated from it, and the bench
runs its headline rows from it. Checkpoints are stored as fractions of ``T`` and placed at
``max(1, round(f·T))`` (kept in ``1..T−1`` and increasing), and SDE windows as a fraction of ``T``
too (``max(1, round(f·T))`` steps), so a preset fits any step count from few-step models' T = 4 to 50.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from . import ovf

WINDOW_MODES = ("random", "sliding", "progressive", "after-pruning")
WINDOW_DRAWS = ("epoch", "prompt")
PREVIEW_MODELS = ("policy", "reference")
Windows = tuple[int, ...] | list[tuple[int, ...]] | None  # one window for all rows, one per prompt, or none


@dataclasses.dataclass(frozen=True)
class PruneSchedule:
    """Funnel ``G_max = K_0 > K_1 > … > K_I`` with checkpoints ``t_1 < … < t_I`` in ``1..T−1``;
    optional ``final_keep`` selects on the *true* final reward (static OVF)."""

    group_size: int
    checkpoints: tuple[int, ...] = ()
    keep: tuple[int, ...] = ()
    final_keep: int | None = None
    selector: str = "ovf"
    sde_window: int = 0                  # SDE steps per epoch, the rest ODE (0: every step is an SDE step)
    window_mode: str = "random"          # random (Flow-GRPO-Fast), progressive (MixGRPO), sliding, after-pruning
    window_span: tuple[int, int] | None = None   # random: the window lies in [lo, hi); sliding: starts there
    slide_every: int = 5                 # sliding / progressive: epochs between moves of one step
    prune_after_window: bool = False     # the (single) checkpoint follows the window: prune right after it
    window_draw: str = "epoch"           # random: one window per epoch, or one per prompt (per sampling batch)
    shared_noise: bool = False           # every trajectory of a prompt starts from the same noise (MixGRPO)
    proxy_scale: float = 1.0             # the previews are decoded from the x0 latent area-pooled to this fraction
                                         # of its height and width (group.pool_latent); 1: full size
    preview_reward: int | None = None    # train on a preview's reward: the survivors stop this many model calls
                                         # after the last checkpoint and their preview there is scored (0: the
                                         # checkpoint's own; at most the last call's); None: they finish and the final
                                         # images are scored
    preview_model: str = "policy"        # whose one-step prediction the scored previews are: the policy being
                                         # trained, or the frozen reference (its LoRA off), which the policy cannot
                                         # move; a checkpoint that rows go on from then takes one more call

    @property
    def survivors(self) -> int:
        """Trajectories per prompt that reach the end of sampling."""
        return self.keep[-1] if self.keep else self.group_size

    @property
    def trained(self) -> int:
        """Trajectories per prompt that are trained on."""
        return self.final_keep if self.final_keep is not None else self.survivors

    def sampled_steps(self, steps: int) -> int:
        """The model calls a survivor makes: ``T``, or with ``preview_reward`` the call whose preview
        is scored (:meth:`preview_step` + 1)."""
        return steps if self.preview_reward is None else self.preview_step(steps) + 1

    def preview_step(self, steps: int) -> int:
        """With ``preview_reward``: the step index (0-based) whose model output gives the survivors'
        scored preview, ``t_I − 1 + preview_reward``, at most the last step ``T − 1`` (a checkpoint
        that follows a moving window comes nearer the end)."""
        return min(steps - 1, self.checkpoints[-1] - 1 + int(self.preview_reward or 0))

    def sampling_nfe(self, steps: int) -> int:
        """Model evaluations per prompt while sampling (rows, without CFG):
        ``G·t_1 + K_1·(t_2 − t_1) + … + K_I·(S − t_I)``, ``S`` = :meth:`sampled_steps`; with the
        reference's previews, ``K_i`` more at each checkpoint the survivors step on from (the policy's
        own call after the reference's)."""
        alive, done, total = self.group_size, 0, 0
        for c, k in zip(self.checkpoints, self.keep):
            total += alive * (c - done)
            alive, done = k, c
        if self.preview_model == "reference":
            stop = self.preview_step(steps) if self.preview_reward is not None else None
            total += sum(k for c, k in zip(self.checkpoints, self.keep) if c - 1 != stop)
        return total + alive * (self.sampled_steps(steps) - done)

    def validate(self, steps: int) -> None:
        """Raise ``ValueError`` naming the bad value and the fix."""
        if steps < 2:
            raise ValueError(f"steps T={steps} is too few; sampling needs T >= 2 steps")
        if self.group_size < 2:
            raise ValueError(f"group size G_max={self.group_size} is too small; GRPO needs >= 2 trajectories per prompt")
        if self.selector not in ovf.SELECTORS:
            raise ValueError(f"selector {self.selector!r} unknown; expected one of {', '.join(ovf.SELECTORS)}")
        if len(self.checkpoints) != len(self.keep):
            raise ValueError(
                f"{len(self.checkpoints)} checkpoints {list(self.checkpoints)} but {len(self.keep)} survivor "
                f"counts {list(self.keep)}; give one survivor count per checkpoint")
        for c in self.checkpoints:
            if not 1 <= c <= steps - 1:
                raise ValueError(f"checkpoint step {c} is outside 1..T-1 = 1..{steps - 1}; "
                                 "pruning needs at least one step before and after it")
        if list(self.checkpoints) != sorted(set(self.checkpoints)):
            raise ValueError(f"checkpoints {list(self.checkpoints)} must be strictly increasing")
        prev = self.group_size
        for k in self.keep:
            if k > prev:
                raise ValueError(f"survivor count K={k} exceeds the {prev} trajectories alive before it "
                                 f"(G_max={self.group_size}); make each K at most the count before it")
            if k == prev:
                raise ValueError(f"the funnel {[self.group_size, *self.keep]} does not shrink at K={k}; "
                                 "each checkpoint must keep fewer than it had")
            prev = k
        if self.survivors < 2:
            raise ValueError(f"the funnel ends with {self.survivors} survivor(s); GRPO needs >= 2 per prompt")
        if self.window_mode not in WINDOW_MODES:
            raise ValueError(f"window mode {self.window_mode!r} unknown; expected one of {', '.join(WINDOW_MODES)}")
        if self.window_draw not in WINDOW_DRAWS:
            raise ValueError(f"window draw {self.window_draw!r} unknown; expected one of {', '.join(WINDOW_DRAWS)}")
        if self.window_draw == "prompt" and (self.window_mode != "random" or self.checkpoints):
            raise ValueError("a window drawn per prompt is a random window without pruning (Flow-GRPO-Fast); a "
                             "schedule that prunes, or a sliding or progressive window, draws one per epoch")
        if self.slide_every < 1:
            raise ValueError(f"slide_every={self.slide_every} must be >= 1 epoch")
        if self.preview_model not in PREVIEW_MODELS:
            raise ValueError(f"preview_model {self.preview_model!r} unknown; expected one of {', '.join(PREVIEW_MODELS)} "
                             "(policy: the model being trained makes the scored previews; reference: the frozen model)")
        if self.preview_model == "reference" and not self.checkpoints and self.preview_reward is None:
            raise ValueError("preview_model='reference' judges the scored previews, but this schedule scores none (no "
                             "checkpoints, no preview_reward): drop it, or give checkpoints")
        if not 0.0 < self.proxy_scale <= 1.0:
            raise ValueError(f"proxy_scale={self.proxy_scale} must be in (0, 1]: the fraction of the latent's height "
                             "and width the pruning previews are decoded at (1 = full size, 0.5 = half)")
        if not 0 <= self.sde_window < steps:
            raise ValueError(f"sde_window={self.sde_window} must be in 0..T-1 = 0..{steps - 1} (0: SDE on every step)")
        if self.prune_after_window and (len(self.checkpoints) != 1 or not self.sde_window
                                        or self.window_mode == "after-pruning"):
            raise ValueError(f"this method prunes once, right after its random or sliding SDE window, but the schedule "
                             f"has checkpoints {list(self.checkpoints)} (window {self.sde_window}, "
                             f"{self.window_mode}): give one survivor count (keep, e.g. 12) and no checkpoints of "
                             "your own")
        if self.sde_window and self.window_mode == "after-pruning" and self.checkpoints \
                and self.checkpoints[-1] + self.sde_window > steps:
            raise ValueError(f"an SDE window of {self.sde_window} step(s) after the last checkpoint "
                             f"{self.checkpoints[-1]} does not fit in T={steps} steps")
        if self.preview_reward is not None:
            self._validate_preview_reward(steps)
        if self.final_keep is not None:
            if not 2 <= self.final_keep < self.survivors:
                raise ValueError(f"final_keep={self.final_keep} must be in 2..{self.survivors - 1} "
                                 f"(fewer than the {self.survivors} finished trajectories, at least 2)")

    def _validate_preview_reward(self, steps: int) -> None:
        if not self.checkpoints:
            raise ValueError(f"preview_reward={self.preview_reward} scores the survivors' preview after the last "
                             "checkpoint, but this schedule has no checkpoint; use a method that prunes (e.g. "
                             "pro-mixgrpo) or leave preview_reward unset")
        if not 0 <= self.preview_reward < steps - 1:
            raise ValueError(f"preview_reward={self.preview_reward} must be in 0..{steps - 2}: the model calls after "
                             f"the last checkpoint (of T={steps}) before the scored preview, which is at most the "
                             "last call's")
        if self.preview_step(steps) < 1:
            raise ValueError(f"preview_reward={self.preview_reward} after a checkpoint at step 1 scores the first "
                             "model call's preview, before any sampling step to train; use preview_reward >= 1")
        if self.final_keep is not None:
            raise ValueError(f"preview_reward={self.preview_reward} and final_keep={self.final_keep}: a static "
                             "selection needs the final images; leave one of them unset")
        if self.sde_window and self.window_mode == "after-pruning":
            raise ValueError(f"preview_reward={self.preview_reward} stops the survivors near the checkpoint, but "
                             "this SDE window comes after it; use a window before the checkpoint (e.g. "
                             "pro-mixgrpo) or leave preview_reward unset")

    def sde_steps(self, steps: int, epoch: int, seed: int, prompt_seed: int | None = None) -> tuple[int, ...] | None:
        """The steps sampled with the SDE this epoch (the others are deterministic ODE steps and are
        not trained); None when every step is. ``random``: a window of ``sde_window`` steps at a seeded
        random start, lying inside ``window_span`` (default the first half), as Flow-GRPO-Fast draws
        it (``random.randint(lo, hi - w)``); with ``prompt_seed``, the draw of that prompt's group.
        ``progressive``: MixGRPO's — the window starts at step 0, moves one step every
        ``slide_every`` epochs and goes back to 0 once it would pass step ``T − 2`` (the last step is
        never trained). ``sliding``: the start moves one step every ``slide_every`` epochs across the
        span and wraps. ``after-pruning``: right after the last checkpoint, so pruning happens on
        the deterministic ODE prefix."""
        if not self.sde_window:
            return None
        w = self.sde_window
        if self.window_mode == "after-pruning":
            start = self.checkpoints[-1] if self.checkpoints else 0
        elif self.window_mode == "progressive":
            last = max(1, steps - 2)  # MixGRPO: max_timesteps = T − 2, the window ends before it
            start = (epoch // self.slide_every) % last
            return tuple(range(start, min(start + w, last)))
        elif self.window_mode == "sliding":
            lo, hi = self.window_span or (0, max(1, steps // 2))
            hi = max(lo + 1, min(hi, steps - w + 1))
            start = lo + (epoch // self.slide_every) % (hi - lo)
        else:
            lo, hi = self.window_span or (0, max(1, steps // 2))
            last_start = max(lo, min(hi, steps) - w)  # the window lies inside the span
            key = int(seed) * 7919 + epoch if prompt_seed is None else int(prompt_seed) * 104_723 + epoch * 31 + 11
            g = torch.Generator().manual_seed(key % (2**63 - 1))
            start = lo + int(torch.randint(last_start - lo + 1, (1,), generator=g))
        return tuple(range(start, min(steps, start + w)))

    def for_epoch(self, steps: int, epoch: int, seed: int, prompt_seeds: Sequence[int] | None = None
                  ) -> tuple["PruneSchedule", Windows]:
        """This epoch's schedule and SDE steps: one window for every row, or — a window drawn per
        prompt — one per prompt of ``prompt_seeds``. With ``prune_after_window`` the checkpoint moves
        to the step right after this epoch's window, where the rest of every trajectory is the
        deterministic ODE and the one-step proxy predicts its end."""
        if self.window_draw == "prompt" and self.sde_window and prompt_seeds is not None:
            return self, [self.sde_steps(steps, epoch, seed, s) for s in prompt_seeds]
        sde = self.sde_steps(steps, epoch, seed)
        if not (self.prune_after_window and sde and self.checkpoints):
            return self, sde
        after = min(sde[-1] + 2, steps - 1)  # prune at the model call after the window's last step
        return dataclasses.replace(self, checkpoints=(after,)), sde

    def describe(self) -> str:
        """``"48 → 24 → 12 after steps 5, 7"``-style one-liner."""
        funnel = " → ".join(str(k) for k in (self.group_size, *self.keep))
        where_cp = "right after the SDE window" if self.prune_after_window else f"after steps {', '.join(map(str, self.checkpoints))}"
        text = funnel + (f" {where_cp}" if self.checkpoints else "")
        if self.final_keep is not None:
            text += f", train the maximum-variance {self.final_keep} by final reward"
        if self.sde_window:
            each = "each prompt's group" if self.window_draw == "prompt" else "each epoch"
            where = {"random": f"at a random early step, drawn for {each}",
                     "sliding": "sliding over the early steps",
                     "progressive": f"from step 0, one step later every {self.slide_every} epochs",
                     "after-pruning": "right after the last checkpoint"}[self.window_mode]
            text += f"; SDE on {self.sde_window} step(s) {where}, ODE elsewhere"
        if self.shared_noise:
            text += "; one initial noise per prompt"
        if self.checkpoints and self.proxy_scale != 1.0:
            text += f"; previews decoded at {self.proxy_scale:g}× the size"
        if self.preview_reward is not None:
            text += ("; trained on the checkpoint preview's reward" if not self.preview_reward else
                     f"; trained on the reward of a preview {self.preview_reward} model call(s) after the checkpoint")
        if self.preview_model == "reference":
            text += "; the scored previews are the frozen model's (LoRA off)"
        return text


def checkpoint_steps(steps: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """Checkpoints for "prune after ``round(f·T)`` of the ``T`` steps", kept in ``1..T−1`` and
    strictly increasing (a few-step run, T = 4, would otherwise round two fractions to one step)."""
    out: list[int] = []
    for f in fractions:
        c = min(max(1, round(f * steps)), steps - 1)
        out.append(max(c, out[-1] + 1) if out else c)  # past T−1 only when T is too short for them all
    return tuple(out)


def window_steps(steps: int, fraction: float) -> int:
    """An SDE window of ``fraction`` of the ``T`` steps: ``max(1, round(f·T))`` steps (0: none)."""
    return max(1, round(fraction * steps)) if fraction else 0


@dataclasses.dataclass(frozen=True)
class MethodPreset:
    """A ``--method``: its default funnel, with checkpoints as fractions of the step count."""

    name: str
    group_size: int
    fractions: tuple[float, ...] = ()   # checkpoint c_i = max(1, round(f_i·T))
    keep: tuple[int, ...] = ()
    final_keep: int | None = None
    summary: str = ""
    eps: "MethodPreset | None" = None   # the funnel on ε/v-prediction models (SD1.x, SDXL), where it differs
    sde_window: float = 0.0             # SDE window as a fraction of T (window_steps); see PruneSchedule.sde_steps
    window_mode: str = "random"
    window_span: tuple[float, float] | None = None   # as fractions of T
    prune_after_window: bool = False
    window_draw: str = "epoch"
    slide_every: int = 5
    shared_noise: bool = False
    preview_reward: int | None = None   # PruneSchedule.preview_reward
    preview_model: str = "policy"       # PruneSchedule.preview_model
    objective: str = "grpo"             # grpo (clipped policy gradient on stored steps) or nft (DiffusionNFT)
    defaults: tuple[tuple[str, object], ...] = ()   # ("section.field", value): what the method sets where the
                                                   # user leaves a setting on auto

    def for_family(self, family: str) -> "MethodPreset":
        """This preset as it applies to a ``"flow"`` or ``"eps"`` model."""
        return self.eps if family == "eps" and self.eps is not None else self

    def schedule(self, steps: int, selector: str = "ovf", family: str = "flow") -> PruneSchedule:
        p = self.for_family(family)
        span = (round(p.window_span[0] * steps), round(p.window_span[1] * steps)) if p.window_span else None
        return PruneSchedule(p.group_size, checkpoint_steps(steps, p.fractions), p.keep, p.final_keep, selector,
                             sde_window=window_steps(steps, p.sde_window), window_mode=p.window_mode, window_span=span,
                             prune_after_window=p.prune_after_window, window_draw=p.window_draw,
                             slide_every=p.slide_every, shared_noise=p.shared_noise, preview_reward=p.preview_reward,
                             preview_model=p.preview_model)

    def default(self, setting: str, fallback=None):
        """The value this method gives ``setting`` ("section.field") when the user leaves it on auto."""
        return dict(self.defaults).get(setting, fallback)

    def describe(self, steps: int = 10) -> str:
        """``"pro-grpo: 48 → 24 → 12 after steps 5, 7 (of T = 10)"``."""
        text = f"{self.name}: {self.schedule(steps).describe()}" + (f" (of T = {steps})" if self.fractions else "")
        return text + (f", on ε-models {self.schedule(steps, family='eps').describe()}" if self.eps else "")


# The paper's settings (Ge et al.): on SD3.5-M against Flow-GRPO with G = 24, pruning after 50 % and
# 70 % of the steps; on SD-v1.4 against DanceGRPO with G = 16, 48 → 32 → 8 after steps 30 and 40 of
# 50 (60 % and 80 %). The peers as their references define them (docs/METHOD.md §5, with the files
# and commits read): Flow-GRPO-Fast (yifan123/flow_grpo), MixGRPO (Tencent-Hunyuan/MixGRPO),
# DiffusionNFT (NVlabs/DiffusionNFT).
_FAST_CPS = (("sampler.sampler", "cps"), ("sampler.noise_level", 0.8), ("grpo.clip_range", 1e-5),
             ("grpo.adv_norm", "batch"))
_NFT = (("sampler.sampler", "ode"), ("grpo.adv_norm", "batch"))
METHODS: dict[str, MethodPreset] = {p.name: p for p in (
    MethodPreset("pro-grpo", 48, (0.5, 0.7), (24, 12),
                 summary="expand and prune: at each checkpoint keep the maximum-variance subset (OVF) by the "
                         "one-step proxy reward; train the survivors",
                 eps=MethodPreset("pro-grpo", 48, (0.6, 0.8), (32, 8))),
    MethodPreset("pro-grpo-flash", 24, (0.5, 0.7), (16, 12), summary="pro-grpo with a smaller expansion"),
    MethodPreset("ovf", 24, final_keep=12, summary="static OVF: sample the whole group to the end",
                 eps=MethodPreset("ovf", 16, final_keep=8)),
    MethodPreset("grpo", 24, summary="Flow-GRPO (DanceGRPO's G = 16 on ε-models): train the whole group",
                 eps=MethodPreset("grpo", 16)),
    MethodPreset("flow-grpo-fast", 24, sde_window=0.2, window_mode="random", window_span=(0.0, 0.5), window_draw="prompt",
                 summary="Flow-GRPO-Fast (its config/base.py): ODE sampling with an SDE window of 2 steps inside the "
                         "first half of the steps, drawn for each prompt's group; only the window is trained"),
    MethodPreset("flow-grpo-fast-cps", 18, sde_window=0.3, window_mode="random", window_span=(0.0, 0.5),
                 window_draw="prompt", defaults=_FAST_CPS,
                 summary="Flow-GRPO-Fast as published for SD3.5-M (pickscore_sd3_fast_nocfg): G = 18, a 3-step "
                         "window inside the first half, CPS at noise 0.8, clip range 1e-5, the batch's reward std"),
    MethodPreset("mixgrpo", 12, sde_window=0.2, window_mode="progressive", slide_every=25, shared_noise=True,
                 summary="MixGRPO: G = 12 trajectories from one shared initial noise; an SDE window of 2 steps "
                         "(4 of 25 in the reference) starts at step 0 and moves one step every 25 epochs; "
                         "first-order ODE elsewhere; only the window is trained"),
    MethodPreset("mixgrpo-sliding", 24, sde_window=0.2, window_mode="sliding", window_span=(0.0, 0.5),
                 summary="MixGRPO's window as this pack first had it: independent noise, sliding over the first "
                         "half one step every 5 epochs and wrapping"),
    MethodPreset("pro-grpo-fast", 24, (0.5,), (12,), sde_window=0.2, window_mode="random", window_span=(0.0, 0.5),
                 prune_after_window=True,
                 summary="ours: Flow-GRPO-Fast's random 2-step SDE window (one per epoch), then OVF halves the "
                         "group on the proxy right after the window (the rest is deterministic ODE, so the proxy "
                         "predicts the end); the survivors finish and their window is trained"),
    MethodPreset("pro-mixgrpo", 24, (0.5,), (12,), sde_window=0.2, window_mode="progressive", slide_every=25,
                 shared_noise=True, prune_after_window=True,
                 summary="ours: MixGRPO's window and shared initial noise with 24 trajectories, then OVF keeps "
                         "MixGRPO's 12 on the proxy right after the window; the survivors finish and their "
                         "window is trained"),
    MethodPreset("pro-grpo-fast-cps", 36, (0.5,), (18,), sde_window=0.3, window_mode="random",
                 window_span=(0.0, 0.5), prune_after_window=True, defaults=_FAST_CPS,
                 summary="ours, on flow-grpo-fast-cps (flow models): 36 trajectories, OVF keeps its 18 on the proxy "
                         "right after the 3-step CPS window (one per epoch); its sampler and update settings"),
    MethodPreset("pro-mixgrpo-8", 24, (0.5,), (8,), sde_window=0.2, window_mode="progressive", slide_every=25,
                 shared_noise=True, prune_after_window=True,
                 summary="ours: pro-mixgrpo with a deeper cut — OVF keeps 8 of the 24 window outcomes on the proxy "
                         "right after the window; the 8 finish and their window is trained"),
    MethodPreset("pro-mixgrpo-8-preview", 24, (0.5,), (8,), sde_window=0.2, window_mode="progressive", slide_every=25,
                 shared_noise=True, prune_after_window=True, preview_reward=0, preview_model="reference",
                 defaults=(("grpo.saturated_lr", 0.1),),
                 summary="ours: pro-mixgrpo-8 trained on the previews' rewards — the 8 survivors stop at the "
                         "checkpoint right after the window, where their one-step previews were scored for the cut "
                         "(no finishing, no final decode); the previews are the frozen model's (LoRA off), which "
                         "training cannot move, and the learning rate drops tenfold once the reward saturates"),
    MethodPreset("pro-mixgrpo-cps", 24, (0.5,), (12,), sde_window=0.2, window_mode="progressive", slide_every=25,
                 shared_noise=True, prune_after_window=True, defaults=_FAST_CPS,
                 summary="ours, flow models: pro-mixgrpo sampling its window with CPS at noise 0.8 and updating with "
                         "flow-grpo-fast-cps's clip range 1e-5 and the batch's reward std"),
    MethodPreset("pro-mixgrpo-sliding", 24, (0.5,), (12,), sde_window=0.2, window_mode="sliding",
                 window_span=(0.0, 0.5), prune_after_window=True,
                 summary="ours, on mixgrpo-sliding's window (independent noise): OVF halves the group on the "
                         "proxy right after the window"),
    MethodPreset("pro-grpo-window", 48, (0.3,), (12,), sde_window=0.2, window_mode="after-pruning",
                 summary="expand and prune on the deterministic ODE prefix (where the proxy is faithful), then "
                         "an SDE window of 2 steps for the survivors only; only the window is trained"),
    MethodPreset("nft", 24, objective="nft", defaults=_NFT,
                 summary="DiffusionNFT: deterministic ODE rollouts of a slowly following old policy; trains the "
                         "flow-matching loss on the finished images' forward process toward the well-rewarded and "
                         "away from the poorly rewarded implicit policy; no likelihoods"),
    MethodPreset("pro-nft", 48, (0.3,), (24,), objective="nft", defaults=_NFT,
                 summary="ours: NFT on the 24 survivors of 48 ODE rollouts, kept by OVF on the one-step proxy "
                         "after 30 % of the steps (a deterministic path: the proxy predicts its end)"),
)}


# The default ``--method``: the best measured in the bench on both model families and both tasks
# (docs/BENCHMARKS.md).
DEFAULT_METHOD = "pro-mixgrpo"

# Auto learning rates (``grpo.lr`` left unset). Real models: Flow-GRPO's LoRA rate (SD3.5-M, FLUX).
# The built-in digits models, tuned by the peers bench (docs/BENCHMARKS.md, 2026-12-03: five rates
# 1e-3 … 2e-2, seeds 11–12, the final of the last three evaluations): the methods that train whole SDE
# trajectories end best at 5e-3–1e-2 (GRPO 1e-2 on the flow model, 2.5e-3 on the ε model; pro-grpo
# 1e-2 / 5e-3); the methods that train an SDE window take 2–3× as many optimizer steps per unit of
# compute and end best at 2.5e-3 on both families (0.976–0.996 on the flow model, where 1e-2 already
# drops them to 0.23–0.48, CPS 0.72), so that is their automatic rate.
MODEL_LR = 3e-4
BUILTIN_LR = 5e-3
BUILTIN_WINDOW_LR = 2.5e-3


def auto_lr(method: str, builtin: bool) -> float:
    """The learning rate ``grpo.lr = auto`` resolves to for ``method`` on a built-in or a real model."""
    if not builtin:
        return MODEL_LR
    return BUILTIN_WINDOW_LR if METHODS[method].sde_window else BUILTIN_LR


def auto_lr_help() -> str:
    """What ``grpo.lr = auto`` means, for help texts and tooltips."""
    return (f"{MODEL_LR:g} (Flow-GRPO's LoRA rate) for real models; on the built-in ones {BUILTIN_LR:g}, or "
            f"{BUILTIN_WINDOW_LR:g} for the methods that train an SDE window")


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def presets_text(steps: int = 10) -> str:
    """One line for tooltips and help: every preset's funnel."""
    return "; ".join(p.describe(steps) for p in METHODS.values())


def presets_markdown(steps: int = 10) -> str:
    """The README's method table (a test keeps the README equal to it)."""
    rows = [f"| `--method` | funnel (defaults, T = {steps} steps) | on ε-models (SD1.x, SDXL) | what it does |",
            "|---|---|---|---|"]
    for p in METHODS.values():
        eps = p.schedule(steps, family="eps").describe() if p.eps is not None else "the same"
        rows.append(f"| `{p.name}` | {p.schedule(steps).describe()} | {eps} | {p.summary} |")
    return "\n".join(rows)
