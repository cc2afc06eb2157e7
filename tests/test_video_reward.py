"""Rewards on video (progrpo_core/rewards/video.py): the mean of an image reward over the decoded
frames, and the frame-consistency term, against naive per-frame loops."""
from __future__ import annotations

import pytest
import torch

from progrpo_core.rewards import Reward, RewardInputError, build_reward
from progrpo_core.rewards.video import VideoReward, check_frames


class Embedder(Reward):
    """A 'CLIP' whose image embedding is the mean colour: consecutive frames' similarity is easy to reason about."""

    name = "clip"

    def image_embeddings(self, images):
        return images.mean((2, 3))  # (N, 3)

    def score(self, images, prompts):
        return images.mean((1, 2, 3))


def test_the_video_score_is_the_frame_mean_of_the_image_reward():
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(3, 4, 3, 8, 8, generator=g)
    stroke = build_reward("stroke")
    out = VideoReward(stroke, frames=4, stride=2).evaluate(videos, ["a", "b", "c"])
    naive = torch.stack([torch.stack([stroke(v[f:f + 1], [p])[0] for f in range(4)]).mean()
                         for v, p in zip(videos, "abc")])
    assert set(out) == {"stroke"} and torch.allclose(out["stroke"], naive, atol=1e-6)


def test_frame_consistency_is_the_mean_cosine_of_consecutive_frames_and_adds_by_its_weight():
    videos = torch.rand(2, 3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    videos[1] = videos[1, :1]  # the second video holds one frame three times: consistency 1
    reward = VideoReward(build_reward("stroke"), frames=3, stride=1, consistency=Embedder(), weight=0.5)
    out = reward.evaluate(videos, ["x", "y"])
    e = videos.mean((3, 4))  # (N, F, 3)
    cos = torch.nn.functional.cosine_similarity(e[:, 1:], e[:, :-1], dim=-1).mean(1)
    assert torch.allclose(out["consistency"], cos, atol=1e-6) and abs(float(out["consistency"][1]) - 1) < 1e-6
    assert torch.allclose(out["total"], out["stroke"] + 0.5 * out["consistency"])
    assert reward.total_key == "total" and reward.components() == [("stroke", 1.0), ("consistency", 0.5)]


def test_bad_video_input_and_settings_are_refused_by_name():
    reward = VideoReward(build_reward("stroke"))
    with pytest.raises(RewardInputError, match=r"videos must have shape \(N, F, 3, H, W\), got \(2, 3, 8, 8\)"):
        reward.evaluate(torch.rand(2, 3, 8, 8), ["a", "b"])
    with pytest.raises(RewardInputError, match="1 images but 2 prompts"):
        reward.evaluate(torch.rand(1, 2, 3, 8, 8), ["a", "b"])
    with pytest.raises(ValueError, match="stride=0"):
        check_frames(4, 0)
    with pytest.raises(ValueError, match="has no image embeddings"):
        VideoReward(build_reward("stroke"), consistency=build_reward("stroke"), weight=1.0)
