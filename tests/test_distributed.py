"""Data-parallel training under torchrun (gloo, 2 CPU processes): the same run as one process.

The settings make every split matter: batch-level advantage normalisation (needs the whole
batch's rewards), pruning at two checkpoints plus a final OVF selection on the gathered rewards,
minibatches of 5 rows that straddle the two ranks, gradient accumulation over all 3 of them (one
optimizer step per epoch), and a KL term (reference forward passes).

What "the same" means: the gradient of the first step agrees to float32 rounding (~1e-6
relative; the rows are summed in another order and in smaller batches). Adam then divides each
element by its own magnitude, so elements whose gradient is ~0 take rounding-sized steps of up
to ``lr``: the LoRA agrees to ~1e-5 absolute, far below what training moves it."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from progrpo_core import checkpoint as ckpt
from progrpo_core import distributed
from progrpo_core.training import Trainer

from helpers import config_with, metrics_rows

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"grpo": {"method": "pro-grpo", "prompts_per_epoch": 4, "adv_norm": "batch",
                     "train_batch_size": 5, "grad_accum": 3,
                     "kl_beta": 0.01},
            "schedule": {"group_size": 8, "keep": "6,4", "final_keep": 3},
            "run": {"epochs": 3, "eval_seeds": 1, "eval_every": 2, "save_every": 0, "checkpoint_every": 1,
                    "keep_checkpoints": 3, "seed": 5}}
WALL = {"wall_s", "epoch_wall_s"}
RTOL, ATOL = 1e-4, 1e-6  # float32 sums in a different order (smaller batches per rank)


def make_cfg(out, **run):
    return config_with(SETTINGS, out, **run)


rows = metrics_rows


def compare(a, b, path="row"):
    """Exact for ints, strings and lists of them (prompts, pruning decisions, counters); close for
    floats. Returns the largest absolute float difference."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        return max([compare(a[k], b[k], f"{path}.{k}") for k in a if k not in WALL] + [0.0])
    if isinstance(a, list):
        assert len(a) == len(b), path
        return max([compare(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))] + [0.0])
    if isinstance(a, float):
        assert b == pytest.approx(a, rel=RTOL, abs=ATOL), path
        return abs(a - b)
    assert a == b, path
    return 0.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    one, two = base / "one", base / "two"
    flags = [x for sec, kv in SETTINGS.items() for k, v in kv.items() for x in (f"--{sec}.{k}", str(v))]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "progrpo_core", "train", "--out", str(two), "--no-progress", *flags]
    p = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    Trainer.build(make_cfg(one), log=lambda s: None).run(progress=False)  # meanwhile, one process
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    return one, two, out


def test_two_processes_train_like_one(runs):
    one, two, stdout = runs
    assert stdout.count("eval reward after") == 1  # rank 0 alone logs
    r1, r2 = rows(one), rows(two)
    assert [r["epoch"] for r in r2] == [1, 2, 3]
    metrics_diff = compare(r1, r2)
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s2["world_size"] == 2 and s1["world_size"] == 1
    for key in ("nfe_sample", "nfe_train_fwd", "nfe_train_bwd", "proxy_decodes", "final_decodes", "final_rewards"):
        assert s1["compute"][key] == s2["compute"][key], key  # rows add up over ranks
    assert s2["optimizer_steps"] == s1["optimizer_steps"] == 3
    compare(s1["eval_reward_after"], s2["eval_reward_after"])
    # the first update's gradient: Adam's first moment after one step is 0.1 * gradient
    m1, m2 = (torch.cat([st["exp_avg"].flatten() for _, st in sorted(ckpt.load_checkpoint(
        ckpt.checkpoint_path(d, 1))["optimizer"]["state"].items())]) for d in (one, two))
    grad_diff = float((m1 - m2).norm() / m1.norm())
    a, b = load_file(one / "lora.safetensors"), load_file(two / "lora.safetensors")
    init = Trainer.build(make_cfg(one / "init"), log=lambda s: None).adapter.comfy_state_dict()
    lora_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float((a[k] - init[k]).abs().max()) for k in a)
    print(f"max |metric diff| {metrics_diff:.3g}, first gradient relative diff {grad_diff:.3g}, "
          f"max |LoRA diff| {lora_diff:.3g}, LoRA moved {moved:.3g}")
    assert grad_diff < 1e-4
    assert lora_diff < 5e-4 and moved > 10 * lora_diff


def test_a_two_process_checkpoint_resumes_on_one_process(runs, tmp_path):
    _, two, _ = runs
    run = tmp_path / "run"
    shutil.copytree(two, run)
    for epoch, path in ckpt.list_checkpoints(run):
        if epoch > 1:
            path.unlink()
    assert ckpt.load_latest(run)[1]["world_size"] == 2
    Trainer.build(make_cfg(run), log=lambda s: None).run(progress=False, resume=True)
    compare(rows(two), rows(run))
    a, b = load_file(two / "lora.safetensors"), load_file(run / "lora.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 5e-4


def test_ctrl_c_under_torchrun_saves_a_checkpoint(tmp_path):
    """SIGINT to torchrun: it signals the workers, rank 0 saves the last completed epoch."""
    run = tmp_path / "run"
    settings = {k: dict(v) for k, v in SETTINGS.items()}
    settings["run"].update(epochs=50, checkpoint_every=0, eval_every=0)  # the only checkpoint: the interrupt's
    flags = [x for sec, kv in settings.items() for k, v in kv.items() for x in (f"--{sec}.{k}", str(v))]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "progrpo_core", "train", "--out", str(run), "--no-progress", *flags]
    p = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    try:
        while not (run / "metrics.jsonl").exists() or len(rows(run)) < 2:
            assert p.poll() is None, p.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no training after 300 s"
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    [(epoch, path)] = ckpt.list_checkpoints(run)
    assert f"stopped: saved {path} (epoch {epoch})" in out
    assert ckpt.load_checkpoint(path)["metrics"].count("\n") == epoch >= 2
    assert not (run / "summary.json").exists()


def test_the_global_batch_must_split_evenly(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match=r"grpo.prompts_per_epoch=4 is the global batch and must be divisible by "
                                         r"the 3 processes \(WORLD_SIZE\); use 3 or 6 prompts, or 1, 2, 4 processes"):
        Trainer.build(make_cfg(tmp_path), log=lambda s: None)


@pytest.mark.parametrize("env,match", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE='2' is set but RANK is not"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK='x' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2, WORLD_SIZE=2, LOCAL_RANK=0 are inconsistent"),
])
def test_a_broken_torchrun_environment_is_named(env, match):
    with pytest.raises(distributed.DistributedSetupError, match=match):
        distributed.env_world(env)


def test_without_torchrun_there_is_one_process():
    assert distributed.env_world({}) == (0, 1, 0)
    w = distributed.World()
    t = torch.arange(6.0)
    assert not w.enabled and w.is_main and w.shard(7) == (0, 7) and w.gather_rows(t) is t
    assert w.sum([1.5, 2.0]) == [1.5, 2.0] and w.sync_grads([], 1.0) == 1.0


@pytest.mark.parametrize("n,world", [(8, 2), (7, 3), (2, 4), (10, 4)])
def test_shards_cover_the_items_once_in_order(n, world):
    parts = [distributed.World(rank=r, world_size=world).shard(n) for r in range(world)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1
