import pytest

from progrpo_core import config as C


def test_defaults_resolve_to_the_measured_best_method():
    cfg = C.build_config()
    assert cfg.grpo.method == "pro-mixgrpo" and cfg.grpo.lr is None  # lr auto: 2.5e-3 on the built-in models
    s = cfg.prune_schedule()
    assert (s.group_size, s.keep, s.sde_window, s.window_mode, s.prune_after_window) == (24, (12,), 2, "progressive", True)
    p = C.build_config({"grpo": {"method": "pro-grpo"}}).prune_schedule()
    assert (p.group_size, p.checkpoints, p.keep) == (48, (5, 7), (24, 12))  # the paper's schedule


@pytest.mark.parametrize("method,expect", [
    ("grpo", (24, (), (), None)),
    ("ovf", (24, (), (), 12)),
    ("pro-grpo-flash", (24, (5, 7), (16, 12), None)),
])
def test_method_presets(method, expect):
    s = C.build_config({"grpo": {"method": method}}).prune_schedule()
    assert (s.group_size, s.checkpoints, s.keep, s.final_keep) == expect


@pytest.mark.parametrize("method,expect", [
    ("pro-grpo", (48, (30, 40), (32, 8), None)),     # the paper's SD-v1.4 setting at T = 50
    ("grpo", (16, (), (), None)),                      # DanceGRPO's group
    ("ovf", (16, (), (), 8)),
    ("pro-grpo-flash", (24, (25, 35), (16, 12), None)),
])
def test_eps_model_presets_follow_the_papers_sd14_setting(method, expect):
    cfg = C.build_config({"grpo": {"method": method}, "sampler": {"steps": 50}})
    s = cfg.prune_schedule("eps")
    assert (s.group_size, s.checkpoints, s.keep, s.final_keep) == expect
    # what the user sets still wins
    cfg = C.build_config({"grpo": {"method": method}, "sampler": {"steps": 50}, "schedule": {"group_size": 64}})
    assert cfg.prune_schedule("eps").group_size == 64


def test_overrides_are_typed_from_strings():
    cfg = C.build_config({"sampler": {"steps": "12"}, "schedule": {"checkpoints": "6,9", "keep": "24,12"},
                          "grpo": {"method": "pro-grpo", "ema": "false", "lr": "1e-3"}})
    assert cfg.sampler.steps == 12 and cfg.schedule.checkpoints == (6, 9)
    assert cfg.grpo.ema is False and cfg.grpo.lr == 1e-3


@pytest.mark.parametrize("table,match", [
    ({"grpo": {"method": "pro-grpo"}, "schedule": {"group_size": 8, "keep": "10,4"}}, "K=10 exceeds the 8 trajectories"),
    ({"grpo": {"method": "pro-grpo"}, "schedule": {"keep": "24,24"}}, "does not shrink"),
    ({"grpo": {"method": "pro-grpo"}, "schedule": {"checkpoints": "5,10"}}, "checkpoint step 10 is outside 1..T-1 = 1..9"),
    ({"sampler": {"steps": 1}}, "sampler.steps=1: T must be an integer >= 2"),
    ({"grpo": {"method": "grpo"}, "schedule": {"group_size": 1}}, "G_max=1 is too small"),
    ({"grpo": {"method": "dpo"}}, "grpo.method='dpo' unknown; expected one of pro-grpo"),
    ({"reward": {"name": "beauty"}}, "reward.name='beauty' is not a known reward"),
    ({"grpo": {"lr": "nan"}}, "grpo.lr=nan must be a finite number > 0"),
    ({"sampler": {"steps": "ten"}}, "sampler.steps='ten' is not a valid int"),
    ({"sampler": {"sampler": "euler"}}, "sampler.sampler='euler' unknown"),
    ({"schedule": {"selector": "best"}}, "schedule.selector='best' unknown"),
    ({"lora": {"rank": 0}}, "lora.rank=0 must be an integer >= 1"),
    ({"model": {"name": "sdxl"}}, "model.name='sdxl' is not a built-in model"),
    ({"grpo": {"batch": 3}}, "unknown setting grpo.batch"),
    ({"optim": {"lr": 1}}, "unknown config section"),
    ({"grpo": {"method": "pro-grpo"}, "schedule": {"checkpoints": "3"}}, "give one survivor count per checkpoint"),
    ({"schedule": {"keep": "24,12"}}, "'pro-mixgrpo' prunes once, right after its SDE window"),
])
def test_bad_values_get_their_message(table, match):
    with pytest.raises(ValueError, match=match):
        C.build_config(table)


def test_toml_round_trip(tmp_path):
    cfg = C.build_config({"grpo": {"method": "ovf", "lr": 0.002}, "schedule": {"group_size": 16, "final_keep": 8}})
    (tmp_path / "c.toml").write_text(C.to_toml(cfg))
    again = C.build_config(C.load_toml(tmp_path / "c.toml"))
    assert again == cfg


def test_bad_toml_file(tmp_path):
    (tmp_path / "bad.toml").write_text("[grpo\nlr = ")
    with pytest.raises(ValueError, match="is not valid TOML"):
        C.load_toml(tmp_path / "bad.toml")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        C.load_toml(tmp_path / "missing.toml")


def test_every_field_has_help():
    for section, name, help_, _ in C.field_specs():
        assert help_, f"{section}.{name} has no help"


def test_readme_method_table_is_the_preset_table():
    from pathlib import Path

    from progrpo_core.methods import presets_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert presets_markdown() in readme, "regenerate the README's method table from methods.presets_markdown()"


def test_readme_sampler_table_is_the_sampler_table():
    from pathlib import Path

    from progrpo_core.samplers import samplers_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert samplers_markdown() in readme, "regenerate the README's sampler table from samplers.samplers_markdown()"
