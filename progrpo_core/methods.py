"""The methods: prune schedules and the presets ``--method`` names.

A :class:`PruneSchedule` is the funnel one group goes through: ``G_max = K_0 > K_1 > … > K_I``
trajectories, pruned after ``t_1 < … < t_I`` model calls (a checkpoint ``c`` prunes after ``c`` of
the ``T`` steps, the paper's "steps 5 and 7 of 10"), optionally followed by a selection on the
*true* final reward (``final_keep``, static OVF).

:data:`METHODS` is the one table of method presets. The config resolves ``--method`` through it,
the trainer node's tooltips and the README's method table are generated from it, and the bench
runs its headline rows from it. Checkpoints are stored as fractions of ``T`` and placed at
``max(1, round(f·T))``, so a preset fits any step count.
"""
from __future__ import annotations

import dataclasses

from . import ovf


@dataclasses.dataclass(frozen=True)
class PruneSchedule:
    """Funnel ``G_max = K_0 > K_1 > … > K_I`` with checkpoints ``t_1 < … < t_I`` in ``1..T−1``;
    optional ``final_keep`` selects on the *true* final reward (static OVF)."""

    group_size: int
    checkpoints: tuple[int, ...] = ()
    keep: tuple[int, ...] = ()
    final_keep: int | None = None
    selector: str = "ovf"

    @property
    def survivors(self) -> int:
        """Trajectories per prompt that reach the end of sampling."""
        return self.keep[-1] if self.keep else self.group_size

    @property
    def trained(self) -> int:
        """Trajectories per prompt that are trained on."""
        return self.final_keep if self.final_keep is not None else self.survivors

    def sampling_nfe(self, steps: int) -> int:
        """Model evaluations per prompt while sampling (rows, without CFG):
        ``G·t_1 + K_1·(t_2 − t_1) + … + K_I·(T − t_I)``."""
        alive, done, total = self.group_size, 0, 0
        for c, k in zip(self.checkpoints, self.keep):
            total += alive * (c - done)
            alive, done = k, c
        return total + alive * (steps - done)

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
        if self.final_keep is not None:
            if not 2 <= self.final_keep < self.survivors:
                raise ValueError(f"final_keep={self.final_keep} must be in 2..{self.survivors - 1} "
                                 f"(fewer than the {self.survivors} finished trajectories, at least 2)")

    def describe(self) -> str:
        """``"48 → 24 → 12 after steps 5, 7"``-style one-liner."""
        funnel = " → ".join(str(k) for k in (self.group_size, *self.keep))
        text = funnel + (f" after steps {', '.join(map(str, self.checkpoints))}" if self.checkpoints else "")
        if self.final_keep is not None:
            text += f", train the maximum-variance {self.final_keep} by final reward"
        return text


def checkpoint_steps(steps: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """Checkpoints for "prune after ``round(f·T)`` of the ``T`` steps" (at least 1)."""
    return tuple(max(1, round(f * steps)) for f in fractions)


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

    def for_family(self, family: str) -> "MethodPreset":
        """This preset as it applies to a ``"flow"`` or ``"eps"`` model."""
        return self.eps if family == "eps" and self.eps is not None else self

    def schedule(self, steps: int, selector: str = "ovf", family: str = "flow") -> PruneSchedule:
        p = self.for_family(family)
        return PruneSchedule(p.group_size, checkpoint_steps(steps, p.fractions), p.keep, p.final_keep, selector)

    def describe(self, steps: int = 10) -> str:
        """``"pro-grpo: 48 → 24 → 12 after steps 5, 7 (of T = 10)"``."""
        text = f"{self.name}: {self.schedule(steps).describe()}" + (f" (of T = {steps})" if self.fractions else "")
        return text + (f", on ε-models {self.schedule(steps, family='eps').describe()}" if self.eps else "")


# The paper's settings (Ge et al.): on SD3.5-M against Flow-GRPO with G = 24, pruning after 50 % and
# 70 % of the steps; on SD-v1.4 against DanceGRPO with G = 16, 48 → 32 → 8 after steps 30 and 40 of
# 50 (60 % and 80 %). docs/METHOD.md has the equations and the paper's numbers.
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
)}


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
