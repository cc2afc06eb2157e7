"""What one epoch produced, as typed records: the sampling round (:class:`SampleStats`), the policy
update (:class:`UpdateStats`) and the two together with the run's counters (:class:`EpochRecord`),
which is the one row shape of ``metrics.jsonl``, checkpoints, progress text and curves.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any


def jsonable(obj: Any) -> Any:
    """NaN and infinities become ``null`` so metrics files stay valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def nan_if_none(v: Any) -> float:
    """A metric as a float; None (e.g. an epoch whose rewards were not finite) becomes NaN."""
    return float("nan") if v is None else float(v)


@dataclasses.dataclass
class SampleStats:
    """One sampling round, over the whole batch (all processes).

    ``reward_*`` are the trained trajectories' final rewards; ``reward_finished_mean`` is every
    finished trajectory's (before a final selection); ``proxy`` has one entry per checkpoint
    (step, sigma, mean and std of the proxy rewards, kept row ids). An epoch with non-finite rewards
    (``nonfinite`` > 0) trains nothing and has only the means of its finite values.

    Progress is shown with :meth:`group_mean`, not ``reward_mean``: selection (OVF) keeps both tails
    of a group, so the trained rows' mean sits mid-way (exactly 0.5 with 0/1 rewards) whatever the
    policy does."""

    reward_mean: float | None
    reward_std: float | None
    components: dict[str, float | None]
    prompts: list[str]
    reward_finished_mean: float | None = None
    clustered_finished: float | None = None
    clustered_expanded: float | None = None
    clustered_trained: float | None = None
    proxy: list[dict] = dataclasses.field(default_factory=list)
    nonfinite: int = 0

    def group_mean(self) -> tuple[float | None, str]:
        """The whole group's mean reward and what it is: every finished trajectory's final reward
        where none was stopped early ("finished"), else the expanded group's proxy reward at the
        first checkpoint ("proxy at step s"), the last point where the whole group was scored."""
        if self.nonfinite or self.reward_finished_mean is None:
            return self.reward_mean, "finite rewards" if self.nonfinite else "trained"
        if self.proxy:
            return self.proxy[0]["mean"], f"proxy at step {self.proxy[0]['step']}"
        return self.reward_finished_mean, "finished"

    def to_dict(self) -> dict[str, Any]:
        if self.nonfinite:
            return {"reward_mean": self.reward_mean, "reward_std": self.reward_std,
                    "nonfinite_rewards": self.nonfinite, "components": self.components, "prompts": self.prompts}
        group, of = self.group_mean()
        out: dict[str, Any] = {"reward_group_mean": group, "reward_group_of": of,
                               "reward_finished_mean": self.reward_finished_mean,
                               "clustered_finished": self.clustered_finished}
        if self.clustered_expanded is not None:
            out["clustered_expanded"] = self.clustered_expanded
        out.update({"reward_mean": self.reward_mean, "reward_std": self.reward_std,
                    "clustered_trained": self.clustered_trained, "components": self.components,
                    "proxy": self.proxy, "prompts": self.prompts})
        return out


@dataclasses.dataclass
class UpdateStats:
    """One epoch's policy update: per-(minibatch, step) means over the whole batch; ``None`` when
    the update was skipped."""

    loss: float | None = None
    kl: float | None = None
    clip_frac: float | None = None
    approx_kl: float | None = None
    grad_norm: float | None = None
    updates: int = 0
    trained_steps: list[int] = dataclasses.field(default_factory=list)


COMPUTE_KEYS = ("nfe", "nfe_train_fwd", "nfe_train_bwd", "decodes", "reward_calls")


@dataclasses.dataclass
class EpochRecord:
    """One epoch of a run: ``metrics.jsonl`` holds :meth:`to_row` of each."""

    epoch: int                         # 1-based
    optimizer_step: int                # optimizer steps after this epoch
    sample: SampleStats
    update: UpdateStats
    skipped_updates: int = 0
    bad_updates_in_row: int = 0
    compute: dict[str, int] = dataclasses.field(default_factory=dict)  # run totals, COMPUTE_KEYS
    epoch_wall_s: float = 0.0
    wall_s: float = 0.0
    eval_reward: float | None = None
    eval_gold: float | None = None
    batch: Any = dataclasses.field(default=None, repr=False, compare=False)  # the RolloutBatch (live only)
    cpu_s: dict[str, float] = dataclasses.field(default_factory=dict, repr=False, compare=False)  # process CPU
    #   seconds of this epoch's sampling (with scoring) and training phases (live only)

    @property
    def reward_mean(self) -> float:
        return nan_if_none(self.sample.reward_mean)

    @property
    def reward_std(self) -> float:
        return nan_if_none(self.sample.reward_std)

    @property
    def group_reward(self) -> float:
        """The whole group's mean reward (see :meth:`SampleStats.group_mean`): what progress shows."""
        return nan_if_none(self.sample.group_mean()[0])

    @property
    def loss(self) -> float:
        return nan_if_none(self.update.loss)

    def to_row(self) -> dict[str, Any]:
        u = self.update
        row = {"epoch": self.epoch, "optimizer_step": self.optimizer_step, **self.sample.to_dict(),
               "loss": u.loss, "kl": u.kl, "clip_frac": u.clip_frac, "approx_kl": u.approx_kl,
               "grad_norm": u.grad_norm, "trained_steps": u.trained_steps, "skipped_updates": self.skipped_updates,
               "bad_updates_in_row": self.bad_updates_in_row, "nonfinite_rewards": self.sample.nonfinite,
               **{k: self.compute.get(k, 0) for k in COMPUTE_KEYS},
               "epoch_wall_s": self.epoch_wall_s, "wall_s": self.wall_s}
        if self.eval_reward is not None:
            row["eval_reward"] = self.eval_reward
        if self.eval_gold is not None:
            row["eval_gold"] = self.eval_gold
        return jsonable(row)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "EpochRecord":
        """A record read back from ``metrics.jsonl`` or a checkpoint (everything but ``batch``)."""
        sample = SampleStats(
            reward_mean=row.get("reward_mean"), reward_std=row.get("reward_std"),
            components=dict(row.get("components") or {}), prompts=list(row.get("prompts") or []),
            reward_finished_mean=row.get("reward_finished_mean"), clustered_finished=row.get("clustered_finished"),
            clustered_expanded=row.get("clustered_expanded"), clustered_trained=row.get("clustered_trained"),
            proxy=list(row.get("proxy") or []), nonfinite=int(row.get("nonfinite_rewards") or 0))
        update = UpdateStats(**{k: row.get(k) for k in ("loss", "kl", "clip_frac", "approx_kl", "grad_norm")},
                             trained_steps=list(row.get("trained_steps") or []))
        return cls(epoch=int(row["epoch"]), optimizer_step=int(row.get("optimizer_step") or 0), sample=sample,
                   update=update, skipped_updates=int(row.get("skipped_updates") or 0),
                   bad_updates_in_row=int(row.get("bad_updates_in_row") or 0),
                   compute={k: int(row.get(k) or 0) for k in COMPUTE_KEYS},
                   epoch_wall_s=float(row.get("epoch_wall_s") or 0.0), wall_s=float(row.get("wall_s") or 0.0),
                   eval_reward=row.get("eval_reward"), eval_gold=row.get("eval_gold"))

    def text(self, epochs_total: int) -> str:
        """The one-line progress text (node status, logs)."""
        of = self.sample.group_mean()[1]
        return (f"epoch {self.epoch}/{epochs_total}: reward {self.group_reward:.4f} (group mean, {of})\n"
                f"trained: spread ± {self.reward_std:.4f}, loss {self.loss:.4g}; {self.optimizer_step} optimizer steps")
