"""The ComfyUI node pack: plain V1 node classes (see docs/NODES.md for why).

Importing this package needs no ComfyUI: node definitions are checkable anywhere, and only
:mod:`.host` talks to ComfyUI, lazily, when a node runs. Node IDs are frozen once shipped.
"""
from __future__ import annotations

from .reward_nodes import CombineRewards, OVFPruner, RewardModelLoader, RewardScorer, VideoRewardNode
from .sampling_nodes import ExpandedGroupSampler, LatentProxyProjector
from .train_nodes import GRPOLoraTrainer, PromptList, SaveLoRA

NODE_CLASS_MAPPINGS = {
    "ProGRPOExpandedGroupSampler": ExpandedGroupSampler,
    "ProGRPOLatentProxyProjector": LatentProxyProjector,
    "ProGRPOOVFPruner": OVFPruner,
    "ProGRPORewardModelLoader": RewardModelLoader,
    "ProGRPOCombineRewards": CombineRewards,
    "ProGRPORewardScorer": RewardScorer,
    "ProGRPOLoraTrainer": GRPOLoraTrainer,
    "ProGRPOPromptList": PromptList,
    "ProGRPOSaveLoRA": SaveLoRA,
    "ProGRPOVideoReward": VideoRewardNode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ProGRPOExpandedGroupSampler": "ProGRPO Expanded Group Sampler",
    "ProGRPOLatentProxyProjector": "ProGRPO Latent Proxy Projector",
    "ProGRPOOVFPruner": "ProGRPO OVF Pruner",
    "ProGRPORewardModelLoader": "ProGRPO Reward Model Loader",
    "ProGRPOCombineRewards": "ProGRPO Combine Rewards",
    "ProGRPORewardScorer": "ProGRPO Reward Scorer",
    "ProGRPOLoraTrainer": "ProGRPO GRPO LoRA Trainer",
    "ProGRPOPromptList": "ProGRPO Prompt List",
    "ProGRPOSaveLoRA": "ProGRPO Save LoRA",
    "ProGRPOVideoReward": "ProGRPO Video Reward",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
