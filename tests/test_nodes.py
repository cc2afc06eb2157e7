"""The node pack without ComfyUI: it imports, every node's declaration is valid, and the nodes
that need no ComfyUI object run on the built-in digits model's outputs."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, host, trace  # noqa: E402
from nodes import train_driver as training  # noqa: E402
from progrpo_core import ovf  # noqa: E402
from progrpo_core.embedded import load_digits_model  # noqa: E402

WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN"}
CUSTOM = {trace.GROUP, trace.REWARD, trace.SCORES, trace.PROMPTS}
STOCK_SOCKETS = {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", trace.LORA}
HIDDEN = {"UNIQUE_ID", "PROMPT", "EXTRA_PNGINFO", "DYNPROMPT"}


# ---- the pack imports without ComfyUI -----------------------------------------------------------

def test_pack_and_nodes_import_without_comfyui():
    code = f"""
import importlib.util, sys
sys.path.insert(0, {str(ROOT)!r})
spec = importlib.util.spec_from_file_location("pack", {str(ROOT / '__init__.py')!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
pack = importlib.util.module_from_spec(spec); spec.loader.exec_module(pack)
assert not hasattr(pack, "NODE_CLASS_MAPPINGS"), "the pack registered nodes without ComfyUI"
import nodes, nodes.host.headless
assert len(nodes.NODE_CLASS_MAPPINGS) == 10
bad = [m for m in ("comfy", "folder_paths", "server", "comfy_api") if m in sys.modules]
assert not bad, bad
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_core_imports_neither_comfyui_nor_the_node_pack():
    import ast

    banned = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "execution"}
    found = []
    for path in (ROOT / "progrpo_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in banned]
    assert not found, found


def test_the_core_reaches_the_pack_only_through_its_loader_registry(tmp_path):
    """At run time, too: a run of the command line on the built-in model loads no module of the pack
    or of ComfyUI, the core's source names no module of the pack (not even in a string), and the
    default loader for ComfyUI checkpoints is the one the pack registered (its entry point)."""
    import subprocess
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        from progrpo_core.cli import main
        main(["train", "--out", {str(tmp_path / "run")!r}, "--run.epochs", "1", "--grpo.prompts_per_epoch", "1",
              "--schedule.group_size", "4", "--schedule.keep", "2", "--run.eval_seeds", "1", "--run.eval_prompts", "1",
              "--no-progress"])
        print(sorted(m for m in sys.modules if m.split(".")[0] in
                     ("nodes", "progrpo_pack_nodes", "progrpo_headless", "comfy", "folder_paths", "server")))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    strings = [f"{p.relative_to(ROOT)}" for p in (ROOT / "progrpo_core").rglob("*.py")
               if any(w in p.read_text() for w in ("nodes.host", "progrpo_pack_nodes", "progrpo_headless"))]
    assert not strings, strings
    from progrpo_core.models import model_loader

    loader = model_loader("comfyui")
    assert (loader.__module__, loader.__name__) == ("progrpo_headless", "load_comfy_denoiser")


# ---- declarations -------------------------------------------------------------------------------

def _inputs(cls):
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}, spec.keys()
    for section in ("required", "optional"):
        for name, s in (spec.get(section) or {}).items():
            yield section, name, s
    for name, kind in (spec.get("hidden") or {}).items():
        assert kind in HIDDEN, (cls, name, kind)


@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_node_declaration_is_valid(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert node_id.startswith("ProGRPO") and NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("ProGRPO ")
    assert cls.CATEGORY == "ProGRPO" and cls.DESCRIPTION.strip()
    assert callable(getattr(cls, cls.FUNCTION))
    rt = cls.RETURN_TYPES
    assert isinstance(rt, tuple) and all(isinstance(t, str) and t for t in rt)
    assert len(cls.RETURN_NAMES) == len(rt) == len(cls.OUTPUT_TOOLTIPS)
    assert all(t in CUSTOM | STOCK_SOCKETS | {"STRING", "FLOAT", "INT"} for t in rt), rt
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    spec = cls.INPUT_TYPES()
    for section, name, s in _inputs(cls):
        kind, opts = s[0], (s[1] if len(s) > 1 else {})
        assert opts.get("tooltip", "").strip(), f"{node_id}.{name} has no tooltip"
        takes_all = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
        assert name in params or takes_all, f"{node_id}.{cls.FUNCTION} does not take {name}"
        if name not in params:  # a widget of a table the function takes as **values, defaults from the table
            pass
        elif section == "optional":
            assert params[name].default is not inspect.Parameter.empty, f"optional {name} needs a default"
        else:
            assert params[name].default is inspect.Parameter.empty, f"required {name} must not have a default"
        if isinstance(kind, list):
            assert kind and all(isinstance(c, str) for c in kind)
            assert opts["default"] in kind, (node_id, name)
        elif kind in ("INT", "FLOAT"):
            t = int if kind == "INT" else (int, float)
            for k in ("default", "min", "max"):
                assert isinstance(opts[k], t) and not isinstance(opts[k], bool), (node_id, name, k)
            assert opts["min"] <= opts["default"] <= opts["max"], (node_id, name)
        elif kind == "BOOLEAN":
            assert isinstance(opts["default"], bool)
        elif kind == "STRING":
            assert isinstance(opts["default"], str)
        else:
            assert kind in CUSTOM | STOCK_SOCKETS, (node_id, name, kind)
    for hidden in (spec.get("hidden") or {}):
        assert hidden in params and params[hidden].default is None
    extra = [p for p, v in params.items() if p != "self" and v.kind != inspect.Parameter.VAR_KEYWORD
             and p not in {n for _, n, _ in _inputs(cls)} | set(spec.get("hidden") or {})]
    assert not extra, f"{node_id}.{cls.FUNCTION} takes undeclared {extra}"


def test_ids_are_the_frozen_set():
    assert sorted(NODE_CLASS_MAPPINGS) == sorted([
        "ProGRPOExpandedGroupSampler", "ProGRPOLatentProxyProjector", "ProGRPOOVFPruner", "ProGRPORewardModelLoader",
        "ProGRPORewardScorer", "ProGRPOLoraTrainer", "ProGRPOPromptList", "ProGRPOSaveLoRA", "ProGRPOCombineRewards",
        "ProGRPOVideoReward"])


# ---- nodes that need no ComfyUI, on the digits model ---------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load_digits_model("digits-flow")


@pytest.fixture(scope="module")
def reward():
    return NODE_CLASS_MAPPINGS["ProGRPORewardModelLoader"]().load("digit", "(search)", "cpu", "float32")[0]


@pytest.fixture(scope="module")
def group(digits, reward):
    sched = trace.prune_schedule(8, 6, "3,4", "6,4")

    def score(images, prompts):
        return reward.total(images, prompts)[reward.reward.total_key]

    return trace.record_group(digits, "a handwritten 3", 5, 6, sched, "flow_sde", 0.7, 1.0, score)


def _image_batch(digits, group):
    x0 = group.latents[:, -1]
    return host.core_to_image(digits.decode(x0))  # IMAGE (N, H, W, 3)


def test_prompt_list(tmp_path, monkeypatch):
    node = NODE_CLASS_MAPPINGS["ProGRPOPromptList"]()
    monkeypatch.setattr(host, "input_dir", lambda: tmp_path)  # ComfyUI's input folder
    (tmp_path / "more.txt").write_text("# comment\na handwritten 7\n\n")
    prompts, n = node.build("a handwritten 1\n  \na handwritten 2", "more.txt")
    assert prompts == ["a handwritten 1", "a handwritten 2", "a handwritten 7"] and n == 3
    with pytest.raises(ValueError, match="prompt list is empty"):
        node.build("\n# only a comment\n", "")
    with pytest.raises(ValueError, match="prompt file 'missing.txt' not found in ComfyUI's input folder"):
        node.build("x", "missing.txt")


def test_reward_loader_lists_the_reward_folder_and_stays_inside(tmp_path, monkeypatch):
    (tmp_path / "PickScore_v1").mkdir()
    (tmp_path / "PickScore_v1" / "config.json").write_text("{}")
    (tmp_path / "PickScore_v1" / "model.safetensors").write_bytes(b"")
    (tmp_path / "hps").mkdir()
    (tmp_path / "hps" / "HPS_v2.1_compressed.pt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "digit.safetensors").write_bytes(b"")
    monkeypatch.setattr(host.files, "reward_dirs", lambda: [str(tmp_path)])
    node = NODE_CLASS_MAPPINGS["ProGRPORewardModelLoader"]
    choices = node.INPUT_TYPES()["required"]["model"][0]
    # model folders whole (not their files), weight files in subfolders, no other files
    assert choices == ["(search)", "digit.safetensors", "hps/HPS_v2.1_compressed.pt", "PickScore_v1/"]
    assert "weighted" not in node.INPUT_TYPES()["required"]["reward"][0]  # combining is the Combine node's
    assert host.reward_model_path("PickScore_v1/") == str((tmp_path / "PickScore_v1").resolve())
    assert host.reward_model_path("(search)") is None
    for bad in ("../secret.pt", "/etc/passwd", "~/x.pt"):
        with pytest.raises(ValueError, match="must be a name from the list"):
            host.reward_model_path(bad)
    with pytest.raises(ValueError, match="not in models/reward_models.*press R"):
        host.reward_model_path("gone.safetensors")


def test_reward_loader_errors_are_clear(tmp_path, monkeypatch):
    (tmp_path / "digit.safetensors").write_bytes(b"")
    monkeypatch.setattr(host.files, "reward_dirs", lambda: [str(tmp_path)])
    node = NODE_CLASS_MAPPINGS["ProGRPORewardModelLoader"]()
    with pytest.raises(ValueError, match="Combine Rewards"):
        node.load("weighted", "(search)", "cpu", "float32")
    with pytest.raises(ValueError, match="stroke reward has no weights"):
        node.load("stroke", "digit.safetensors", "cpu", "float32")


def test_combine_rewards_weights_and_normalises_each(reward, digits, group):
    loader = NODE_CLASS_MAPPINGS["ProGRPORewardModelLoader"]()
    stroke = loader.load("stroke", "(search)", "cpu", "float32")[0]
    combine = NODE_CLASS_MAPPINGS["ProGRPOCombineRewards"]()
    inputs = combine.INPUT_TYPES()
    assert list(inputs["required"]) == ["reward_1", "weight_1", "reward_2", "weight_2", "normalise_separately"]
    assert list(inputs["optional"]) == ["reward_3", "weight_3", "reward_4", "weight_4"]
    handle = combine.combine(reward, 0.7, stroke, 0.3, True, reward_3=reward, weight_3=0.0)[0]
    assert handle.reward.components() == [("digit", 0.7), ("stroke", 0.3), ("digit_2", 0.0)]
    assert handle.spec == "digit*0.7,stroke*0.3,digit_2*0" and handle.separate_norm
    images = host.image_to_core(_image_batch(digits, group))
    prompts = ["a handwritten 3"] * images.shape[0]
    out = handle.total(images, prompts)
    assert torch.equal(out["digit"], reward.total(images, prompts)["digit"])
    assert torch.equal(out["stroke"], stroke.total(images, prompts)["stroke"])
    assert torch.allclose(out["total"], 0.7 * out["digit"] + 0.3 * out["stroke"])
    # a combination of combinations is one more part
    nested = combine.combine(handle, 1.0, stroke, 0.5, False)[0]
    assert [n for n, _ in nested.reward.components()] == ["combined", "stroke"] and not nested.separate_norm
    with pytest.raises(ValueError, match="every weight is 0"):
        combine.combine(reward, 0.0, stroke, 0.0, True)
    with pytest.raises(ValueError, match="'reward_2' is not a loaded reward model"):
        combine.combine(reward, 1.0, "text", 1.0, True)
    # the trainer node normalises each part's advantages when the combination says so
    cfg = training.build_train_config(method="pro-grpo", epochs=1, prompts_per_epoch=1, steps=4, group_size=0, checkpoints="",
                             keep="", sampler="auto", noise_level=-1, cfg=0, learning_rate=1e-3, rank=4, alpha=4,
                             kl_beta=0.0, seed=0, reward_spec=handle.spec, separate_reward_norm=handle.separate_norm)
    assert cfg.grpo.separate_reward_norm and cfg.reward.name == handle.spec


def test_group_record_and_projector(digits, group):
    assert group.survivors.shape == (4,) and group.latents.shape == (4, 7, 1, 8, 8)
    assert [len(r) for r in group.proxy_rows] == [8, 8, 8, 6, 4, 4]  # pruned after 3 and 4 model calls
    assert [c["step"] for c in group.checkpoints] == [3, 4]
    # the first checkpoint kept the OVF subset of the proxies' rewards
    first = group.checkpoints[0]
    assert first["kept"].tolist() == first["row_id"][ovf.ovf_select(first["rewards"], 6)].tolist()
    node = NODE_CLASS_MAPPINGS["ProGRPOLatentProxyProjector"]()
    latent, rows = node.project(2, group=group)
    assert latent["samples"].shape == (8, 1, 8, 8) and json.loads(rows) == list(range(8))
    latent, rows = node.project(5, group=group)
    assert json.loads(rows) == group.survivors.tolist()
    with pytest.raises(ValueError, match="outside the group's 0..5"):
        node.project(6, group=group)
    assert group.describe().splitlines() == ["group 8 → 6 → 4 at steps 3, 4 of 6", "4 survivors"]
    assert f"survivors {group.survivors.tolist()}" in group.details()
    with pytest.raises(ValueError, match="connect a GROUP, or all of model"):
        node.project(0)


def test_scorer_and_pruner(digits, group, reward):
    images = _image_batch(digits, group)
    scorer = NODE_CLASS_MAPPINGS["ProGRPORewardScorer"]()
    out = scorer.score(reward, images, "a handwritten 3")
    scores, mean = out["result"]
    expected = reward.reward(host.image_to_core(images), ["a handwritten 3"] * 4)
    assert torch.allclose(scores.values, expected) and mean == pytest.approx(float(expected.mean()))
    # on the node two short lines that do not wrap (about 60 characters fit); every score in the history
    short = out["ui"]["text"][0].splitlines()
    assert short[0].startswith("digit: mean") and len(short) == 2 and max(map(len, short)) <= 60
    hi = int(expected.argmax())
    assert f"best #{hi} {float(expected[hi]):.4g}" in short[1]
    details = out["ui"]["details"][0].splitlines()
    assert [ln.split(":")[0] for ln in details[1:5]] == ["#0", "#1", "#2", "#3"]
    with pytest.raises(ValueError, match="not a loaded reward model"):
        scorer.score(None, images, "a handwritten 3")

    pruner = NODE_CLASS_MAPPINGS["ProGRPOOVFPruner"]()
    latent = {"samples": group.latents[:, -1]}
    kept_images, kept_latent, kept, hist = pruner.prune(scores, "2", "ovf", 0, images=images, latent=latent)
    idx = ovf.ovf_select(scores.values, 2)
    assert json.loads(kept) == idx.tolist()
    assert torch.equal(kept_images, images[idx]) and torch.equal(kept_latent["samples"], latent["samples"][idx])
    assert hist.ndim == 4 and hist.shape[0] == 1 and hist.shape[-1] == 3 and 0 <= float(hist.min()) <= 1
    # two rounds: OVF of 3, then OVF of 2 among them
    _, _, kept2, _ = pruner.prune(scores, "3,2", "ovf", 0)
    first = ovf.ovf_select(scores.values, 3)
    assert json.loads(kept2) == sorted(first[ovf.ovf_select(scores.values[first], 2)].tolist())
    with pytest.raises(ValueError, match="cannot keep more than it has"):
        pruner.prune(scores, "5", "ovf", 0)
    with pytest.raises(ValueError, match="4 scores but 3 images"):
        pruner.prune(scores, "2", "ovf", 0, images=images[:3])


def test_bad_schedules_name_the_fix():
    with pytest.raises(ValueError, match=r"checkpoint step 10 is outside 1..T-1"):
        trace.prune_schedule(8, 10, "5,10", "6,4")
    with pytest.raises(ValueError, match="one survivor count per checkpoint"):
        trace.prune_schedule(8, 10, "5,7", "4")
    with pytest.raises(ValueError, match="whole numbers"):
        trace.prune_schedule(8, 10, "5;x", "4")
    with pytest.raises(ValueError, match="outside 1..T-1"):
        training.build_train_config(**_train_widgets(steps=4, checkpoints="5", keep="4"))


def _train_widgets(**over):
    w = dict(method="pro-grpo", epochs=2, prompts_per_epoch=2, steps=4, group_size=6, checkpoints="2", keep="4",
             sampler="auto", noise_level=-1.0, cfg=1.0, learning_rate=0.01, rank=4, alpha=4.0, kl_beta=0.0, seed=0,
             reward_spec="digit", model_name="digits")
    w.update(over)
    return w


def test_training_loop_preview_and_curves(digits, tmp_path):
    from progrpo_core.rewards import build_reward
    from progrpo_core.training import Trainer

    cfg = training.build_train_config(**_train_widgets(), run={"out": str(tmp_path)})
    recorder = training.RecordingReward(build_reward("digit"))
    model = load_digits_model("digits-flow")
    trainer = Trainer.build(cfg, model=model, reward=recorder, prompts=["a handwritten 1", "a handwritten 4"],
                      log=lambda s: None)
    steps_seen, previews = [], []

    def on_epoch(record):
        previews.append(training.preview_grid(recorder, record.batch, 6, 2))

    history = training.drive_training(trainer, on_step=lambda d, t: steps_seen.append((d, t)), on_epoch=on_epoch)
    assert [r.epoch for r in history] == [1, 2] and trainer.optimizer_steps == history[-1].optimizer_step > 0
    assert steps_seen[-1] == (10, 10)  # 2 epochs × (4 sampling steps + 1 training phase)
    # one size whatever the group, so the node does not grow over its neighbours
    assert all(p.shape == (3, 512, 512) for p in previews)
    grid = previews[-1]
    assert (grid[:, :252] < 0.99).any() and (grid[:, 260:] < 0.99).any()  # both halves show images
    curves = training.curves_image(history, "test")
    assert curves.ndim == 4 and curves.shape[-1] == 3
    lora = training.trained_lora(trainer)
    assert lora and all(k.startswith("diffusion_model.") for k in lora)
    with trainer.ema.applied():  # the LORA_MODEL holds the EMA weights, as the saved file does
        ema = trainer.adapter.comfy_state_dict()
    assert all(torch.equal(lora[k], ema[k]) for k in ema)
    assert any(not torch.equal(lora[k], v) for k, v in trainer.adapter.comfy_state_dict().items())
    assert lora.metadata["progrpo.method"] == "pro-grpo" and lora.metadata["progrpo.epochs"] == "2"


def test_trainer_node_refuses_bad_input_before_any_work(reward):
    node = NODE_CLASS_MAPPINGS["ProGRPOLoraTrainer"]()
    w = _train_widgets()
    del w["reward_spec"], w["model_name"]
    w.update(targets="attention", gradient_checkpointing=True, run_name="x", resume=False, save_every=1,
             precision="auto", sample_micro_batch=0, train_micro_batch=0, checkpoint_depth=1)
    with pytest.raises(ValueError, match="prompt list is empty"):
        node.train(object(), object(), reward, [], {"samples": torch.zeros(1, 16, 8, 8)}, **w)
    with pytest.raises(ValueError, match="not a loaded reward model"):
        node.train(object(), object(), None, ["a"], {"samples": torch.zeros(1, 16, 8, 8)}, **w)
    w.update(checkpoints="7")
    with pytest.raises(ValueError, match="outside 1..T-1"):
        node.train(object(), object(), reward, ["a"], {"samples": torch.zeros(1, 16, 8, 8)}, **w)


def test_save_lora_tensors(tmp_path):
    lora = training.LoraTensors({"diffusion_model.a.lora_down.weight": torch.ones(2, 3)}, {"progrpo.rank": "2"})
    p = trace.save_lora_tensors(lora, tmp_path, "progrpo/x", True)
    assert p == tmp_path / "progrpo" / "x.safetensors"
    from progrpo_core.lora import read_lora_file

    tensors, meta = read_lora_file(p)
    # the file's name is its title in model browsers (ModelSpec), as the rest of the header is the trainer's
    assert meta == {"progrpo.rank": "2", "progrpo.title": "x", "modelspec.title": "x"}
    assert torch.equal(tensors["diffusion_model.a.lora_down.weight"], torch.ones(2, 3))
    assert trace.save_lora_tensors(lora, tmp_path, "progrpo/x", False).name == "x_00001_.safetensors"
    assert trace.save_lora_tensors(lora, tmp_path, "progrpo/x.safetensors", False).name == "x_00002_.safetensors"
    for bad in ("../x", "/abs/x", "a/../../b", "", "bad|name"):
        with pytest.raises(ValueError):
            trace.save_lora_tensors(lora, tmp_path, bad, True)
    with pytest.raises(ValueError, match="LoRA is empty"):
        trace.save_lora_tensors({}, tmp_path, "x", True)


def test_image_layout_conversion_happens_once():
    image = torch.rand(2, 5, 7, 3)  # ComfyUI IMAGE (B, H, W, C)
    core = host.image_to_core(image)
    assert core.shape == (2, 3, 5, 7) and torch.equal(host.core_to_image(core), image)
    assert host.image_to_core(torch.rand(1, 4, 4, 4)).shape == (1, 3, 4, 4)  # RGBA: alpha dropped
    with pytest.raises(ValueError, match=r"expected an IMAGE batch \(B, H, W, C\)"):
        host.image_to_core(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="LATENT"):
        host.latent_samples({"x": 1})


def test_lora_targets_presets():
    net = torch.nn.ModuleDict({"blocks": torch.nn.ModuleList([torch.nn.ModuleDict({
        "attn": torch.nn.ModuleDict({"qkv": torch.nn.Linear(4, 12), "proj": torch.nn.Linear(4, 4)}),
        "mlp": torch.nn.Linear(4, 4), "norm": torch.nn.LayerNorm(4)})])})
    assert host.target_modules(net, "attention") == ["blocks.0.attn.qkv", "blocks.0.attn.proj"]
    assert host.target_modules(net, "all linear") == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp"]
    with pytest.raises(ValueError, match="unknown"):
        host.target_modules(net, "everything")


def test_messages_from_the_loop_speak_of_the_nodes_widgets():
    from progrpo_core.training import ResumeSettingsError
    from progrpo_core.training.state import check_resume_config, last_good

    saved = {"grpo": {"lr": 0.005, "method": "pro-grpo"}, "run": {"epochs": 10, "seed": 0}}
    now = {"grpo": {"lr": 0.1, "method": "pro-grpo"}, "run": {"epochs": 20, "seed": 1}}
    with pytest.raises(ResumeSettingsError) as e:
        check_resume_config(saved, now)
    assert "--lora.init_from" in str(e.value)  # the command line's words
    text = training.resume_refusal(e.value, "night")
    assert "learning_rate: 0.005 in the run, 0.1 now; seed: 0 in the run, 1 now" in text
    assert "epochs" in text.split("only ")[1] and "turn 'resume' off and give a new run_name" in text
    assert "--" not in text and "grpo." not in text and "run." not in text.replace("run_name", "").replace("run's", "")
    said = last_good(3, "/out/night", training.NODE_WORDS)
    assert "with 'resume' on (same run_name)" in said and "train --resume" not in said
    assert "save_every" in last_good(0, "/out/night", training.NODE_WORDS)


def test_lora_headers_name_the_base_model_for_model_browsers():
    from progrpo_core import lora_format

    meta = lora_format.header(4, 4.0, ["attn"], "abc", {"method": "pro-grpo", "reward": "pickscore",
                                                        "base_model": "sdxl.safetensors", "architecture": "SDXL",
                                                        "title": "night", "seed": None})
    # what ComfyUI 0.33's asset metadata reads (ss_base_model_version, then modelspec.base_model)
    assert meta["ss_base_model_version"] == meta["modelspec.base_model"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.title"] == "night" and "pickscore" in meta["modelspec.description"]
    assert "progrpo.seed" not in meta  # unknown values are left out, not written as "null"
    digits = lora_format.header(4, 4.0, ["attn"], "abc", {"method": "grpo", "architecture": None})
    assert "ss_base_model_version" not in digits and digits["modelspec.title"] == "ProGRPO grpo LoRA"



def test_a_trainer_widget_for_a_config_field_is_one_row_of_one_table():
    """Adding a widget: one row in nodes/widgets.py's table (here written into a copy of the module)
    gives the node's input, the config it sets, the resume check's and the errors' words."""
    import types

    import nodes.widgets as W

    src = Path(W.__file__).read_text()
    row = ('    Widget("weight_decay", "FLOAT", 1e-4, "AdamW weight decay", ("grpo.weight_decay",), optional=True,\n'
           '           opts={"min": 0.0, "max": 1.0, "step": 0.0001}),\n')
    end = src.index("\n)\n", src.index("WIDGETS: tuple[Widget, ...] = ("))
    copy = types.ModuleType("nodes._widgets_plus_one")
    copy.__package__ = "nodes"
    sys.modules[copy.__name__] = copy  # dataclasses look their module up
    try:
        exec(compile(src[:end + 1] + row + src[end + 1:], "widgets_plus_one", "exec"), copy.__dict__)
    finally:
        del sys.modules[copy.__name__]
    spec = copy.input_types({}, {})
    assert spec["optional"]["weight_decay"][1]["default"] == 1e-4
    assert list(spec["required"]) == list(W.input_types({}, {})["required"])  # saved workflows keep their order
    cfg = copy.build_train_config(reward_spec="digit", weight_decay=0.05)
    assert cfg.grpo.weight_decay == 0.05
    assert copy.SETTING_WIDGETS["grpo.weight_decay"] == "weight_decay"
    with pytest.raises(ValueError, match=r"^weight_decay=-1\.0 must be") as e:
        copy.build_train_config(reward_spec="digit", weight_decay=-1.0)
    assert "grpo." not in str(e.value)


def test_the_trainer_node_has_auto_where_the_command_line_does():
    import nodes.widgets as W

    cfg = W.build_train_config(reward_spec="digit")
    auto = {"grpo.lr": cfg.grpo.lr, "sampler.cfg": cfg.sampler.cfg, "sampler.noise_level": cfg.sampler.noise_level,
            "sampler.sampler": cfg.sampler.sampler, "schedule.group_size": cfg.schedule.group_size,
            "run.sample_micro_batch": cfg.run.sample_micro_batch}
    assert all(v is None for v in auto.values()), auto
    assert W.build_train_config(reward_spec="digit", learning_rate=0.002).grpo.lr == 0.002
