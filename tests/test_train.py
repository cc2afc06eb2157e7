import json
import subprocess
import sys
from pathlib import Path

import torch

from progrpo_core import config as C
from progrpo_core.training import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, **sections):
    table = {"run": {"out": str(tmp_path / "run"), "eval_seeds": 4, "eval_every": 0, "save_every": 0},
             "grpo": {"method": "pro-grpo"}}
    for k, v in sections.items():
        table.setdefault(k, {}).update(v)
    return C.build_config(table)


def test_short_training_raises_the_reward(tmp_path):
    cfg = _cfg(tmp_path, run={"epochs": 30, "seed": 0}, grpo={"lr": 1e-2})
    summary = Trainer.build(cfg, log=lambda s: None).run(progress=False)
    assert summary["eval_reward_after"] > summary["eval_reward_before"] + 0.2, summary
    assert summary["optimizer_steps"] == 60


def test_same_seed_same_lora_different_seed_different(tmp_path):
    def lora(seed, name):
        cfg = _cfg(tmp_path / name, run={"epochs": 2, "seed": seed},
                   schedule={"group_size": 8, "keep": "6,4"}, grpo={"prompts_per_epoch": 3})
        t = Trainer.build(cfg, log=lambda s: None)
        t.run(progress=False)
        return {n: p.detach().clone() for n, p in t.adapter.named_parameters()}, t

    a, ta = lora(0, "a")
    b, tb = lora(0, "b")
    c, _ = lora(1, "c")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    ra = [json.loads(line) for line in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(line) for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["proxy"] for r in ra] == [r["proxy"] for r in rb]  # same pruning decisions


def test_ovf_method_trains_the_selected_subset(tmp_path):
    cfg = _cfg(tmp_path, run={"epochs": 1}, grpo={"method": "ovf", "prompts_per_epoch": 2},
               schedule={"group_size": 8, "final_keep": 4})
    t = Trainer.build(cfg, log=lambda s: None)
    res = t.sample_epoch(0)
    assert res.rollout.latents.shape[0] == 2 * 4
    assert res.advantages.shape == (8,)
    assert res.rollout.compute.final_rewards == 2 * 8  # every finished trajectory was scored
    # progress shows the whole group's mean, not the selected tails' (which sits mid-way by design)
    assert res.stats.group_mean() == (res.stats.reward_finished_mean, "finished")
    assert res.stats.reward_finished_mean != res.stats.reward_mean


def test_progress_shows_the_group_mean_where_pruning_stopped_rows_early():
    from progrpo_core.training.records import EpochRecord, SampleStats, UpdateStats

    stats = SampleStats(reward_mean=0.5, reward_std=0.5, components={}, prompts=["3"], reward_finished_mean=0.5,
                        proxy=[{"step": 5, "sigma": 0.5, "mean": 0.8, "std": 0.4, "kept": []},
                               {"step": 7, "sigma": 0.3, "mean": 0.6, "std": 0.5, "kept": []}])
    assert stats.group_mean() == (0.8, "proxy at step 5")
    record = EpochRecord(epoch=3, optimizer_step=6, sample=stats, update=UpdateStats(loss=0.01))
    assert record.text(30).splitlines() == ["epoch 3/30: reward 0.8000 (group mean, proxy at step 5)",
                                            "trained: spread ± 0.5000, loss 0.01; 6 optimizer steps"]
    row = record.to_row()
    assert row["reward_group_mean"] == 0.8 and row["reward_group_of"] == "proxy at step 5"
    assert EpochRecord.from_row(row).group_reward == 0.8
    poisoned = SampleStats(reward_mean=0.3, reward_std=None, components={}, prompts=["3"], nonfinite=2)
    assert poisoned.group_mean() == (0.3, "finite rewards")


def test_cli_train_writes_the_run_folder(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "progrpo_core", "train", "--out", str(out), "--method", "pro-grpo", "--steps", "4",
           "--no-progress",
           "--run.eval_seeds", "2", "--schedule.group_size", "8", "--schedule.keep", "6,4",
           "--reward.gold", "stroke"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    for f in ("lora.safetensors", "metrics.jsonl", "summary.json", "reward_curve.png", "samples_before.png",
              "samples_after.png", "config.toml"):
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    for key in ("eval_reward_before", "eval_reward_after", "method", "nfe_total", "wall_s",
                "eval_gold_before", "eval_gold_after"):
        assert key in s
    assert s["optimizer_steps"] == 4 and s["method"] == "pro-grpo"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("reward_mean", "reward_std", "proxy", "clustered_trained", "nfe", "decodes", "wall_s", "loss",
                "kl", "clip_frac"):
        assert key in rows[-1], key
    assert rows[-1]["reward_group_mean"] == rows[-1]["proxy"][0]["mean"]
    assert rows[-1]["reward_group_of"] == f"proxy at step {rows[-1]['proxy'][0]['step']}"
    for cmd2 in (["sample", "--lora", str(out / "lora.safetensors"), "--seeds", "2", "--out", str(tmp_path / "g.png")],
                 ["eval", "--lora", str(out / "lora.safetensors"), "--seeds", "1"]):
        p = subprocess.run([sys.executable, "-m", "progrpo_core", *cmd2], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr
    assert (tmp_path / "g.png").is_file()
    assert "reward_digit" in json.loads(p.stdout.strip().splitlines()[-1])


def test_cli_bad_value_is_a_clear_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "progrpo_core", "train", "--out", str(tmp_path), "--method", "dpo"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "grpo.method='dpo' unknown" in p.stderr and "Traceback" not in p.stderr


def test_shipped_weights_record_their_recipe_and_pretraining_is_deterministic():
    from safetensors.torch import load_file

    from progrpo_core.embedded import MODELS, WEIGHTS_DIR, read_header, state_fingerprint
    from progrpo_core.embedded.pretrain import GeneratorRecipe, train_generator

    for name, file in MODELS.items():
        h = read_header(WEIGHTS_DIR / file)
        assert json.loads(h["recipe"])["family"] == h["family"]
        assert h["fingerprint"] == state_fingerprint(load_file(str(WEIGHTS_DIR / file)))
    a, _ = train_generator(GeneratorRecipe(family="eps", iters=15, batch=32))
    b, _ = train_generator(GeneratorRecipe(family="eps", iters=15, batch=32))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_kl_to_reference_policy_is_measured_after_the_first_update(tmp_path):
    cfg = _cfg(tmp_path, run={"epochs": 2}, grpo={"kl_beta": 0.05, "prompts_per_epoch": 2, "lr": 1e-2},
               schedule={"group_size": 6, "keep": "4,3"})
    t = Trainer.build(cfg, log=lambda s: None)
    first = t.train_on(t.sample_epoch(0), 0)
    second = t.train_on(t.sample_epoch(1), 1)
    assert first.kl >= 0 and second.kl > 0
    assert t.compute.nfe_train_fwd == 2 * t.compute.nfe_train_bwd  # the reference forward is counted


def test_training_on_a_weighted_spec_logs_every_component(tmp_path):
    cfg = _cfg(tmp_path, run={"epochs": 1}, reward={"name": "digit*0.7,stroke*0.3"},
               grpo={"prompts_per_epoch": 2, "separate_reward_norm": True}, schedule={"group_size": 6, "keep": "4,3"})
    t = Trainer.build(cfg, log=lambda s: None)
    res = t.sample_epoch(0)
    assert set(res.stats.components) == {"digit", "stroke", "total"}
    assert res.advantages.shape == (6,) and torch.isfinite(res.advantages).all()
