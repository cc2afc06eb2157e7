"""Optimal Variance Filtering and the selectors it is compared with.

Every selector takes the rewards of one group, shape (G,), and ``k``, and returns the kept
indices as an ascending 1-D long tensor of length ``k``.

OVF is exact: the k-subset of largest variance consists, by value, of the ``m`` lowest and the
``k−m`` highest rewards for some ``m`` (a known property of variance maximisation), so trying every
``m`` with prefix sums finds it in O(G log G). Ties are deterministic: among subsets of equal
variance (to 1e-12 relative), the lexicographically smallest sorted index tuple wins — the same
rule as a brute-force scan over ``itertools.combinations`` keeping the first maximum.
"""
from __future__ import annotations

from typing import Callable

import torch

_REL_TOL = 1e-12


def _check(rewards: torch.Tensor, k: int) -> torch.Tensor:
    rewards = torch.as_tensor(rewards)
    if rewards.ndim != 1:
        raise ValueError(f"rewards of one group must be 1-D (G,), got shape {tuple(rewards.shape)}")
    g = rewards.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= g:
        raise ValueError(f"k={k!r} must be an integer in 1..G={g}; a selector cannot keep more than it has")
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        raise ValueError(f"rewards contain NaN or infinite values at index {bad}; fix the reward before selecting")
    return rewards.detach().double().cpu()


def variance_ties_equal(a: float, b: float) -> bool:
    """Whether two subset variances count as tied (the rule shared with the brute-force test)."""
    return abs(a - b) <= _REL_TOL * max(1.0, abs(a), abs(b))


def ovf_select(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the exact maximum-variance ``k``-subset of ``rewards`` (G,)."""
    r = _check(rewards, k)
    g = r.shape[0]
    if k == g:
        return torch.arange(g)
    vals = r.tolist()
    order = sorted(range(g), key=lambda i: (vals[i], i))  # ascending by value, then index
    sv = [vals[i] for i in order]
    # Prefix sums of rewards shifted by the minimum: variance ignores a common offset, and without
    # the shift a large one would cancel it in s2/k - (s/k)^2.
    pre = [0.0]
    pre2 = [0.0]
    for v in sv:
        d = v - sv[0]
        pre.append(pre[-1] + d)
        pre2.append(pre2[-1] + d * d)

    def var_of(m: int) -> float:  # m lowest + (k-m) highest, by value
        s = pre[m] + pre[g] - pre[g - (k - m)]
        s2 = pre2[m] + pre2[g] - pre2[g - (k - m)]
        return max(s2 / k - (s / k) ** 2, 0.0)

    variances = [var_of(m) for m in range(k + 1)]
    best = max(variances)
    if k == 1 or sv[0] == sv[-1]:  # every k-subset has variance 0: the first one wins the tie
        return torch.arange(k)
    # Among optimal m, realise each value multiset with the smallest indices, keep the lexicographic min.
    by_value: dict[float, list[int]] = {}
    for i in range(g):
        by_value.setdefault(vals[i], []).append(i)
    candidates = []
    for m, v in enumerate(variances):
        if not variance_ties_equal(v, best):
            continue
        need: dict[float, int] = {}
        for x in sv[:m] + sv[g - (k - m):]:
            need[x] = need.get(x, 0) + 1
        idx = sorted(i for x, c in need.items() for i in by_value[x][:c])
        candidates.append(tuple(idx))
    return torch.tensor(min(candidates), dtype=torch.long)


def topk_select(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest rewards (ties: lower index first)."""
    r = _check(rewards, k)
    order = sorted(range(r.shape[0]), key=lambda i: (-float(r[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def random_select(rewards: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random ``k``-subset (the ablation baseline); deterministic given ``generator``."""
    r = _check(rewards, k)
    return torch.randperm(r.shape[0], generator=generator)[:k].sort().values


def keep_all(rewards: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """The whole group (``k`` must be G or None)."""
    r = torch.as_tensor(rewards)
    if k is not None:
        _check(r, k)
        if k != r.shape[0]:
            raise ValueError(f"keep-all keeps the whole group of {r.shape[0]}, not k={k}")
    return torch.arange(r.shape[0])


Selector = Callable[..., torch.Tensor]
SELECTORS: dict[str, Selector] = {"ovf": ovf_select, "topk": topk_select, "random": random_select,
                                  "all": keep_all}


def select(name: str, rewards: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dispatch by selector name (``ovf``, ``topk``, ``random``, ``all``)."""
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; expected one of {', '.join(SELECTORS)}")
    if name == "random":
        return random_select(rewards, k, generator)
    if name == "all":
        return keep_all(rewards, k)
    return SELECTORS[name](rewards, k)
