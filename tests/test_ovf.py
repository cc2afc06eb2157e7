import itertools

import pytest
import torch

from progrpo_core import ovf


def brute_force(rewards: torch.Tensor, k: int) -> tuple[int, ...]:
    """First maximum-variance subset in itertools.combinations (lexicographic) order."""
    vals = rewards.double().tolist()
    best, best_idx = -1.0, None
    for idx in itertools.combinations(range(len(vals)), k):
        sub = [vals[i] for i in idx]
        m = sum(sub) / k
        v = sum((x - m) ** 2 for x in sub) / k
        if best_idx is None or (v > best and not ovf.variance_ties_equal(v, best)):
            best, best_idx = v, idx
    return best_idx


@pytest.mark.parametrize("g", [2, 3, 5, 7, 9])
def test_ovf_equals_brute_force_random(g):
    gen = torch.Generator().manual_seed(g)
    for trial in range(25):
        r = torch.randn(g, generator=gen)
        for k in range(1, g + 1):
            assert tuple(ovf.ovf_select(r, k).tolist()) == brute_force(r, k), (r, k)


@pytest.mark.parametrize("g", [4, 6, 8])
def test_ovf_equals_brute_force_with_ties(g):
    gen = torch.Generator().manual_seed(100 + g)
    for trial in range(25):
        r = torch.randint(0, 3, (g,), generator=gen).float() / 2  # many exact ties
        for k in range(1, g + 1):
            assert tuple(ovf.ovf_select(r, k).tolist()) == brute_force(r, k), (r, k)


def test_ovf_all_equal_is_lowest_indices():
    assert ovf.ovf_select(torch.ones(6), 3).tolist() == [0, 1, 2]


def test_ovf_keeps_extremes():
    r = torch.tensor([0.5, 0.1, 0.9, 0.52, 0.48, 0.95, 0.0])
    kept = ovf.ovf_select(r, 4).tolist()
    assert kept == sorted(kept)
    assert set(kept) == {1, 2, 5, 6}


def test_selectors_shapes_and_determinism():
    r = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0])
    assert ovf.topk_select(r, 2).tolist() == [3, 4]
    a = ovf.random_select(r, 3, torch.Generator().manual_seed(1))
    b = ovf.random_select(r, 3, torch.Generator().manual_seed(1))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 3
    assert ovf.keep_all(r).tolist() == [0, 1, 2, 3, 4]
    assert ovf.select("all", r, 5).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("rewards,k,match", [
    (torch.tensor([1.0, float("nan"), 2.0]), 2, "NaN or infinite"),
    (torch.tensor([1.0, float("inf"), 2.0]), 2, "NaN or infinite"),
    (torch.tensor([1.0, 2.0]), 3, "k=3 must be an integer in 1..G=2"),
    (torch.tensor([1.0, 2.0]), 0, "k=0"),
    (torch.ones(2, 2), 1, "1-D"),
])
def test_ovf_bad_input(rewards, k, match):
    with pytest.raises(ValueError, match=match):
        ovf.ovf_select(rewards, k)


def test_unknown_selector():
    with pytest.raises(ValueError, match="unknown selector 'best'"):
        ovf.select("best", torch.ones(3), 2)
