import math

import pytest
import torch

from progrpo_core import grpo


def naive_advantages(rewards, norm, eps=1e-4):
    rows = rewards.tolist()
    flat = [x for r in rows for x in r]
    mu_all = sum(flat) / len(flat)
    std_all = math.sqrt(sum((x - mu_all) ** 2 for x in flat) / len(flat))
    out = []
    for r in rows:
        mu = sum(r) / len(r)
        std = math.sqrt(sum((x - mu) ** 2 for x in r) / len(r)) if norm == "group" else std_all
        out.append([(x - mu) / (std + eps) for x in r])
    return torch.tensor(out)


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_advantages_match_naive_loop(norm):
    r = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(grpo.advantages(r, norm), naive_advantages(r, norm), rtol=1e-5, atol=1e-6)


def test_equal_rewards_give_zero_advantage_not_nan():
    a = grpo.advantages(torch.full((2, 5), 0.7))
    assert torch.equal(a, torch.zeros(2, 5))


def test_nan_rewards_are_refused():
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        grpo.advantages(torch.tensor([[1.0, float("nan")]]))


def test_combined_advantages_weight_each_normalised_reward():
    a = torch.rand(2, 4, generator=torch.Generator().manual_seed(1))
    b = 100 * torch.rand(2, 4, generator=torch.Generator().manual_seed(2))
    out = grpo.combined_advantages({"a": a, "b": b}, {"a": 0.25, "b": 0.75})
    torch.testing.assert_close(out, 0.25 * grpo.advantages(a) + 0.75 * grpo.advantages(b))


def test_clustered_fraction():
    assert grpo.clustered_fraction(torch.tensor([0.1, -0.4, 0.6, -2.0])) == 0.5


def test_clipped_loss_matches_naive_twin():
    g = torch.Generator().manual_seed(3)
    lp_old = torch.randn(8, generator=g)
    lp = lp_old + 1e-3 * torch.randn(8, generator=g)
    adv = 3 * torch.randn(8, generator=g)
    loss, stats = grpo.clipped_loss(lp, lp_old, adv, clip_range=2e-4, adv_clip=2.0)
    terms = []
    for i in range(8):
        a = max(-2.0, min(2.0, float(adv[i])))
        r = math.exp(float(lp[i] - lp_old[i]))
        terms.append(max(-a * r, -a * max(1 - 2e-4, min(1 + 2e-4, r))))
    assert float(loss) == pytest.approx(sum(terms) / 8, rel=1e-5)
    assert 0 < stats["clip_frac"] <= 1


def test_kl_to_reference():
    mean = torch.ones(2, 1, 2, 2)
    ref = torch.zeros(2, 1, 2, 2)
    std = torch.full((2, 1, 1, 1), 0.5)
    torch.testing.assert_close(grpo.kl_to_reference(mean, ref, std), torch.tensor([2.0, 2.0]))
