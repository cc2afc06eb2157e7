"""Weighted rewards, the spec syntax, and the ``score`` command."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reward_fixtures as rf
from progrpo_core.rewards import (Reward, RewardSpec, WeightedReward, build_reward, build_reward_from_spec,
                                  parse_reward_spec, register_reward)
from progrpo_core.rewards.cli import add_score_parser, load_image, run_score


class Fixed(Reward):
    """Scores each image by a fixed function of its mean (a stand-in reward)."""

    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def score(self, images, prompts):
        return self.fn(images.mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("spec, want", [
    ("digit", [RewardSpec("digit")]),
    ("pickscore*0.5", [RewardSpec("pickscore", None, 0.5, True)]),
    ("pickscore=/m/PickScore_v1*0.7,hpsv2.1=/m/HPS_v2.1_compressed.pt*0.3",
     [RewardSpec("pickscore", "/m/PickScore_v1", 0.7, True),
      RewardSpec("hpsv2.1", "/m/HPS_v2.1_compressed.pt", 0.3, True)]),
    (" clip = /a=b/c:d * 2 , aesthetic ", [RewardSpec("clip", "/a=b/c:d", 2.0, True), RewardSpec("aesthetic")]),
    (r"clip=C:\models\clip*1e-1", [RewardSpec("clip", r"C:\models\clip", 0.1, True)]),
    ("stroke*-0.5,digit*0", [RewardSpec("stroke", None, -0.5, True), RewardSpec("digit", None, 0.0, True)]),
    ("clip=/odd*name/x", [RewardSpec("clip", "/odd*name/x")]),
])
def test_spec_parsing(spec, want):
    assert parse_reward_spec(spec) == want


@pytest.mark.parametrize("spec, match", [
    ("", "empty"), ("a,,b", "empty part"), ("a,", "empty part"), ("=p", "no reward name"),
    ("a=", "no path"), ("a*nan", "must be a number"), ("a*", "must be a number"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_reward_spec(spec)


def test_weighted_total_components_and_evaluate():
    a, b = Fixed("a", lambda m: m), Fixed("b", lambda m: 10 * m + 1)
    w = WeightedReward([("a", a, 0.7), ("b", b, -0.3)])
    x = rf.images(4, 8, 8)
    out = w.evaluate(x, ["p"] * 4)
    assert set(out) == {"a", "b", "total"} and w.total_key == "total"
    torch.testing.assert_close(out["a"], a(x, ["p"] * 4))
    torch.testing.assert_close(out["b"], b(x, ["p"] * 4))
    torch.testing.assert_close(out["total"], 0.7 * out["a"] - 0.3 * out["b"])
    torch.testing.assert_close(w(x, ["p"] * 4), out["total"])
    assert w.components() == [("a", 0.7), ("b", -0.3)]


def test_weighted_refuses_bad_parts():
    a = Fixed("a", lambda m: m)
    with pytest.raises(ValueError, match="unique"):
        WeightedReward([("a", a, 1.0), ("a", a, 1.0)])
    with pytest.raises(ValueError, match="unique and not 'total'"):
        WeightedReward([("total", a, 1.0)])
    with pytest.raises(ValueError, match="finite"):
        WeightedReward([("a", a, float("inf"))])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import progrpo_core.rewards as registry
    m = rf.tiny_models(tmp_path_factory)
    register_reward("hps-tiny", lambda path=None, **kw: build_reward("hpsv2.1", path=path, arch=rf.TINY_OPEN_CLIP, **kw))
    yield m
    registry._REGISTRY.pop("hps-tiny", None)


def test_weighted_from_the_registry_with_real_models(models):
    spec = f"pickscore={models['pickscore']}*0.7,hps-tiny={models['hps']}*0.3,clip={models['pickscore']}"
    w = build_reward("weighted", path=spec)
    assert w.components() == [("pickscore", 0.7), ("hps-tiny", 0.3), ("clip", 1.0)]
    x = rf.images(3, 48, 64, seed=3)
    prompts = rf.PROMPTS[:3]
    out = w.evaluate(x, prompts)
    pick = build_reward("pickscore", path=models["pickscore"])(x, prompts)
    torch.testing.assert_close(out["pickscore"], pick)
    torch.testing.assert_close(out["total"], 0.7 * pick + 0.3 * out["hps-tiny"] + out["clip"])


def test_spec_builds_a_single_reward_unless_weighted(models):
    single = build_reward_from_spec(f"pickscore={models['pickscore']}")
    assert single.name == "pickscore" and not isinstance(single, WeightedReward)
    twice = build_reward_from_spec(f"clip={models['pickscore']},clip={models['pickscore']}*2")
    assert isinstance(twice, WeightedReward) and twice.components() == [("clip", 1.0), ("clip_2", 2.0)]
    with pytest.raises(ValueError, match="cannot contain another weighted"):
        build_reward("weighted", path="weighted=x")
    with pytest.raises(ValueError, match="needs a spec"):
        build_reward("weighted")


# --- the score command ----------------------------------------------------------------------------

def _parse(argv):
    parser = argparse.ArgumentParser()
    add_score_parser(parser.add_subparsers(dest="cmd"))
    return parser.parse_args(["score", *argv])


def _write_images(tmp_path):
    paths = []
    for i, hw in enumerate([(40, 60), (50, 50), (40, 60)]):
        p = tmp_path / f"img{i}.png"
        rf.to_pil(rf.images(1, *hw, seed=i)[0]).save(p)
        paths.append(str(p))
    return paths


def test_score_prints_every_reward_per_image(models, tmp_path, capsys):
    paths = _write_images(tmp_path)
    pick = str(models["pickscore"])
    args = _parse(["--reward", f"pickscore={pick}", "--reward", f"pickscore={pick}*0.5,clip={pick}*2",
                   "--prompt", "a cat", *paths])
    assert args.func is run_score
    assert run_score(args) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [ln["image"] for ln in lines] == paths
    assert set(lines[0]) == {"image", "prompt", "pickscore", "weighted/pickscore", "clip", "total"}
    reward = build_reward("pickscore", path=pick)
    for ln in lines:
        expected = float(reward(load_image(ln["image"])[None], ["a cat"])[0])
        assert ln["pickscore"] == pytest.approx(expected, abs=1e-4)
        assert ln["weighted/pickscore"] == pytest.approx(expected, abs=1e-4)
        assert ln["total"] == pytest.approx(0.5 * ln["weighted/pickscore"] + 2 * ln["clip"], abs=1e-4)


def test_score_one_prompt_per_image_and_search_dirs(models, tmp_path, capsys):
    paths = _write_images(tmp_path)
    args = _parse(["--reward", "pickscore", "--reward-dir", str(models["root"]),
                   "--prompt", "a", "--prompt", "b", "--prompt", "c", *paths])
    assert run_score(args) == 0
    assert [json.loads(ln)["prompt"] for ln in capsys.readouterr().out.splitlines()] == ["a", "b", "c"]


@pytest.mark.parametrize("argv, match", [
    (["--reward", "pickscore", "--prompt", "a", "--prompt", "b"], "2 prompts for 3 images"),
    (["--reward", "pickscore=/nowhere/PickScore_v1", "--prompt", "a"], "/nowhere/PickScore_v1"),
    (["--reward", "pickscore*x*", "--prompt", "a"], "must be a number"),
])
def test_score_errors(tmp_path, capsys, argv, match):
    paths = _write_images(tmp_path)
    assert run_score(_parse([*argv, *paths])) == 2
    assert match in capsys.readouterr().err


def test_score_unreadable_image(tmp_path, capsys):
    (tmp_path / "x.png").write_text("not an image")
    assert run_score(_parse(["--reward", "stroke", "--prompt", "a", str(tmp_path / "x.png")])) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_python_m_progrpo_core_score_end_to_end(tmp_path):
    paths = _write_images(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-m", "progrpo_core", "score", "--reward", "stroke",
                          "--prompt", "a", *paths], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(ln) for ln in out.stdout.splitlines()]
    assert len(lines) == 3
    for ln in lines:
        assert ln["stroke"] == pytest.approx(float(load_image(ln["image"]).mean()), abs=1e-6)
