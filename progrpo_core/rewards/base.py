"""The reward interface every scorer implements.

A reward takes a batch of images, float in [0, 1] laid out ``(N, 3, H, W)`` (channels first,
the core's layout; ComfyUI's ``(N, H, W, C)`` IMAGE is converted once at the node boundary), and
the prompt of each image, and returns one float32 score per image, computed without gradients.

``evaluate`` returns every component's score by name (a single reward has one component, its
own name; a weighted combination has one per part plus ``"total"``), so the trainer can log each
and normalise them separately.
"""
from __future__ import annotations

import abc
import math
from typing import Sequence

import torch


class RewardInputError(ValueError):
    """Images or prompts that a reward cannot score as given."""


class RewardPluginError(ValueError):
    """A user's reward (``package.module:callable``) that failed or broke the Reward contract."""


def check_images(images: torch.Tensor, prompts: Sequence[str], who: str = "reward") -> None:
    """Validate a reward's input: (N, 3, H, W) float in [0, 1], finite, one prompt per image."""
    if not isinstance(images, torch.Tensor):
        raise RewardInputError(f"{who}: images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        hint = ""
        if images.ndim == 4 and images.shape[-1] in (1, 3, 4):
            hint = " It looks like ComfyUI's (N, H, W, C) IMAGE layout: use images.movedim(-1, 1)."
        raise RewardInputError(
            f"{who}: images must have shape (N, 3, H, W), got {tuple(images.shape)}.{hint}")
    if not images.is_floating_point():
        raise RewardInputError(
            f"{who}: images must be float in [0, 1], got dtype {images.dtype}; divide uint8 images by 255")
    if images.numel() and not torch.isfinite(images).all():
        raise RewardInputError(f"{who}: images contain NaN or infinite values")
    if images.numel():
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise RewardInputError(
                f"{who}: images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                "map [-1, 1] images with (x + 1) / 2, divide 0..255 images by 255")
    if isinstance(prompts, str):
        raise RewardInputError(f"{who}: prompts must be a sequence of strings, one per image, got a single str")
    if len(prompts) != images.shape[0]:
        raise RewardInputError(
            f"{who}: got {images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image")


class Reward(abc.ABC):
    """A scalar reward. Subclasses implement ``score``; callers use ``__call__`` or ``evaluate``."""

    name: str = "reward"

    @abc.abstractmethod
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores of already validated images, shape (N,)."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_images(images, prompts, self.name)
        with torch.no_grad():
            out = self.score(images.clamp(0, 1), list(prompts))
        out = out.detach().float().cpu().reshape(-1)
        if out.shape[0] != images.shape[0]:
            raise RewardPluginError(f"reward {self.name!r} returned {out.shape[0]} scores for {images.shape[0]} images; "
                                    "score(images, prompts) must return one score per image, shape (N,)")
        return out

    def evaluate(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Every component's score by name; the value trained on is ``out[self.name]``
        for a single reward, ``out["total"]`` for a combination (see ``total_key``)."""
        return {self.name: self(images, prompts)}

    @property
    def total_key(self) -> str:
        return self.name

    def components(self) -> list[tuple[str, float]]:
        """(name, weight) of each part, for separate advantage normalisation."""
        return [(self.name, 1.0)]

    def modules(self) -> list[torch.nn.Module]:
        """The reward's torch modules (for placement and memory accounting)."""
        return [v for v in vars(self).values() if isinstance(v, torch.nn.Module)]

    def place(self, device: str | torch.device) -> None:
        """Move the reward's modules to ``device`` (later calls compute there)."""
        device = torch.device(device)
        for m in self.modules():
            m.to(device)
        if hasattr(self, "device"):
            self.device = device


class RewardWrapper(Reward):
    """A reward that is ``inner`` but for what a subclass changes (how a call is checked, where the
    weights are while it runs, what it remembers): every call and property passes through."""

    def __init__(self, inner: Reward):
        self.inner, self.name = inner, inner.name

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.inner.score(images, prompts)

    def evaluate(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.inner.evaluate(images, prompts)

    @property
    def total_key(self) -> str:
        return self.inner.total_key

    def components(self) -> list[tuple[str, float]]:
        return self.inner.components()

    def modules(self) -> list[torch.nn.Module]:
        return self.inner.modules()

    def place(self, device) -> None:
        self.inner.place(device)


class PluginReward(RewardWrapper):
    """A user's reward, whose failures are reported as its own (:class:`RewardPluginError`, naming it)."""

    def __init__(self, inner: Reward, spec: str):
        super().__init__(inner)
        self.spec = spec

    def _call(self, fn, images, prompts):
        try:
            out = fn(images, prompts)
        except RewardPluginError as e:
            raise RewardPluginError(f"reward plug-in {self.spec!r}: {e}") from e
        except RewardInputError:
            raise
        except Exception as e:
            raise RewardPluginError(f"reward plug-in {self.spec!r} raised {type(e).__name__}: {e}") from e
        if not isinstance(out, (torch.Tensor, dict)):
            raise RewardPluginError(f"reward plug-in {self.spec!r} returned a {type(out).__name__}; expected a "
                                    "tensor of scores (N,)")
        return out

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self._call(self.inner.score, images, prompts)

    def evaluate(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self._call(self.inner.evaluate, images, prompts)


class OffloadedReward(RewardWrapper):
    """``inner`` kept on the CPU and moved to ``device`` only while it scores, so the denoiser has
    the device's memory while it samples and trains (a PCIe round trip per scoring call)."""

    def __init__(self, inner: Reward, device: str | torch.device):
        super().__init__(inner)
        self.device = torch.device(device)
        inner.place("cpu")

    def evaluate(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        self.inner.place(self.device)
        try:
            return self.inner.evaluate(images, prompts)
        finally:
            self.inner.place("cpu")

    def place(self, device) -> None:
        """Where it scores; the weights stay on the CPU in between."""
        self.device = torch.device(device)


def check_scores(scores: torch.Tensor, what: str = "rewards") -> torch.Tensor:
    """Refuse NaN or infinite scores with a message naming where they are."""
    bad = ~torch.isfinite(scores)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()[:8]
        raise FloatingPointError(
            f"{what}: {int(bad.sum())} non-finite value(s) (NaN or inf) at index {idx}; "
            "check the reward model's weights and dtype (fp16 overflow?) and the images it was given")
    return scores


def is_finite_number(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
