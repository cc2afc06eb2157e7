"""Reward models under ComfyUI's memory manager.

A reward loaded with ``device: auto`` on a GPU is built on the CPU and wrapped in a
``ModelPatcher`` whose load device is ComfyUI's device: before each scoring call it is loaded
with ``load_models_gpu`` like any ComfyUI model, so ComfyUI counts its memory, and when the
denoiser (or anything else) needs the room, ComfyUI offloads it to the CPU again.
"""
from __future__ import annotations

from typing import Sequence

import torch

from progrpo_core.rewards import Reward, RewardWrapper
from progrpo_core.rewards.video import VideoReward


class ManagedReward(RewardWrapper):
    """``inner``'s modules in a ComfyUI ``ModelPatcher``; scoring loads them first."""

    def __init__(self, inner: Reward, load_device):
        import comfy.model_patcher

        super().__init__(inner)
        self.load_device = torch.device(load_device)
        inner.place("cpu")
        self.patcher = comfy.model_patcher.ModelPatcher(torch.nn.ModuleList(inner.modules()),
                                                        load_device=self.load_device,
                                                        offload_device=torch.device("cpu"))

    def _load(self) -> None:
        import comfy.model_management

        comfy.model_management.load_models_gpu([self.patcher])
        if hasattr(self.inner, "device"):
            self.inner.device = self.load_device  # the inputs follow the weights ComfyUI moved

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self._load()
        return self.inner.score(images, prompts)

    def evaluate(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        self._load()
        return self.inner.evaluate(images, prompts)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """The inner reward's image embeddings (a CLIP reward's), its weights loaded first."""
        self._load()
        return self.inner.image_embeddings(images)

    def place(self, device) -> None:
        """Nothing: ComfyUI's memory manager places the weights."""


def managed(reward: Reward, device: str) -> Reward:
    """``reward`` under ComfyUI's memory manager when it runs on a GPU; as it is on the CPU."""
    if torch.device(device).type == "cpu" or not reward.modules():
        return reward
    return ManagedReward(reward, device)


def video_reward_of(reward: Reward) -> VideoReward | None:
    """The :class:`VideoReward` inside ``reward``'s wrappers, if any."""
    while reward is not None:
        if isinstance(reward, VideoReward):
            return reward
        reward = getattr(reward, "inner", None)
    return None


def for_model(reward: Reward, den, log=None) -> Reward:
    """The reward as ``den``'s decoded output needs it. A video family decodes the frames its video
    reward scores (``den.frames``); an image reward given for a video model is scored per frame
    with the default frames (:data:`~progrpo_core.rewards.video.DEFAULT_FRAMES`), and said so. A
    video reward on an image model is refused."""
    video = video_reward_of(reward)
    if not den.info.video:
        if video is not None:
            raise ValueError(f"a ProGRPO Video Reward scores video frames, but {den.info.name} is an image model: "
                             "connect the image reward itself")
        return reward
    if video is None:
        video = VideoReward(reward)
        reward = video
        if log is not None:
            count, stride = video.frames
            log(f"ProGRPO: {den.info.name} makes videos; the reward scores frames 0, {stride}, … ({count} frames) "
                "and takes their mean (ProGRPO Video Reward sets the frames and a frame-consistency term)")
    den.frames = video.frames
    return reward
