"""Property-based tests (hypothesis): random valid inputs never crash, random invalid inputs always
get a ``ValueError`` that names the bad value.

Covers OVF against brute force, prune schedules (``PruneSchedule.validate``,
``ScheduleConfig.resolved``) and config parsing (``parse_value``, ``build_config``)."""
import dataclasses
import itertools
import math
import typing

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from progrpo_core import config as C
from progrpo_core import ovf
from progrpo_core.methods import PruneSchedule

settings.register_profile("progrpo", deadline=None, max_examples=150, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("progrpo")


# -- OVF ---------------------------------------------------------------------------------------
def subset_variance(vals, idx):
    sub = [vals[i] for i in idx]
    m = sum(sub) / len(sub)
    return sum((x - m) ** 2 for x in sub) / len(sub)


def all_variances(vals, k):
    return {idx: subset_variance(vals, idx) for idx in itertools.combinations(range(len(vals)), k)}


@st.composite
def group_and_k(draw, values):
    g = draw(st.integers(1, 8))
    rewards = draw(st.lists(values, min_size=g, max_size=g))
    return rewards, draw(st.integers(1, g))


# realistic reward scales: classifier probabilities, CLIP-like scores, PickScore-like 18..24
finite_rewards = st.one_of(st.floats(0, 1), st.floats(-100, 100), st.floats(18, 24)).filter(math.isfinite)


@given(group_and_k(finite_rewards))
def test_ovf_keeps_a_maximum_variance_subset(case):
    rewards, k = case
    kept = ovf.ovf_select(torch.tensor(rewards, dtype=torch.float64), k).tolist()
    assert kept == sorted(set(kept)) and len(kept) == k and all(0 <= i < len(rewards) for i in kept)
    variances = all_variances(rewards, k)
    best = max(variances.values())
    scale = max(1.0, max(abs(r) for r in rewards)) ** 2
    assert subset_variance(rewards, kept) >= best - 1e-9 * scale
    winners = [idx for idx, v in variances.items() if v >= best - 1e-9 * scale]
    if len({tuple(sorted(rewards[i] for i in idx)) for idx in winners}) == 1:
        # one optimal multiset of values (no floating-point near-tie between different ones):
        # OVF must return its realisation with the lowest indices
        assert tuple(kept) == min(winners)


@given(group_and_k(st.integers(-3, 3)))
@example(([1, 1, 1, 1], 2))
@example(([0, 5], 1))
def test_ovf_ties_break_to_the_lowest_indices(case):
    """With small integers there are many exact ties: the lexicographically first optimal subset wins."""
    rewards, k = case
    kept = tuple(ovf.ovf_select(torch.tensor(rewards, dtype=torch.float64), k).tolist())
    variances = all_variances([float(r) for r in rewards], k)
    best = max(variances.values())
    assert kept == min(idx for idx, v in variances.items() if abs(v - best) <= 1e-9)


@given(st.lists(st.floats(-10, 10), min_size=1, max_size=8), st.integers(-3, 12))
def test_ovf_refuses_an_impossible_k(rewards, k):
    assume(not 1 <= k <= len(rewards))
    with pytest.raises(ValueError, match=f"k={k}"):
        ovf.ovf_select(torch.tensor(rewards), k)


@given(st.lists(st.floats(-10, 10), min_size=2, max_size=8), st.data())
def test_ovf_refuses_non_finite_rewards_and_names_where(rewards, data):
    i = data.draw(st.integers(0, len(rewards) - 1))
    rewards[i] = data.draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    with pytest.raises(ValueError, match=rf"NaN or infinite values at index \[.*\b{i}\b"):
        ovf.ovf_select(torch.tensor(rewards), 1)


# -- schedules ---------------------------------------------------------------------------------
@st.composite
def valid_schedules(draw):
    """(PruneSchedule, T) satisfying every documented rule."""
    steps = draw(st.integers(2, 60))
    g = draw(st.integers(2, 64))
    n_cp = draw(st.integers(0, min(steps - 1, g - 2, 4)))
    checkpoints = sorted(draw(st.lists(st.integers(1, steps - 1), min_size=n_cp, max_size=n_cp, unique=True)))
    keep = sorted(draw(st.lists(st.integers(2, g - 1), min_size=n_cp, max_size=n_cp, unique=True)),
                  reverse=True) if n_cp else []
    survivors = keep[-1] if keep else g
    final = draw(st.none() | (st.integers(2, survivors - 1) if survivors > 2 else st.none()))
    selector = draw(st.sampled_from(list(ovf.SELECTORS)))
    return PruneSchedule(g, tuple(checkpoints), tuple(keep), final, selector), steps


@given(valid_schedules())
def test_valid_schedules_validate(case):
    sched, steps = case
    sched.validate(steps)
    assert sched.trained <= sched.survivors <= sched.group_size


@given(valid_schedules(), st.data())
def test_broken_schedules_are_refused_naming_the_value(case, data):
    sched, steps = case
    kind = data.draw(st.sampled_from(["steps", "group", "checkpoint", "order", "counts", "keep", "final",
                                      "selector"]))
    if kind == "steps":
        steps = bad = data.draw(st.integers(-5, 1))
    elif kind == "group":
        sched = PruneSchedule(bad := data.draw(st.integers(-5, 1)))
    elif kind == "checkpoint":
        assume(sched.checkpoints)
        bad = data.draw(st.integers(-5, 0) | st.integers(steps, steps + 20))
        sched = dataclasses.replace(sched, checkpoints=(bad,) + sched.checkpoints[1:])
    elif kind == "order":
        assume(len(sched.checkpoints) >= 2)
        sched = dataclasses.replace(sched, checkpoints=tuple(reversed(sched.checkpoints)))
        bad = list(sched.checkpoints)
    elif kind == "counts":
        extra = data.draw(st.integers(1, 3))
        sched = dataclasses.replace(sched, keep=sched.keep + (2,) * extra)
        bad = list(sched.keep)
    elif kind == "keep":
        assume(sched.keep)
        prev = sched.group_size if len(sched.keep) == 1 else sched.keep[-2]
        bad = data.draw(st.integers(prev, prev + 10) | st.integers(-3, 1))
        sched = dataclasses.replace(sched, keep=sched.keep[:-1] + (bad,), final_keep=None)
    elif kind == "final":
        bad = data.draw(st.integers(-3, 1) | st.integers(sched.survivors, sched.survivors + 10))
        sched = dataclasses.replace(sched, final_keep=bad)
    else:
        bad = data.draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in ovf.SELECTORS))
        sched = dataclasses.replace(sched, selector=bad)
    with pytest.raises(ValueError) as e:
        sched.validate(steps)
    assert str(bad) in str(e.value) or repr(bad) in str(e.value), (kind, bad, str(e.value))


@given(valid_schedules(), st.sampled_from(tuple(C.METHODS)))
def test_schedule_config_resolves_valid_settings_exactly(case, method):
    sched, steps = case
    assume(sched.final_keep is not None or method != "ovf")  # None there means the preset's final_keep
    assume(not C.METHODS[method].sde_window)  # a windowed method keeps its window (tests/test_windows.py)
    cfg = C.ScheduleConfig(group_size=sched.group_size, checkpoints=sched.checkpoints, keep=sched.keep,
                           final_keep=sched.final_keep, selector=sched.selector)
    assert cfg.resolved(method, steps) == sched


opt_ints = st.none() | st.integers(-3, 70)
opt_tuples = st.none() | st.lists(st.integers(-3, 70), max_size=4).map(tuple)


@given(st.sampled_from(tuple(C.METHODS)), st.integers(-2, 60), opt_ints, opt_tuples, opt_tuples, opt_ints)
def test_schedule_config_never_crashes(method, steps, g, checkpoints, keep, final_keep):
    cfg = C.ScheduleConfig(group_size=g, checkpoints=checkpoints, keep=keep, final_keep=final_keep)
    try:
        sched = cfg.resolved(method, steps)
    except ValueError as e:
        assert str(e)
    else:
        sched.validate(steps)  # whatever it returns is a valid schedule


# -- config parsing ----------------------------------------------------------------------------
FIELDS = [(section, f.name) for section, cls in C.SECTIONS.items() for f in dataclasses.fields(cls)]


def field_type(section, name):
    tp = typing.get_type_hints(C.SECTIONS[section])[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")) else tp


raw_values = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.text(max_size=12), st.lists(st.integers(-100, 100), max_size=4),
    st.sampled_from(["1", "-1", "0", "2.5", "1e-3", "nan", "inf", "true", "no", "none", "", "3,2", "8,6,4", " 7 "]))


@given(st.sampled_from(FIELDS), raw_values)
def test_parse_value_coerces_or_names_the_setting(field, raw):
    section, name = field
    try:
        value = C.parse_value(section, name, raw)
    except ValueError as e:
        assert f"{section}.{name}" in str(e)
        return
    tp = field_type(section, name)
    if value is not None:
        if typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0]
            assert isinstance(value, tuple) and all(isinstance(v, elem) for v in value)
        else:
            assert isinstance(value, tp)


def _named(message: str, section: str, name: str, raw) -> bool:
    """Whether the message names the setting, the value given, or the value as read ("00" → 0)."""
    texts = {name, repr(raw), str(raw)}
    try:
        parsed = C.parse_value(section, name, raw)
    except ValueError:
        parsed = None
    for value in (raw, parsed):
        if isinstance(value, (list, tuple)) or (isinstance(value, str) and "," in value):
            items = value if isinstance(value, (list, tuple)) else [s.strip() for s in value.split(",") if s.strip()]
            texts |= {str(v) for v in items} | {repr(list(items))}
        elif value is not None:
            texts.add(str(value))
    return any(t and t in message for t in texts)


@given(st.sampled_from(FIELDS), raw_values)
@example(("sampler", "steps"), "1")
@example(("schedule", "keep"), "48,24")
def test_build_config_accepts_or_names_the_bad_value(field, raw):
    """One setting changed from the defaults: a valid config, or a ValueError naming it or its value."""
    section, name = field
    try:
        cfg = C.build_config({section: {name: raw}})
    except ValueError as e:
        assert _named(str(e), section, name, raw), str(e)
    else:
        assert isinstance(cfg, C.TrainConfig)


@given(st.text(min_size=1, max_size=10).filter(lambda s: s not in C.SECTIONS), st.text(max_size=10))
def test_unknown_sections_and_settings_are_named(section, name):
    with pytest.raises(ValueError, match="unknown config section"):
        C.build_config({section: {}})
    assume(name.replace("-", "_") not in {f.name for f in dataclasses.fields(C.RunConfig)})
    with pytest.raises(ValueError, match="unknown setting run."):
        C.build_config({"run": {name: 1}})


@given(st.text(min_size=1, max_size=10).filter(lambda s: s not in C.SECTIONS))
def test_parse_value_names_an_unknown_section(section):
    with pytest.raises(ValueError, match="section"):
        C.parse_value(section, "x", 1)


@given(st.sampled_from(list(C.SECTIONS)), st.one_of(st.integers(), st.text(), st.lists(st.integers())))
def test_a_section_that_is_not_a_table_is_named(section, value):
    with pytest.raises(ValueError, match=section):
        C.build_config({section: value})


@pytest.mark.parametrize("field", [("run", "epochs"), ("schedule", "group_size"), ("grpo", "lr")])
def test_a_boolean_is_not_a_number(field):
    with pytest.raises(ValueError, match=".".join(field)):
        C.parse_value(*field, True)


@given(st.lists(st.integers(0, 1024), min_size=4, max_size=8, unique=True), st.integers(10**5, 10**7))
def test_ovf_ignores_a_common_offset(rewards, offset):
    """Variance does not depend on a shift of every reward, so neither may the selection. (Rewards
    are multiples of 1/1024, so adding the offset is exact in float64 and keeps every tie.)"""
    k = len(rewards) // 2
    r = torch.tensor(rewards, dtype=torch.float64) / 1024
    assert ovf.ovf_select(r + offset, k).tolist() == ovf.ovf_select(r, k).tolist()
