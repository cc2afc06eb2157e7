"""Faults and bad input: non-finite rewards, losses and weights; a full or unwritable run
folder; checkpoints that are damaged or would unpickle code."""
import collections
import errno
import json
import os

import pytest
import torch
from safetensors import safe_open

from progrpo_core import checkpoint as ckpt
from progrpo_core import config as C
from progrpo_core.cli import main
from progrpo_core.rewards import Reward, build_reward
from progrpo_core.training import Trainer, TrainingStopped

B, G, K = 4, 8, 4  # prompts per epoch, group size, survivors


def make_cfg(out, **run):
    table = {"grpo": {"method": "pro-grpo", "prompts_per_epoch": B,
                      "train_batch_size": 8}, "schedule": {"group_size": G, "keep": "6,4"},
             "run": {"out": str(out), "epochs": 3, "eval_seeds": 1, "eval_every": 0, "save_every": 0,
                     "checkpoint_every": 0, **run}}
    return C.build_config(table)


def strict_rows(run):
    """metrics.jsonl rows, refusing the non-standard NaN/Infinity tokens."""
    def refuse(token):
        raise AssertionError(f"metrics.jsonl holds {token}, which is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in (run / "metrics.jsonl").read_text().splitlines()]


class NaNReward(Reward):
    """The digit reward with one NaN score in every call where ``bad(n_images)`` holds."""

    def __init__(self, bad):
        self.inner = build_reward("digit")
        self.name = self.inner.name
        self.bad = bad

    def score(self, images, prompts):
        return self.inner.score(images, prompts)

    def evaluate(self, images, prompts):
        out = self.inner.evaluate(images, prompts)
        if self.bad(images.shape[0]):
            out = {k: v.clone() for k, v in out.items()}
            out[self.name][1] = float("nan")
        return out


@pytest.mark.parametrize("where,rows", [("final", B * K), ("proxy", B * G)])
def test_a_nan_reward_skips_that_epochs_update_and_is_counted(tmp_path, where, rows):
    holder = {}
    reward = NaNReward(lambda n: "t" in holder and holder["t"].epoch == 2 and n == rows)
    t = holder["t"] = Trainer.build(make_cfg(tmp_path / "run"), reward=reward, log=lambda s: None)
    with pytest.warns(RuntimeWarning, match="epoch 2: 1 reward.s. are NaN or infinite; update skipped"):
        summary = t.run(progress=False)
    r = strict_rows(tmp_path / "run")
    assert [x["nonfinite_rewards"] for x in r] == [0, 1, 0]
    assert [x["optimizer_step"] for x in r] == [2, 2, 4]  # two updates per epoch, none in epoch 2
    assert [x["skipped_updates"] for x in r] == [0, 1, 1]
    assert [x["bad_updates_in_row"] for x in r] == [0, 1, 0]
    assert r[1]["loss"] is None and r[1]["reward_mean"] is not None  # mean of the finite rewards
    assert summary["skipped_updates"] == 1


def test_a_non_finite_loss_skips_the_update_and_is_counted(tmp_path, monkeypatch):
    from progrpo_core.training import update as T

    t = Trainer.build(make_cfg(tmp_path / "run"), log=lambda s: None)
    real = T.grpo.clipped_loss

    def loss(*a, **k):
        out, stats = real(*a, **k)
        return (out * float("nan"), stats) if t.epoch == 2 else (out, stats)

    monkeypatch.setattr(T.grpo, "clipped_loss", loss)
    with pytest.warns(RuntimeWarning, match="the loss or gradient is NaN or infinite; update skipped"):
        t.run(progress=False)
    r = strict_rows(tmp_path / "run")
    assert [x["optimizer_step"] for x in r] == [2, 2, 4]
    assert [x["skipped_updates"] for x in r] == [0, 2, 2]
    assert all(torch.isfinite(p).all() for p in t.adapter.parameters())


def test_bad_updates_in_a_row_stop_the_run_with_a_clear_message(tmp_path):
    run = tmp_path / "run"
    holder = {}
    reward = NaNReward(lambda n: "t" in holder and holder["t"].epoch >= 3 and n == B * K)
    t = holder["t"] = Trainer.build(make_cfg(run, epochs=8, checkpoint_every=1, max_bad_updates=2, keep_checkpoints=5),
                              reward=reward, log=lambda s: None)
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingStopped) as e:
        t.run(progress=False)
    msg = str(e.value)
    assert "stopped at epoch 4: 2 updates in a row were skipped" in msg
    assert "run.max_bad_updates=2" in msg and f"train --resume {run}" in msg
    # epoch 3 skipped its update but its state is sound: checkpointed; epoch 4 stopped the run
    assert [e for e, _ in ckpt.list_checkpoints(run)] == [1, 2, 3]
    assert [x["epoch"] for x in strict_rows(run)] == [1, 2, 3]


@pytest.mark.filterwarnings("ignore:epoch 3. the loss or gradient is NaN")  # the inf LoRA's next step
def test_a_non_finite_lora_is_never_written_over_good_files(tmp_path):
    run = tmp_path / "run"
    t = Trainer.build(make_cfg(run, epochs=4, checkpoint_every=1, save_every=1), log=lambda s: None)
    real_step = t.optimizer.step

    def poisoning_step(*a, **k):
        out = real_step(*a, **k)
        if t.epoch == 3:
            with torch.no_grad():
                t.adapter.parameters()[0].view(-1)[0] = float("inf")
        return out

    t.optimizer.step = poisoning_step
    with pytest.raises(TrainingStopped, match="LoRA weights.* hold NaN or infinite values at epoch 3; stopping"):
        t.run(progress=False)
    lora = run / "lora.safetensors"
    with safe_open(str(lora), "pt") as f:
        assert f.metadata()["progrpo.epochs"] == "2"
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys())
    assert [e for e, _ in ckpt.list_checkpoints(run)] == [1, 2]
    assert [x["epoch"] for x in strict_rows(run)] == [1, 2]
    before = lora.read_bytes()
    with pytest.raises(TrainingStopped):
        t.save_lora(lora)  # asked directly, it refuses too
    assert lora.read_bytes() == before


def test_a_full_disk_fails_before_training(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    t = Trainer.build(make_cfg(run), log=lambda s: None)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 80_000, 80_000))
    t.sample_epoch = lambda *a, **k: pytest.fail("training started on a full disk")
    with pytest.raises(ckpt.RunFolderError, match=r"not enough free space .*: 0\.1 MB free, the run will write about"):
        t.run(progress=False)
    assert not (run / "metrics.jsonl").exists()
    assert main(["train", "--out", str(run), "--no-progress", "--run.epochs", "1"]) == 2
    assert "error: not enough free space" in capsys.readouterr().err


def test_the_space_estimate_covers_what_a_run_writes(tmp_path):
    run = tmp_path / "run"
    t = Trainer.build(make_cfg(run, checkpoint_every=1, save_every=1, keep_checkpoints=2), log=lambda s: None)
    need, breakdown = t._space_needed()
    t.run(progress=False)
    written = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    assert written < need < 50 * written, (written, need, breakdown)


def test_an_unwritable_run_folder_fails_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    t = Trainer.build(make_cfg(blocker / "run"), log=lambda s: None)
    with pytest.raises(ckpt.RunFolderError, match="cannot create the run folder .*a-file/run"):
        t.run(progress=False)

    def read_only(fd):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    t = Trainer.build(make_cfg(tmp_path / "run"), log=lambda s: None)
    monkeypatch.setattr(ckpt.os, "fsync", read_only)
    with pytest.raises(ckpt.RunFolderError, match="is not writable \\(Read-only file system\\)"):
        t.run(progress=False)


class Payload:
    """A pickle that runs a shell command when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_checkpoint_is_refused_never_unpickled(tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    run.mkdir()
    (run / "config.toml").write_text(C.to_toml(make_cfg(run)))
    evil = ckpt.checkpoint_path(run, 5)
    evil.parent.mkdir()
    torch.save({"format": ckpt.FORMAT, "version": ckpt.VERSION, "epoch": 5, "lora": Payload(marker)}, evil)
    with pytest.raises(ckpt.UnsafeCheckpointError, match="refused to load .*epoch-000005.pt: it is a pickle that "
                                                         "needs Python objects besides tensors"):
        ckpt.load_checkpoint(evil)
    with pytest.warns(RuntimeWarning, match="skipping checkpoint epoch-000005.pt: refused to load"):
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and "weights_only=True" in err
    assert not marker.exists()


@pytest.mark.parametrize("bad", ["malicious", "truncated"])
def test_resume_skips_an_unusable_newest_checkpoint(tmp_path, bad):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    Trainer.build(make_cfg(run, epochs=1, checkpoint_every=1), log=lambda s: None).run(progress=False)
    newest = ckpt.checkpoint_path(run, 7)
    if bad == "malicious":
        torch.save({"format": ckpt.FORMAT, "version": ckpt.VERSION, "epoch": 7, "lora": Payload(marker)}, newest)
    else:
        data = ckpt.checkpoint_path(run, 1).read_bytes()
        newest.write_bytes(data[:len(data) // 3])
    with pytest.warns(RuntimeWarning, match="skipping checkpoint epoch-000007.pt"):
        Trainer.build(make_cfg(run, epochs=2, checkpoint_every=1), log=lambda s: None).run(progress=False, resume=True)
    assert [x["epoch"] for x in strict_rows(run)] == [1, 2]
    assert [e for e, _ in ckpt.list_checkpoints(run)] == [1, 2]  # the unusable file no longer counts ...
    assert (run / "checkpoints" / "epoch-000007.pt.unusable").exists()  # ... but is kept for inspection
    assert not marker.exists()


def test_a_checkpoint_holds_only_plain_data(tmp_path):
    run = tmp_path / "run"
    Trainer.build(make_cfg(run, epochs=1, checkpoint_every=1), log=lambda s: None).run(progress=False)
    state = torch.load(ckpt.checkpoint_path(run, 1), weights_only=True)

    def kinds(x):
        if isinstance(x, dict):
            return set().union(*(kinds(v) for v in x.values()), {type(k) for k in x})
        if isinstance(x, (list, tuple)):
            return set().union(set(), *(kinds(v) for v in x))
        return {type(x)}

    assert kinds(state) <= {dict, list, tuple, str, int, float, bool, type(None), torch.Tensor}
    assert {"lora", "optimizer", "ema", "rng", "epoch", "optimizer_steps", "compute", "metrics", "config"} <= set(state)
