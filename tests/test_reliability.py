"""Bad inputs and faults: every one gets a message that names the value, what was expected and
the fix — never a raw traceback, lost work or another run's files. One test per row of the table
in docs/RELIABILITY.md (the row's number is in the test's name)."""
from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch

from progrpo_core import checkpoint as ckpt
from progrpo_core import config as C
from progrpo_core.cli import main
from progrpo_core.training import RunFolder, Trainer, TrainingStopped

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--no-progress", "--method", "pro-grpo", "--run.eval_seeds", "1",
         "--grpo.prompts_per_epoch", "2", "--schedule.group_size", "6",
         "--schedule.keep", "4,3", "--grpo.train_batch_size", "6"]


def cli(capsys, *args) -> tuple[int, str]:
    code = main(["train", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def train_args(out, *extra):
    return ["--out", str(out), *SMALL, *extra]


# -- 1-3: a run folder holds one run ------------------------------------------------------------
def test_01_a_new_run_refuses_a_folder_holding_another_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, *train_args(run, "--run.epochs", "3", "--run.checkpoint_every", "1"))[0] == 0
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    code, err = cli(capsys, *train_args(run, "--run.epochs", "2", "--seed", "5"))
    assert code == 2 and "already holds a run (3 epoch(s) of metrics, checkpoints up to epoch 3)" in err
    assert "--resume" in err and "--overwrite" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # nothing of it was touched
    code, _ = cli(capsys, *train_args(run, "--run.epochs", "2", "--seed", "5", "--overwrite",
                                      "--run.checkpoint_every", "1"))
    assert code == 0
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["epoch-000001.pt", "epoch-000002.pt"]
    assert json.loads((run / "summary.json").read_text())["seed"] == 5


def test_02_a_second_process_on_the_same_folder_fails_at_once(tmp_path, capsys):
    run = tmp_path / "run"
    holder = RunFolder(run)
    holder.lock()  # another training process
    try:
        code, err = cli(capsys, *train_args(run, "--run.epochs", "1"))
    finally:
        holder.unlock()
    assert code == 2 and f"is in use by another training process (PID {os.getpid()})" in err
    assert not (run / "metrics.jsonl").exists()


def test_03_resume_refuses_another_runs_checkpoint(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(capsys, *train_args(a, "--run.epochs", "2", "--run.checkpoint_every", "1"))[0] == 0
    assert cli(capsys, *train_args(b, "--run.epochs", "1", "--run.checkpoint_every", "1"))[0] == 0
    (b / "checkpoints" / "epoch-000002.pt").write_bytes((a / "checkpoints" / "epoch-000002.pt").read_bytes())
    code, err = main(["train", "--resume", str(b), "--run.epochs", "3", "--no-progress"]), capsys.readouterr().err
    assert code == 2 and "belongs to another run" in err and "Traceback" not in err


def test_03b_the_default_folder_is_new_per_run_and_latest_points_at_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for seed in ("1", "2"):
        assert main(["train", *SMALL, "--run.epochs", "1", "--seed", seed]) == 0
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if not p.is_symlink())
    assert len(runs) == 2 and all(p.name.endswith("pro-grpo") or "pro-grpo-" in p.name for p in runs)
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and json.loads((latest / "summary.json").read_text())["seed"] == 2


# -- 4: files stay in their folders ---------------------------------------------------------------
HOSTILE = ["../secret.txt", "/etc/passwd", "~/.bashrc", "a/../../secret.txt", "..\\secret.txt", "C:\\secret.txt",
           "", "link/secret.txt"]


@pytest.mark.parametrize("name", HOSTILE)
def test_04_the_prompt_list_reads_only_inside_the_input_folder(tmp_path, monkeypatch, name):
    sys.path.insert(0, str(ROOT))
    from nodes import NODE_CLASS_MAPPINGS, host

    inputs, outside = tmp_path / "input", tmp_path / "elsewhere"
    inputs.mkdir()
    outside.mkdir()
    (tmp_path / "secret.txt").write_text("the secret\n")
    (outside / "secret.txt").write_text("the secret\n")
    (inputs / "link").symlink_to(outside)  # a symlink pointing out of the folder
    (inputs / "mine.txt").write_text("a cat\n")
    monkeypatch.setattr(host, "input_dir", lambda: inputs)
    node = NODE_CLASS_MAPPINGS["ProGRPOPromptList"]()
    if not name:
        assert node.build("a dog", name) == (["a dog"], 1)
        return
    with pytest.raises(ValueError) as e:
        node.build("a dog", name)
    msg = str(e.value)
    assert "input folder" in msg and "the secret" not in msg and str(tmp_path) not in msg
    assert node.build("a dog", "mine.txt") == (["a dog", "a cat"], 2)


# -- 5-6: divergence -------------------------------------------------------------------------------
def test_05_nan_images_skip_the_update_instead_of_stopping(tmp_path):
    t = Trainer.build(C.build_config({"run": {"out": str(tmp_path), "epochs": 3, "eval_seeds": 1},
                                "grpo": {"method": "pro-grpo", "prompts_per_epoch": 2},
                                "schedule": {"group_size": 6, "keep": "4,3"}}),
                log=lambda s: None)
    decode = t.model.decode

    def poisoned(x0):
        images = decode(x0)
        return images * float("nan") if t.epoch == 2 else images

    t.model.decode = poisoned
    with pytest.warns(RuntimeWarning, match="epoch 2: .* NaN or infinite; update skipped"):
        records = list(t.epochs())
    assert [r.skipped_updates for r in records] == [0, 1, 1] and records[1].sample.nonfinite > 0


def test_06_a_divergent_learning_rate_stops_without_saving_a_ruined_lora(tmp_path, capsys):
    run = tmp_path / "run"
    code, err = cli(capsys, *train_args(run, "--run.epochs", "4", "--grpo.lr", "1e30"))
    assert code == 2 and "grpo.lr=1e+30: Adam moves every LoRA weight by about the learning rate" in err
    assert not run.exists()  # refused before anything was written
    # a rate that diverges inside the loop (set past the config's check) stops it there
    t = Trainer.build(C.build_config({"run": {"out": str(run), "epochs": 4, "checkpoint_every": 1, "eval_seeds": 1},
                                      "grpo": {"method": "pro-grpo", "prompts_per_epoch": 2, "train_batch_size": 6},
                                      "schedule": {"group_size": 6, "keep": "4,3"}}), log=lambda s: None)
    for group in t.optimizer.param_groups:
        group["lr"] = 1e30
    with pytest.raises(TrainingStopped) as e:
        t.run(progress=False)
    assert "grpo.lr" in str(e.value) and ("norm jumped" in str(e.value) or "NaN" in str(e.value))
    assert not (run / "lora.safetensors").exists()
    for _, path in ckpt.list_checkpoints(run):  # whatever was saved is sane
        state = ckpt.load_checkpoint(path)
        assert all(float(v.abs().max()) < 1e3 for v in state["lora"].values())


# -- 7: inputs that used to end in a traceback ----------------------------------------------------
@pytest.mark.parametrize("toml,message", [
    ("lr = 0.01\n", "lr = 0.01 is not a section; a setting must be inside its section: write [grpo]"),
    ("grpo = 5\n", "grpo = 5 is not a section"),
    (b"\x00\xff\xfe binary", "is not a TOML text file"),
])
def test_07_config_files_that_are_not_sections(tmp_path, capsys, toml, message):
    f = tmp_path / "c.toml"
    f.write_bytes(toml if isinstance(toml, bytes) else toml.encode())
    code, err = cli(capsys, "--config", str(f), "--out", str(tmp_path / "r"))
    assert code == 2 and message in err


@pytest.mark.parametrize("args,message", [
    (["--run.device", "cuda:7"], "this machine has: cpu"),
    (["--run.device", "banana"], "run.device='banana' is not a device"),
    (["--reward.device", "banana"], "reward.device='banana' is not a device"),
    (["--method", "grpo", "--grpo.method", "ovf"], "--method grpo and --grpo.method ovf say different things"),
    (["--seed", "1", "--run.seed", "2"], "--seed 1 and --run.seed 2 say different things"),
    (["--sampler.noise_level", "0"], "every sampling step is deterministic"),
    # the budget is given: with the machine's free memory the answer would depend on the machine
    (["--method", "pro-grpo", "--schedule.group_size", "1000000", "--schedule.keep", "24,12",
      "--run.memory_gib", "1"], "does not fit in memory"),
    (["--reward", "plugin_rewards:not_a_reward"], "returned a dict, expected a progrpo_core.rewards.Reward"),
    (["--reward", "plugin_rewards:wrong_count"], "returned 2 scores for 1 images; score(images, prompts) must"),
    (["--reward", "plugin_rewards:raising"], "reward plug-in 'plugin_rewards:raising' raised KeyError"),
])
def test_07_bad_settings_get_a_message(tmp_path, capsys, args, message):
    if args[:2] == ["--run.device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    code, err = cli(capsys, "--out", str(tmp_path / "r"), "--run.epochs", "1", "--no-progress", *args)
    assert code == 2 and message in err, err


def test_07_wrong_weight_files_are_named(tmp_path, capsys):
    from progrpo_core.embedded import CLASSIFIER_FILE, WEIGHTS_DIR

    pkl = tmp_path / "weights.pt"
    with pkl.open("wb") as f:
        pickle.dump({"a": 1}, f)
    code, err = cli(capsys, "--out", str(tmp_path / "r"), "--model.path", str(pkl))
    assert code == 2 and f"model.path {pkl} is not a safetensors file" in err
    code, err = cli(capsys, "--out", str(tmp_path / "r"), "--model.path", str(WEIGHTS_DIR / CLASSIFIER_FILE))
    assert code == 2 and "holds other weights than this network's" in err
    code, err = cli(capsys, "--out", str(tmp_path / "r"), "--reward.path", str(pkl))
    assert code == 2 and "the digit reward's classifier" in err and "is not a safetensors file" in err


def test_07_prompt_files_and_seed_counts(tmp_path, capsys):
    f = tmp_path / "p.txt"
    f.write_bytes(b"\xff\xfe\x00binary")
    code, err = cli(capsys, "--out", str(tmp_path / "r"), "--run.prompts", str(f))
    assert code == 2 and f"prompt file {f} is not UTF-8 text" in err
    for cmd in (["sample", "--seeds", "0"], ["eval", "--seeds", "0"]):
        with pytest.raises(SystemExit):
            main(cmd)
        assert "must be 1 or more" in capsys.readouterr().err


def test_07_a_full_disk_mid_run_says_so_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    import errno

    run = tmp_path / "run"
    real = RunFolder.append_metrics

    def full(self, row):
        if row["epoch"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, row)

    monkeypatch.setattr(RunFolder, "append_metrics", full)
    code, err = cli(capsys, *train_args(run, "--run.epochs", "3", "--run.checkpoint_every", "1"))
    assert code == 2 and "is full (No space left on device)" in err and f"train --resume {run}" in err
    monkeypatch.setattr(RunFolder, "append_metrics", real)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


# -- 8: surprises that now get a word ----------------------------------------------------------------
def test_08_a_constant_reward_warns_that_nothing_is_learnt(tmp_path):
    t = Trainer.build(C.build_config({"run": {"out": str(tmp_path), "epochs": 2, "eval_seeds": 1},
                                "reward": {"name": "plugin_rewards:constant"},
                                "grpo": {"method": "pro-grpo", "prompts_per_epoch": 2},
                                "schedule": {"group_size": 6, "keep": "4,3"}}), log=lambda s: None)
    with pytest.warns(RuntimeWarning, match="every advantage is 0 and the epoch teaches nothing"):
        list(t.epochs())


def test_08_a_saturated_reward_is_told_apart_from_a_dead_one():
    """Groups that had spread and lost it (the policy gets the top reward everywhere) are not a
    reward that ignores the images: the warning says which."""
    import types
    import warnings as w

    from progrpo_core.training.guards import CLI_WORDS, Guards

    def batch(adv):
        return types.SimpleNamespace(nonfinite=0, advantages=torch.tensor(adv))

    dead = Guards(1e-3, CLI_WORDS, "digit")
    with pytest.warns(RuntimeWarning, match="check that the reward \\(digit\\) responds"):
        dead.flat(batch([0.0, 0.0]), 0)
    saturated = Guards(1e-3, CLI_WORDS, "digit")
    with w.catch_warnings():
        w.simplefilter("error")
        saturated.flat(batch([0.5, -0.5]), 0)  # spread: silent
    with pytest.warns(RuntimeWarning, match="has most likely saturated the reward \\(digit\\)") as got:
        saturated.flat(batch([0.0, 0.0]), 1)
    assert "responds" not in str(got[0].message)
    with w.catch_warnings():
        w.simplefilter("error")
        saturated.flat(batch([0.0, 0.0]), 2)  # once


def test_08_the_disk_estimate_follows_the_step_cap(tmp_path):
    cfg = {"run": {"out": str(tmp_path), "epochs": 100_000}}
    full = Trainer.build(C.build_config(cfg), log=lambda s: None)._space_needed()[0]
    cfg["run"]["max_steps"] = 4
    capped = Trainer.build(C.build_config(cfg), log=lambda s: None)._space_needed()[0]
    assert capped < full / 100


def test_08_a_stopped_runs_lora_is_the_last_completed_epochs(tmp_path):
    from progrpo_core.lora_format import decode_header, read_lora_file

    t = Trainer.build(C.build_config({"run": {"out": str(tmp_path), "epochs": 4, "eval_seeds": 1, "checkpoint_every": 0},
                                "grpo": {"method": "pro-grpo", "prompts_per_epoch": 2},
                                "schedule": {"group_size": 6, "keep": "4,3"}}),
                log=lambda s: None)
    t.open(RunFolder(tmp_path))
    loop = t.epochs(RunFolder(tmp_path))
    next(loop)
    next(loop)
    two = {n: p.detach().clone() for n, p in t.adapter.named_parameters()}
    with t.ema.applied():
        expected = t.adapter.comfy_state_dict()  # what epoch 2 left: its EMA weights
    t.state.epoch = 3  # in the middle of epoch 3 …
    with torch.no_grad():
        for p in t.adapter.parameters():
            p.add_(1.0)  # … with a half-done update
    kept = t.save_boundary_lora(tmp_path / "lora.safetensors")
    assert kept["epoch"] == 2
    tensors, meta = read_lora_file(kept["path"])
    assert decode_header(meta)["epochs"] == 2
    assert tensors.keys() == expected.keys() and all(torch.equal(tensors[k], expected[k]) for k in expected)
    assert all(torch.equal(p, two[n] + 1.0) for n, p in t.adapter.named_parameters())  # the live state is untouched


def test_08_a_lora_from_another_model_gives_advice_the_cli_can_follow(tmp_path, capsys):
    from progrpo_core.embedded import load_digits_model
    from progrpo_core.lora import LoraAdapter

    eps = load_digits_model("digits-eps")
    LoraAdapter(eps, 4, 4.0).save(tmp_path / "eps.safetensors")
    code, err = cli(capsys, "--out", str(tmp_path / "r"), "--lora.init_from", str(tmp_path / "eps.safetensors"))
    assert code == 2 and "drop --lora.init_from" in err and "check_base" not in err


def test_reliability_table_lists_every_test():
    """docs/RELIABILITY.md names each of these tests."""
    doc = (ROOT / "docs" / "RELIABILITY.md").read_text()
    names = [n for n in globals() if n.startswith("test_0")]
    assert names and all(n in doc for n in names), [n for n in names if n not in doc]
