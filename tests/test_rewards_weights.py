"""Locating reward weights and loading checkpoints safely: every bad-input message."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import reward_fixtures as rf  # noqa: F401
from progrpo_core.rewards import find_reward_weights
from progrpo_core.rewards.weights import (ENV_VAR, CheckpointMismatchError, RewardWeightsNotFound,
                                          UnsafeCheckpointError, check_state_dict, load_state_dict_file,
                                          empty_weights, resolve_dtype)


@pytest.fixture(autouse=True)
def no_env_dir(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def _hf_folder(p: Path) -> Path:
    p.mkdir(parents=True)
    (p / "config.json").write_text("{}")
    return p


def test_found_from_path_file_folder_search_dirs_and_env(tmp_path, monkeypatch):
    hps = tmp_path / "a" / "HPS_v2.1_compressed.pt"
    hps.parent.mkdir()
    hps.write_bytes(b"x")
    pick = _hf_folder(tmp_path / "b" / "PickScore_v1")
    # a path to the file itself, or to a folder holding it
    assert find_reward_weights("hpsv2.1", hps) == hps
    assert find_reward_weights("hpsv2.1", hps.parent) == hps
    assert find_reward_weights("pickscore", pick) == pick
    assert find_reward_weights("pickscore", pick.parent) == pick
    # search folders, then PROGRPO_REWARD_DIR (several, os.pathsep-separated)
    assert find_reward_weights("pickscore", search_dirs=[tmp_path / "a", tmp_path / "b"]) == pick
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert find_reward_weights("pickscore") == pick
    assert find_reward_weights("hpsv2.1") == hps
    # a search folder comes before the environment
    other = _hf_folder(tmp_path / "c" / "PickScore_v1")
    assert find_reward_weights("pickscore", search_dirs=[tmp_path / "c"]) == other


def test_hpsv2_and_hpsv21_are_not_confused(tmp_path):
    (tmp_path / "HPS_v2_compressed.pt").write_bytes(b"x")
    with pytest.raises(RewardWeightsNotFound, match="HPS_v2.1_compressed.pt"):
        find_reward_weights("hpsv2.1", search_dirs=[tmp_path])
    assert find_reward_weights("hpsv2", search_dirs=[tmp_path]).name == "HPS_v2_compressed.pt"


def test_not_found_names_every_path_and_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(RewardWeightsNotFound) as e:
        find_reward_weights("pickscore", search_dirs=[tmp_path / "comfy" / "reward_models"])
    msg = str(e.value)
    assert str(tmp_path / "comfy" / "reward_models" / "PickScore_v1") in msg
    assert str(tmp_path / "env" / "PickScore_v1") in msg
    assert "yuvalkirstain/PickScore_v1" in msg
    assert f"into {tmp_path / 'comfy' / 'reward_models' / 'PickScore_v1'}" in msg
    assert ENV_VAR in msg


def test_not_found_without_any_folder_says_env_is_unset():
    with pytest.raises(RewardWeightsNotFound, match=f"{ENV_VAR} is not set") as e:
        find_reward_weights("imagereward")
    assert "THUDM/ImageReward" in str(e.value) and "med_config.json" in str(e.value)


def test_explicit_path_does_not_fall_back_to_env(tmp_path, monkeypatch):
    _hf_folder(tmp_path / "env" / "PickScore_v1")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(RewardWeightsNotFound) as e:
        find_reward_weights("pickscore", tmp_path / "typo")
    assert str(tmp_path / "typo") in str(e.value) and "does not exist" in str(e.value)


def test_folder_without_config_is_reported(tmp_path):
    (tmp_path / "PickScore_v1").mkdir()
    with pytest.raises(RewardWeightsNotFound, match="has no config.json"):
        find_reward_weights("pickscore", search_dirs=[tmp_path])


def test_unknown_weight_name():
    with pytest.raises(ValueError, match="no known weight files"):
        find_reward_weights("nope")


# --- checkpoint loading -------------------------------------------------------------------------

class NotATensor:  # an arbitrary object a pickle could carry
    pass


def test_pickle_with_arbitrary_objects_is_refused_not_unpickled(tmp_path):
    f = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": NotATensor()}, f)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_state_dict_file(f, "hpsv2")
    msg = str(e.value)
    assert "weights_only=True" in msg and "safetensors" in msg and str(f) in msg
    assert "NotATensor" in msg  # names what it refused


def test_state_dict_wrappers_and_safetensors(tmp_path):
    from safetensors.torch import save_file
    sd = {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, tmp_path / "x.pt")
    save_file(sd, tmp_path / "x.safetensors")
    for f in ("x.pt", "x.safetensors"):
        got = load_state_dict_file(tmp_path / f, "t")
        assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.mark.parametrize("content, match", [
    (b"not a checkpoint at all", "not a"),
    (None, "expected a dict of tensors"),
])
def test_unreadable_or_wrong_type_checkpoints(tmp_path, content, match):
    f = tmp_path / "bad.pt"
    if content is None:
        torch.save([torch.zeros(1)], f)
    else:
        f.write_bytes(content)
    with pytest.raises(CheckpointMismatchError, match=match):
        load_state_dict_file(f, "t")


def test_check_state_dict_counts_missing_unexpected_and_misshaped():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = {"0.weight": torch.zeros(3, 4), "1.weight": torch.zeros(5, 3), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError) as e:
        check_state_dict(model, state, "x", "f.pt", expected_download="the real file")
    msg = str(e.value)
    assert "2 of 4 expected weights are missing" in msg
    assert "1 of its 3 weights are unexpected (e.g. extra)" in msg
    assert "1 have the wrong shape (e.g. 1.weight: (5, 3) in the file, (2, 3) in the model)" in msg
    assert "Expected the real file" in msg
    check_state_dict(model, model.state_dict(), "x", "f.pt")  # a matching one passes


def test_empty_weights_keeps_buffers_real():
    with empty_weights():
        m = torch.nn.BatchNorm1d(3)
    assert m.weight.device.type == "meta" and m.running_mean.device.type == "cpu"
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # patch removed afterwards


@pytest.mark.parametrize("given, want", [("fp16", torch.float16), ("bfloat16", torch.bfloat16),
                                         ("float32", torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_resolve_dtype(given, want):
    assert resolve_dtype(given) == want


def test_resolve_dtype_refuses_others():
    with pytest.raises(ValueError, match="float16"):
        resolve_dtype("int8")
