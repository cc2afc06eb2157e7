"""Checkpoints and exact resume: a run that is killed (from outside, or while writing a
checkpoint) or interrupted (Ctrl-C, ComfyUI's interrupt) and then resumed ends with the same
LoRA, optimizer state and metrics rows, bit for bit, as a run that was never stopped."""
import json
import multiprocessing
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
from progrpo_core import config as C
from progrpo_core import io
from progrpo_core.cli import main
from progrpo_core.rewards import Reward, build_reward
from progrpo_core.training import Trainer
from progrpo_core.training.run_folder import RunFolder

from helpers import config_with, metrics_rows

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5
# Tiny: 4 prompts x 8 trajectories pruned to 4, two optimizer steps per epoch (16 rows, minibatch 8).
SETTINGS = {"grpo": {"method": "pro-grpo", "prompts_per_epoch": 4, "train_batch_size": 8},
            "schedule": {"group_size": 8, "keep": "6,4"},
            "run": {"epochs": EPOCHS, "eval_seeds": 1, "eval_every": 2, "save_every": 0, "checkpoint_every": 1,
                    "keep_checkpoints": 2, "seed": 3}}
WALL = ("wall_s", "epoch_wall_s")


def flags(settings=SETTINGS):
    return [x for sec, kv in settings.items() for k, v in kv.items() for x in (f"--{sec}.{k}", str(v))]


def make_cfg(out, **run):
    return config_with(SETTINGS, out, **run)


rows = metrics_rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    Trainer.build(make_cfg(run), log=lambda s: None).run(progress=False)
    return run


def assert_same_training(run: Path, ref: Path) -> None:
    a, b = load_file(run / "lora.safetensors"), load_file(ref / "lora.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the LoRA files differ"
    _, sa = ckpt.load_latest(run)
    _, sb = ckpt.load_latest(ref)
    assert sa["epoch"] == sb["epoch"] == EPOCHS
    assert all(torch.equal(sa["lora"][k], sb["lora"][k]) for k in sb["lora"])
    assert all(torch.equal(x, y) for x, y in zip(sa["ema"], sb["ema"]))
    for i, st in sb["optimizer"]["state"].items():
        assert all(torch.equal(st[k], sa["optimizer"]["state"][i][k]) for k in st), f"Adam state {i} differs"
    ra, rb = rows(run), rows(ref)
    assert [r["epoch"] for r in ra] == list(range(1, EPOCHS + 1)), "metrics rows lost or duplicated"
    assert [{k: v for k, v in r.items() if k not in WALL} for r in ra] == \
           [{k: v for k, v in r.items() if k not in WALL} for r in rb]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (run, ref))
    assert {k: v for k, v in sa["compute"].items() if k != "wall"} == \
           {k: v for k, v in sb["compute"].items() if k != "wall"}
    assert sa["optimizer_steps"] == sb["optimizer_steps"] == 2 * EPOCHS


def test_sigkill_mid_training_then_resume_is_bit_exact(tmp_path, reference):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "progrpo_core", "train", "--out", str(run), "--no-progress", *flags()]
    p = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while not ckpt.checkpoint_path(run, 2).exists():
            assert p.poll() is None, f"the run ended before it was killed:\n{p.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists()  # it really died mid-run
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_training(run, reference)


def _die_while_writing_epoch_3(out: str) -> None:
    """Runs in a forked child: the third checkpoint's write is cut in half by SIGKILL."""
    real = ckpt.save_torch

    def dying(obj, path):
        if obj["epoch"] != 3:
            return real(obj, path)

        def half_then_die(tmp):
            torch.save(obj, tmp)
            data = Path(tmp).read_bytes()
            Path(tmp).write_bytes(data[:len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

        return io._atomic(path, half_then_die)

    ckpt.save_torch = dying
    Trainer.build(make_cfg(out), log=lambda s: None).run(progress=False)


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, reference):
    run = tmp_path / "run"
    child = multiprocessing.get_context("fork").Process(target=_die_while_writing_epoch_3, args=(str(run),))
    child.start()
    child.join(300)
    assert child.exitcode == -signal.SIGKILL
    d = ckpt.checkpoint_dir(run)
    stray = [p for p in d.iterdir() if p.name.startswith(".epoch-000003.pt.")]
    assert len(stray) == 1 and stray[0].stat().st_size > 0  # the torn write, beside the good files
    assert [e for e, _ in ckpt.list_checkpoints(run)] == [1, 2]
    path, state = ckpt.load_latest(run)
    assert state["epoch"] == 2
    assert len(rows(run)) == 3  # epoch 3's row was written before its checkpoint: the resume drops it
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert not stray[0].exists()
    assert_same_training(run, reference)


class InterruptProcessingException(BaseException):
    """Stands in for ComfyUI's interrupt: a BaseException raised from inside the loop."""


class InterruptingReward(Reward):
    """The digit reward, but raising ``exc`` on the first call where ``when()`` holds."""

    def __init__(self, when, exc):
        self.inner = build_reward("digit")
        self.name = self.inner.name
        self.when, self.exc = when, exc

    def score(self, images, prompts):
        return self.inner.score(images, prompts)

    def evaluate(self, images, prompts):
        if self.when():
            raise self.exc
        return self.inner.evaluate(images, prompts)


@pytest.mark.parametrize("where", ["reward-during-sampling", "ctrl-c-after-an-update",
                                   "ctrl-c-right-after-a-metrics-row"])
def test_interrupt_saves_a_checkpoint_and_resume_is_exact(tmp_path, reference, where, monkeypatch):
    run = tmp_path / "run"
    cfg = make_cfg(run, checkpoint_every=0)  # the only checkpoint is the one the interrupt writes
    holder = {}
    if where == "reward-during-sampling":
        reward = InterruptingReward(lambda: "t" in holder and holder["t"].epoch == 3, InterruptProcessingException())
        t = holder["t"] = Trainer.build(cfg, reward=reward, log=lambda s: None)
        expected = InterruptProcessingException
    elif where == "ctrl-c-right-after-a-metrics-row":  # metrics.jsonl shows epoch 2: epoch 2 is saved
        t = Trainer.build(cfg, log=lambda s: None)
        append = RunFolder.append_metrics

        def append_then_stop(folder, row):
            append(folder, row)
            if row["epoch"] == 2:
                raise KeyboardInterrupt

        monkeypatch.setattr(RunFolder, "append_metrics", append_then_stop)
        expected = KeyboardInterrupt
    else:
        t = Trainer.build(cfg, log=lambda s: None)
        real_step, calls = t.optimizer.step, []

        def step(*a, **k):
            calls.append(t.epoch)
            if calls.count(3) == 2:  # epoch 3's first update is done: the live state is mid-epoch
                raise KeyboardInterrupt
            return real_step(*a, **k)

        t.optimizer.step = step
        expected = KeyboardInterrupt
    with pytest.raises(expected):
        t.run(progress=False)
    assert [e for e, _ in ckpt.list_checkpoints(run)] == [2]  # the last completed epoch
    assert [r["epoch"] for r in rows(run)] == [1, 2]
    Trainer.build(make_cfg(run), log=lambda s: None).run(progress=False, resume=True)
    assert_same_training(run, reference)


def test_resume_may_extend_the_run_but_not_change_the_training(tmp_path, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert main(["train", "--resume", str(run), "--no-progress", "--grpo.lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "grpo.lr: 0.005 in the checkpoint, 0.1 now" in err and "--lora.init_from" in err
    assert main(["train", "--resume", str(run), "--no-progress", "--run.epochs", str(EPOCHS + 1)]) == 0
    r = rows(run)
    assert [x["epoch"] for x in r] == list(range(1, EPOCHS + 2))
    assert r[-1]["optimizer_step"] == 2 * (EPOCHS + 1)
    assert [e for e, _ in ckpt.list_checkpoints(run)] == [EPOCHS, EPOCHS + 1]  # keep_checkpoints = 2


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "no config.toml there" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(C.to_toml(make_cfg(run)))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
