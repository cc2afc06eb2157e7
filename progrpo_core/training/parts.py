"""The objects a run trains with: the model, the reward (and a watched "gold" reward), the prompts
and the LoRA adapter, made from a :class:`~progrpo_core.spec.RunSpec` where the front end does not
pass its own (the ComfyUI node passes its MODEL's denoiser, reward and weight-wrapper LoRA)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from .. import grad_checkpoint
from ..denoiser import Denoiser
from ..lora import LoraAdapter, LoraWeights, lora_from_file
from ..rewards import OffloadedReward, Reward, build_reward
from ..spec import RunSpec


@dataclasses.dataclass
class RunParts:
    model: Denoiser
    reward: Reward
    gold: Reward | None
    prompts: list[str]
    adapter: LoraWeights
    checkpointed: list = dataclasses.field(default_factory=list)  # modules grad_checkpoint patched

    def close(self) -> None:
        """Undo gradient checkpointing."""
        grad_checkpoint.disable(self.checkpointed)
        self.checkpointed = []

    def offloaded(self, spec: RunSpec) -> "RunParts":
        """The rewards kept on the CPU between scorings where the spec says so (on a GPU)."""
        if not spec.reward_offload or spec.device.type != "cuda":
            return self
        gold = OffloadedReward(self.gold, spec.device) if self.gold is not None else None
        return dataclasses.replace(self, reward=OffloadedReward(self.reward, spec.device), gold=gold)


def assemble(spec: RunSpec, model: Denoiser, prompts: Sequence[str], reward: Reward | None = None,
             gold: Reward | None = None, adapter: LoraWeights | None = None) -> RunParts:
    """The run's parts: the given ones, the others built from ``spec``; the model set to compute in
    the spec's precision (the adapter's parameters stay float32) with gradient checkpointing on."""
    c = spec.config
    if reward is None:
        reward = build_reward(c.reward.name, c.reward.path, device=spec.reward_device, dtype=spec.reward_dtype)
    if gold is None and c.reward.gold:
        gold = build_reward(c.reward.gold, device=spec.reward_device, dtype=spec.reward_dtype)
    if not prompts:
        raise ValueError("the prompt list is empty; give at least one prompt")
    if adapter is None:
        adapter = (lora_from_file(model, c.lora.init_from) if c.lora.init_from else
                   LoraAdapter(model, c.lora.rank, c.lora.alpha, c.lora.targets, seed=c.run.seed))
    if hasattr(model, "set_precision"):  # after the adapter: its parameters stay float32
        model.set_precision(spec.precision.dtype)
    checkpointed = grad_checkpoint.enable(model.net, spec.gradient_checkpointing)
    return RunParts(model, reward, gold, list(prompts), adapter, checkpointed)
