"""A run's plan: the micro-batches the spec leaves on auto, chosen by the planner from costs
measured on the run's own parts (see :mod:`progrpo_core.planner`)."""
from __future__ import annotations

from .. import planner
from ..devices import check_memory_budget, memory_info
from ..distributed import World
from ..planner import Plan, Target
from ..spec import RunSpec
from .parts import RunParts


def plan_for(spec: RunSpec, parts: RunParts, world: World, target: Target | None = None,
             costs: planner.Costs | None = None) -> Plan:
    """The plan of this run on ``target`` (default: its device and memory budget), from ``costs``
    or from costs measured now (memory and FLOPs only when the target has its own speed)."""
    measured = costs is None
    proxy_scale = preview_scale(spec)
    if costs is None:
        costs = planner.measure_costs(parts.model, parts.adapter, parts.reward, spec.sampler, spec.device,
                                      spec.precision.name, parts.prompts[0], timed=target is None or not target.tflops,
                                      proxy_scale=proxy_scale)
    if target is None:
        check_memory_budget(spec.run.memory_gib, spec.device)
        budget = (spec.run.memory_gib * planner.GiB if spec.run.memory_gib
                  else 0.9 * memory_info(spec.device)[0] + costs.weights + costs.reward_weights)
        target = Target(str(spec.device), int(budget))
    B = spec.grpo.prompts_per_epoch // world.world_size
    given = spec.micro.as_dict()

    def plan(c: planner.Costs) -> Plan:
        return planner.make_plan(c, spec.config, spec.schedule, spec.sampler, B, len(spec.eval_prompts), target,
                                 given=given, reward_offload=spec.reward.offload)

    first = plan(costs)
    if measured and not target.tflops and first.fits:  # time each phase at its chosen micro-batch
        return plan(planner.retime(costs, first, parts.model, parts.adapter, parts.reward, spec.sampler, spec.device,
                                   parts.prompts[0], proxy_scale))
    return first


def preview_scale(spec: RunSpec) -> float | None:
    """The scale of the run's pruning previews, None when it does not prune."""
    return spec.schedule.proxy_scale if spec.schedule.checkpoints else None


def planned(spec: RunSpec, parts: RunParts, world: World, refuse: bool = True) -> RunSpec:
    """``spec`` with the plan's micro-batches where it has none; a run that cannot fit is refused
    here, before anything is sampled (``refuse=False``: the spec carries the plan, the caller decides)."""
    if spec.micro.complete:
        return spec
    plan = plan_for(spec, parts, world)
    if refuse and not plan.fits:
        raise ValueError(f"this run does not fit in memory: {'; '.join(plan.problems)}\n{plan.text()}\n"
                         "Lower grpo.prompts_per_epoch or the group size, set smaller micro-batches "
                         "(--run.sample_micro_batch, --run.train_micro_batch), keep --run.gradient_checkpointing "
                         "on, or give the run more memory (--run.memory_gib)")
    return spec.planned(plan)
