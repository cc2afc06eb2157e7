"""The pack inside a real ComfyUI server, on tiny random-weight checkpoints.

Every bundled workflow runs through the HTTP API (converted with ``ui_to_api``) with its model
files swapped for the tiny ones and its sizes shrunk; the trained LoRA must load in the stock
LoraLoaderModelOnly with no unloaded key and change its output (every other family: test_families_host.py);
bad inputs fail with a clear message from the pack and leave the MODEL as it
was; an interrupted training keeps its LoRA and resumes. Skipped unless PROGRPO_COMFYUI is set.
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for p in (HERE, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import tiny_models  # noqa: E402
from client import PromptFailed, PromptInterrupted, PromptRejected, ui_to_api  # noqa: E402
from launcher import PACK_NAME  # noqa: E402
from test_workflows import STOCK  # noqa: E402

WORKFLOWS = REPO / "workflows"
UNLOADED = ("lora key not loaded", "NOT LOADED")
OURS = ("ProGRPOExpandedGroupSampler", "ProGRPOLatentProxyProjector", "ProGRPOOVFPruner", "ProGRPORewardModelLoader",
        "ProGRPORewardScorer", "ProGRPOLoraTrainer", "ProGRPOPromptList", "ProGRPOSaveLoRA", "ProGRPOCombineRewards",
        "ProGRPOVideoReward")


def name(key: str) -> str:
    return tiny_models.FILES[key].split("/", 1)[1]


def pixels(client, ref: dict):
    from PIL import Image
    import numpy as np

    return np.asarray(Image.open(io.BytesIO(client.view(ref))).convert("RGB")).astype("int16")


def run(client, prompt: dict, timeout: float = 600) -> tuple[dict, float]:
    t = time.perf_counter()
    entry = client.run(prompt, timeout=timeout)
    return entry, time.perf_counter() - t


def by_type(api: dict, kind: str) -> list[str]:
    return [i for i, n in api.items() if n["class_type"] == kind]


def tiny(api: dict, **trainer) -> dict:
    """The API prompt of a bundled workflow on the tiny models and small sizes: SD3.5's checkpoint and
    three text encoders become the tiny SD3 and CLIP-L; Flux.1-dev (UNETLoader, its weight_dtype kept),
    its DualCLIPLoader and VAE become the tiny Flux, CLIP-L and a 16-channel TAESD."""
    api = json.loads(json.dumps(api))
    tiny_names = {name(k) for k in tiny_models.FILES}
    for nid in by_type(api, "UNETLoader"):
        if api[nid]["inputs"]["unet_name"] not in tiny_names:
            api[nid]["inputs"]["unet_name"] = name("flux")
    for nid in by_type(api, "DualCLIPLoader"):
        api[nid] = {"class_type": "CLIPLoader", "inputs": {"clip_name": name("clip_l"), "type": "stable_diffusion",
                                                            "device": "default"}}
    for nid in by_type(api, "VAELoader"):
        if api[nid]["inputs"]["vae_name"] not in tiny_names:
            api[nid]["inputs"]["vae_name"] = name("vae16")
    for nid in by_type(api, "CheckpointLoaderSimple"):  # → tiny MMDiT + a separate 16-channel TAESD
        api[nid] = {"class_type": "UNETLoader", "inputs": {"unet_name": name("sd3"), "weight_dtype": "default"}}
        api[nid + "vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": name("vae16")}}
        for node in api.values():
            for k, v in node["inputs"].items():
                if v == [nid, 2]:
                    node["inputs"][k] = [nid + "vae", 0]
                assert v != [nid, 1], "the CLIP of the checkpoint is not used by the workflows"
    for nid in by_type(api, "TripleCLIPLoader"):
        api[nid] = {"class_type": "CLIPLoader", "inputs": {"clip_name": name("clip_l"), "type": "sd3",
                                                            "device": "default"}}
    for nid in by_type(api, "ProGRPORewardModelLoader"):
        api[nid]["inputs"].update(reward="stroke", model="(search)", device="cpu")
    for nid in by_type(api, "EmptySD3LatentImage"):
        api[nid]["inputs"].update(width=64, height=64)
    for nid in by_type(api, "KSampler"):
        api[nid]["inputs"].update(steps=3)
    for nid in by_type(api, "ProGRPOLoraTrainer"):
        api[nid]["inputs"].update(epochs=2, steps=4, group_size=4, checkpoints="2", keep="3", rank=4, alpha=4.0,
                                  learning_rate=0.05, save_every=1, **trainer)
    for nid in by_type(api, "ProGRPOExpandedGroupSampler"):
        api[nid]["inputs"].update(group_size=6, steps=6, checkpoints="3,4", keep="4,3")
    for i, nid in enumerate(by_type(api, "ProGRPOLatentProxyProjector")):
        api[nid]["inputs"].update(step=(2, 3)[i])  # the proxies checkpoints 3 and 4 scored
    for nid in by_type(api, "ProGRPOOVFPruner"):
        api[nid]["inputs"].update(keep="4")
    return api


def workflow_prompt(client, file: str, **trainer) -> dict:
    ui = json.loads((WORKFLOWS / file).read_text())
    return tiny(ui_to_api(ui, client.object_info()), **trainer)


def texts(entry: dict, nid: str, key: str = "text") -> str:
    """A node's text in the prompt history: "text" is what the node shows, "details" the whole story."""
    return " ".join(entry["outputs"].get(nid, {}).get(key, []))


# ---- what the server sees ---------------------------------------------------------------------

def test_stock_signatures_used_by_the_workflows_match_this_comfyui(comfy_server):
    info = comfy_server.object_info()
    for kind, sig in STOCK.items():
        assert kind in info, f"stock node {kind} missing from this ComfyUI"
        entry = info[kind]
        order = entry.get("input_order", {}).get("required") or list(entry["input"]["required"])
        assert order == [n for n, _, _ in sig["required"]], (kind, order)
        for n, t, _ in sig["required"]:
            real = entry["input"]["required"][n][0]
            if t is None or isinstance(t, list):
                assert real == "COMBO" or isinstance(real, list), (kind, n, real)
                options = real if isinstance(real, list) else entry["input"]["required"][n][1].get("options", [])
                assert t is None or set(t) <= set(options), (kind, n, set(t) - set(options))
            else:
                assert real == t, (kind, n, real, t)
        assert entry["output"] == sig["outputs"], (kind, entry["output"])


def test_pack_nodes_and_workflow_templates_are_served(comfy_server):
    info = comfy_server.object_info()
    for kind in OURS:
        assert info[kind]["python_module"] == f"custom_nodes.{PACK_NAME}", kind
        assert info[kind]["category"] == "ProGRPO"
    templates = comfy_server.get("/workflow_templates")
    assert sorted(templates.get(PACK_NAME, [])) == ["progrpo_compare_lora", "progrpo_inspect_group",
                                                    "progrpo_train_flux_fp8", "progrpo_train_lora"], templates


def test_reward_loader_lists_the_reward_folder_and_combine_rewards_weights(comfy_server, comfy_dirs):
    from reward_fixtures import build_hf_clip

    build_hf_clip(comfy_dirs.models_dir / "reward_models" / "PickScore_tiny")
    choices = comfy_server.object_info("ProGRPORewardModelLoader")["input"]["required"]["model"][0]
    assert "PickScore_tiny/" in choices and choices[0] == "(search)", choices
    assert not any(c.startswith("PickScore_tiny/") and c != "PickScore_tiny/" for c in choices)  # not its files
    g = {"img": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 72, "batch_size": 2, "color": 0xC04020}},
         "pick": {"class_type": "ProGRPORewardModelLoader", "inputs": {"reward": "pickscore", "model": "PickScore_tiny/",
                                                                       "device": "cpu", "dtype": "float32"}},
         "stroke": {"class_type": "ProGRPORewardModelLoader", "inputs": {"reward": "stroke", "model": "(search)",
                                                                         "device": "cpu", "dtype": "float32"}},
         "both": {"class_type": "ProGRPOCombineRewards", "inputs": {"reward_1": ["pick", 0], "weight_1": 0.7,
                                                                    "reward_2": ["stroke", 0], "weight_2": 0.3,
                                                                    "normalise_separately": True}},
         "score": {"class_type": "ProGRPORewardScorer", "inputs": {"reward": ["both", 0], "images": ["img", 0],
                                                                   "prompt": "a red square"}}}
    entry = comfy_server.run(g, timeout=300)
    assert len(texts(entry, "score").splitlines()) == 2  # the node shows two lines ...
    text = texts(entry, "score", "details")               # ... the history holds every part's mean
    means = {ln.split(":")[0].strip(): float(ln.split("mean")[1].split(",")[0]) for ln in text.splitlines()
             if "mean" in ln}
    assert set(means) == {"total", "pickscore", "stroke"}, text
    assert abs(means["total"] - (0.7 * means["pickscore"] + 0.3 * means["stroke"])) < 1e-3, text
    g["pick"]["inputs"]["model"] = "../../secret"
    with pytest.raises(PromptRejected, match="model"):  # not in the list: refused before anything runs
        comfy_server.run(g, timeout=60)


# ---- the bundled workflows ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(comfy_server):
    """Workflow (a), training on the tiny SD3: its history entry and API prompt."""
    api = workflow_prompt(comfy_server, "progrpo_train_lora.json", run_name="host_train")
    entry, seconds = run(comfy_server, api)
    print(f"training workflow: {seconds:.1f} s")
    return entry, api


def test_training_workflow(comfy_server, trained):
    entry, api = trained
    server = comfy_server.server
    (tid,) = by_type(api, "ProGRPOLoraTrainer")
    (sid,) = by_type(api, "ProGRPOSaveLoRA")
    print("trainer:", texts(entry, tid))
    assert texts(entry, tid).startswith("pro-grpo: epochs 1–2/2") and len(texts(entry, tid).splitlines()) == 2
    assert "epochs 1..2 of 2" in texts(entry, tid, "details")
    assert texts(entry, sid) == "saved models/loras/progrpo/sd35m_pickscore.safetensors"
    lora = server.models_dir / "loras" / "progrpo" / "sd35m_pickscore.safetensors"
    assert lora.is_file() and (server.models_dir / "loras/progrpo/autosave/host_train.safetensors").is_file()
    assert sorted(p.name for p in (server.output_dir / "progrpo/host_train/checkpoints").iterdir()) == [
        "epoch-000001.pt", "epoch-000002.pt"]
    header = json.loads(lora.read_bytes()[8:8 + int.from_bytes(lora.read_bytes()[:8], "little")])
    meta = header["__metadata__"]
    assert meta["progrpo.method"] == "pro-grpo" and meta["progrpo.reward"] == "stroke"
    # ComfyUI's model browser reads the base model; ModelSpec readers the architecture and the title
    assert meta["ss_base_model_version"] == meta["modelspec.base_model"] == "sd3"
    assert meta["modelspec.architecture"] == "stable-diffusion-v3-medium/lora"
    assert meta["modelspec.title"] == "sd35m_pickscore"
    keys = [k for k in header if k != "__metadata__"]
    assert keys and all(k.startswith("diffusion_model.") for k in keys)
    assert {k.rsplit(".", 2)[-2] if k.endswith(".weight") else "alpha" for k in keys} == {"lora_down", "lora_up", "alpha"}
    saved = {api[n]["_meta"]["title"]: comfy_server.images(entry, n)[0] for n in by_type(api, "SaveImage")}
    before, after = saved["before: base model"], saved["after: with the trained LoRA"]
    assert abs(pixels(comfy_server, before) - pixels(comfy_server, after)).max() > 0, "the trained MODEL changed nothing"
    curves = [comfy_server.images(entry, nid) for nid in by_type(api, "PreviewImage")]
    assert curves and curves[0], "no curves image"


@pytest.mark.skipif(os.environ.get("PROGRPO_COMFYUI_GPU") != "1", reason="a GPU server: PROGRPO_COMFYUI_GPU=1 "
                    "(tests/gpu/device_check.sh sets it)")
def test_on_a_gpu_server_the_trainer_trains_a_plain_copy_under_dynamic_vram(comfy_server, trained):
    """ComfyUI started as a user starts it on NVIDIA gives the loaders' MODELs a ModelPatcherDynamic;
    the trainer's copy is a plain patcher, loaded whole, and the training workflow still succeeds."""
    log = comfy_server.server.log_text()
    assert "DynamicVRAM support detected and enabled" in log, log[-4000:]
    assert "ProGRPO: training a ModelPatcher copy of the ModelPatcherDynamic" in log, log[-4000:]


def test_comparison_workflow_loads_the_lora_in_the_stock_loader(comfy_server, trained):
    api = workflow_prompt(comfy_server, "progrpo_compare_lora.json")
    comfy_server.server.mark_log()
    entry, seconds = run(comfy_server, api)
    log = comfy_server.server.log_since_mark()
    print(f"comparison workflow: {seconds:.1f} s")
    assert not [ln for ln in log.splitlines() if any(u in ln for u in UNLOADED)], log
    base, lora = by_type(api, "SaveImage")
    a, b = pixels(comfy_server, comfy_server.images(entry, base)[0]), pixels(comfy_server, comfy_server.images(entry, lora)[0])
    print("mean |base - lora| pixel difference:", float(abs(a - b).mean()))
    assert abs(a - b).max() > 0, "the LoRA loaded by LoraLoaderModelOnly did not change the output"
    for nid in by_type(api, "ProGRPORewardScorer"):
        print("scorer:", texts(entry, nid).splitlines()[0])
        assert texts(entry, nid).startswith("stroke: mean")


def test_inspection_workflow(comfy_server):
    api = workflow_prompt(comfy_server, "progrpo_inspect_group.json")
    entry, seconds = run(comfy_server, api)
    print(f"inspection workflow: {seconds:.1f} s")
    (gid,) = by_type(api, "ProGRPOExpandedGroupSampler")
    print("sampler:", texts(entry, gid))
    assert texts(entry, gid).startswith("group 6 → 4 → 3 at steps 3, 4 of")        # the node's two lines ...
    assert "step 3: kept" in texts(entry, gid, "details") and "survivors [" in texts(entry, gid, "details")  # ... the history's
    previews = {api[n]["_meta"]["title"]: comfy_server.images(entry, n) for n in by_type(api, "PreviewImage")}
    counts = {t: len(v) for t, v in previews.items()}
    print("previews:", counts)
    assert counts == {"proxies at checkpoint 5": 6, "proxies at checkpoint 7": 4,
                      "reward histogram: kept vs dropped": 1, "kept proxies (OVF)": 4, "final survivors": 3}


def test_flux_fp8_workflow_trains_over_fp8_weights(comfy_server):
    """Workflow (d): Flux.1 loaded by UNETLoader with weight_dtype fp8_e4m3fn and its own text encoder
    and VAE loaders (on the tiny Flux, CLIP-L and TAESD): the LoRA trains over the fp8 weights and changes
    the image sampled with the same seed."""
    api = workflow_prompt(comfy_server, "progrpo_train_flux_fp8.json", run_name="host_flux_fp8")
    server = comfy_server.server
    server.mark_log()
    entry, seconds = run(comfy_server, api)
    log = server.log_since_mark()
    print(f"flux fp8 workflow: {seconds:.1f} s")
    (tid,) = by_type(api, "ProGRPOLoraTrainer")
    (uid,) = by_type(api, "UNETLoader")
    assert api[uid]["inputs"]["weight_dtype"] == "fp8_e4m3fn"
    assert texts(entry, tid).startswith("pro-mixgrpo: epochs 1–2/2"), texts(entry, tid)
    assert "family Flux.1 (flow, ComfyUI Flux), weights float8_e4m3fn" in log, log[-3000:]
    assert (server.models_dir / "loras" / "progrpo" / "flux1dev_fp8_pickscore.safetensors").is_file()
    saved = {api[n]["_meta"]["title"]: comfy_server.images(entry, n)[0] for n in by_type(api, "SaveImage")}
    before, after = saved["before: base model"], saved["after: with the trained LoRA"]
    assert abs(pixels(comfy_server, before) - pixels(comfy_server, after)).max() > 0, "the trained MODEL changed nothing"


# ---- other model families -------------------------------------------------------------------------

def flux_or_sd15(kind: str) -> dict:
    if kind == "flux":
        g = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": name("flux"), "weight_dtype": "default"}},
             "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": name("clip_l"), "type": "stable_diffusion",
                                                             "device": "default"}},
             "vae": {"class_type": "VAELoader", "inputs": {"vae_name": name("vae16")}},
             "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
        model, clip, vae = ["unet", 0], ["clip", 0], ["vae", 0]
    else:
        g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name("sd15")}},
             "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
        model, clip, vae = ["ckpt", 0], ["ckpt", 1], ["ckpt", 2]
    g["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": clip}}
    g["neg"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["pos", 0]}}
    g["reward"] = {"class_type": "ProGRPORewardModelLoader", "inputs": {"reward": "stroke", "model": "(search)",
                                                                        "device": "cpu", "dtype": "float32"}}
    g["prompts"] = {"class_type": "ProGRPOPromptList", "inputs": {"text": "a red apple", "file": ""}}
    return {"nodes": g, "model": model, "clip": clip, "vae": vae}


def sampler_node(b: dict, **over) -> dict:
    inputs = {"model": b["model"], "positive": ["pos", 0], "negative": ["neg", 0], "latent": ["latent", 0],
              "group_size": 4, "steps": 4, "sampler": "auto", "noise_level": -1.0, "cfg": 1.0, "seed": 3,
              "checkpoints": "2", "keep": "3", "selector": "ovf", "prompt": "a red apple",
              "reward": ["reward", 0], "vae": b["vae"]}
    inputs.update(over)
    return {"class_type": "ProGRPOExpandedGroupSampler", "inputs": inputs}


def trainer_node(b: dict, **over) -> dict:
    inputs = {"model": b["model"], "vae": b["vae"], "reward": ["reward", 0], "prompts": ["prompts", 0],
              "latent": ["latent", 0], "clip": b["clip"], "method": "pro-grpo", "epochs": 1, "prompts_per_epoch": 1,
              "steps": 4, "group_size": 4, "checkpoints": "2", "keep": "3", "sampler": "auto", "noise_level": -1.0,
              "cfg": 1.0, "learning_rate": 0.05, "rank": 4, "alpha": 4.0, "targets": "attention", "kl_beta": 0.0,
              "seed": 0, "gradient_checkpointing": True, "run_name": "host", "resume": False, "save_every": 1}
    inputs.update(over)
    return {"class_type": "ProGRPOLoraTrainer", "inputs": inputs}


def decode_save(g: dict, latent, vae, prefix: str, nid: str) -> None:
    g[nid + "_dec"] = {"class_type": "VAEDecode", "inputs": {"samples": latent, "vae": vae}}
    g[nid] = {"class_type": "SaveImage", "inputs": {"images": [nid + "_dec", 0], "filename_prefix": prefix}}


# ---- bad input ------------------------------------------------------------------------------------

def sd3_base() -> dict:
    g = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": name("sd3"), "weight_dtype": "default"}},
         "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": name("clip_l"), "type": "sd3", "device": "default"}},
         "vae": {"class_type": "VAELoader", "inputs": {"vae_name": name("vae16")}},
         "vae4": {"class_type": "VAELoader", "inputs": {"vae_name": name("vae4")}},
         "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
         "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["clip", 0]}},
         "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["clip", 0]}},
         "reward": {"class_type": "ProGRPORewardModelLoader", "inputs": {"reward": "stroke", "model": "(search)",
                                                                         "device": "cpu", "dtype": "float32"}},
         "prompts": {"class_type": "ProGRPOPromptList", "inputs": {"text": "a red apple", "file": ""}}}
    return {"nodes": g, "model": ["unet", 0], "clip": ["clip", 0], "vae": ["vae", 0]}


BAD = {
    "sampler that does not fit the family": ("sampler", {"sampler": "ddim"}, "sampler 'ddim' does not fit a 'flow' model"),
    "empty prompt list": ("trainer", {"prompts": ["empty", 0]}, "the prompt list is empty"),
    "schedule inconsistent with the steps": ("sampler", {"checkpoints": "5", "keep": "3"},
                                             "checkpoint step 5 is outside 1..T-1 = 1..3"),
    "trainer schedule inconsistent with the steps": ("trainer", {"checkpoints": "4,6", "keep": "3,2"},
                                                     "checkpoint step 4 is outside 1..T-1 = 1..3"),
    "no reward model to prune with": ("sampler", {"reward": None}, "none is connected"),
    "VAE that does not match the latent channels": ("trainer", {"vae": ["vae4", 0]},
                                                    "the VAE works on 4-channel latents"),
    "sampler VAE that does not match": ("sampler", {"vae": ["vae4", 0]}, "the VAE works on 4-channel latents"),
    "proxy_vae that does not match": ("trainer", {"proxy_vae": ["vae4", 0]}, "the proxy_vae works on 4-channel latents"),
    # a workflow's JSON may carry NaN past the widgets' min/max (NaN compares false with both)
    "trainer NaN cfg": ("trainer", {"cfg": float("nan")}, "cfg=nan is not a number"),
    "sampler NaN cfg": ("sampler", {"cfg": float("nan")}, "cfg=nan is not a number"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_with_a_clear_message(comfy_server, case):
    node, over, message = BAD[case]
    b = sd3_base()
    g = dict(b["nodes"])
    g["empty"] = {"class_type": "ProGRPOPromptList", "inputs": {"text": "# nothing here", "file": ""}}
    make = sampler_node if node == "sampler" else trainer_node
    n = make(b)
    for k, v in over.items():
        if v is None:
            n["inputs"].pop(k)
        else:
            n["inputs"][k] = v
    g["bad"] = n
    g["out"] = ({"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["bad", 1], "filename": "host/bad", "overwrite": True}}
                if node == "trainer" else {"class_type": "PreviewImage", "inputs": {"images": ["bad_dec", 0]}})
    if node == "sampler":
        g["bad_dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["bad", 0], "vae": ["vae", 0]}}
    with pytest.raises(PromptFailed) as err:
        comfy_server.run(g, timeout=300)
    messages = dict((m[0], m[1]) for m in err.value.entry["status"]["messages"] if len(m) == 2)
    e = messages["execution_error"]
    print(f"{case}: {e['exception_type']}: {e['exception_message'].splitlines()[0]}")
    assert message in e["exception_message"], e["exception_message"]
    assert e["exception_type"] in ("ValueError", "RuntimeError") or e["exception_type"].endswith("Error")
    assert e["node_type"] in ("ProGRPOExpandedGroupSampler", "ProGRPOLoraTrainer", "ProGRPOPromptList")
    deepest = e["traceback"][-1] if e["traceback"] else ""
    assert "site-packages/torch" not in deepest and "/comfy/" not in deepest, deepest


def test_the_models_given_are_unchanged_after_training_and_bad_input(comfy_server):
    """The MODEL every test above used comes from the cached UNETLoader output; sample with it,
    then with the same weights loaded afresh from disk (another file name): same pixels."""
    fresh = comfy_server.server.models_dir / "diffusion_models" / "fresh_copy_of_tiny_sd3.safetensors"
    if not fresh.exists():
        fresh.symlink_to((comfy_server.server.models_dir / tiny_models.FILES["sd3"]).resolve())
    images = []
    for unet in (name("sd3"), fresh.name):
        b = sd3_base()
        g = dict(b["nodes"])
        g["unet"] = {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}}
        g["ks"] = {"class_type": "KSampler", "inputs": {
            "seed": 987, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "model": ["unet", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0]}}
        decode_save(g, ["ks", 0], ["vae", 0], "host_unchanged", "save")
        entry, _ = run(comfy_server, g)
        images.append(pixels(comfy_server, comfy_server.images(entry, "save")[0]))
    assert abs(images[0] - images[1]).max() == 0, "the cached MODEL was modified by a ProGRPO node"


# ---- interrupt and resume -------------------------------------------------------------------------

def test_interrupt_keeps_the_lora_and_resume_continues(comfy_server):
    b = sd3_base()
    g = dict(b["nodes"])
    g["train"] = trainer_node(b, epochs=1000, run_name="host_interrupt", save_every=1, cfg=1.0)
    g["save"] = {"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["train", 1], "filename": "host/interrupt",
                                                             "overwrite": True}}
    server = comfy_server.server
    ckdir = server.output_dir / "progrpo" / "host_interrupt" / "checkpoints"
    server.mark_log()
    pid = comfy_server.queue(g)
    try:
        deadline = time.monotonic() + 300
        while not (ckdir.is_dir() and any(ckdir.iterdir())):
            assert time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.2)
        t = time.perf_counter()
        comfy_server.interrupt(pid)
        with pytest.raises(PromptInterrupted):
            comfy_server.wait(pid, timeout=120)
        print(f"interrupted after {time.perf_counter() - t:.1f} s")
    finally:
        if comfy_server.queue_state()["queue_running"]:
            comfy_server.interrupt()
    assert (server.models_dir / "loras/progrpo/autosave/host_interrupt.safetensors").is_file()
    assert "training stopped in epoch" in server.log_since_mark()
    done = max(int(p.name[6:12]) for p in ckdir.iterdir() if p.name.startswith("epoch-"))
    g["train"]["inputs"].update(epochs=done + 1, resume=True)
    entry, _ = run(comfy_server, g)
    print("resumed:", texts(entry, "train"))
    assert f"epochs {done + 1}–{done + 1}/{done + 1}" in texts(entry, "train")


# ---- what the UI sees while training ------------------------------------------------------------

def _ws_frames(client, timeout: float):
    """A minimal websocket reader (standard library) on ``/ws?clientId=<client's id>``: yields
    ``(opcode, payload)`` frames until ``timeout``."""
    import base64
    import os
    import socket
    import urllib.parse

    url = urllib.parse.urlparse(client.base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?clientId={client.client_id} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(4096)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert b" 101 " in head.split(b"\r\n")[0], head

    def read(n):
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out

    def frames():
        try:
            while True:
                b0, b1 = read(2)
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(read(2), "big")
                elif n == 127:
                    n = int.from_bytes(read(8), "big")
                yield b0 & 0x0F, read(n)
        finally:
            sock.close()

    return frames()


def test_trainer_streams_progress_preview_and_reward_text(comfy_server):
    b = sd3_base()
    g = dict(b["nodes"])
    g["train"] = trainer_node(b, epochs=2, run_name="host_ws", save_every=0)
    g["save"] = {"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["train", 1], "filename": "host/ws",
                                                             "overwrite": True}}
    frames = _ws_frames(comfy_server, timeout=300)
    pid = comfy_server.queue(g)
    progress, previews, status = [], [], []
    for opcode, payload in frames:
        if opcode == 1:
            msg = json.loads(payload)
            data = msg.get("data", {})
            if msg["type"] == "progress" and data.get("node") == "train":
                progress.append((data["value"], data["max"]))
            if msg["type"] in ("execution_success", "execution_error") and data.get("prompt_id") == pid:
                assert msg["type"] == "execution_success", data
                break
        elif opcode == 2:
            event = int.from_bytes(payload[:4], "big")
            if event == 1:  # PREVIEW_IMAGE: format (1 JPEG, 2 PNG), then the image
                previews.append(payload[8:])
            elif event == 3:  # TEXT: node id length, node id, text
                n = int.from_bytes(payload[4:8], "big")
                status.append((payload[8:8 + n].decode(), payload[8 + n:].decode()))
    print(f"{len(progress)} progress messages, last {progress[-1] if progress else None}; "
          f"{len(previews)} previews; status: {[t for _, t in status]}")
    assert progress and progress[-1] == (10, 10)  # 2 epochs × (4 sampling steps + training)
    assert len(previews) >= 2 and all(p[:2] == b"\xff\xd8" for p in previews), "no JPEG preview per epoch"
    from PIL import Image

    w, h = Image.open(io.BytesIO(previews[-1])).size
    assert (w, h) == (512, 512)  # one size whatever the group: the node does not grow over its neighbours
    lines = [t for n, t in status if n == "train"]
    assert lines[0].startswith("plan: peak ") and "fits" in lines[0]  # the planner's numbers before training
    assert [t[:18] for t in lines[1:3]] == ["epoch 1/2: reward ", "epoch 2/2: reward "]
    assert lines[-1].startswith("pro-grpo: epochs 1–2/2, reward ")  # the summary stays on the node ...
    assert len(lines[-1].splitlines()) == 2 and "LoRA progrpo/autosave/" in lines[-1]  # ... short: the name LoraLoader lists


# ---- headless ---------------------------------------------------------------------------------------

def installed_pack_env(site: Path) -> dict:
    """The environment of a python in which the pack is installed, as far as the core can tell: its
    distribution metadata with the entry points pyproject.toml declares (the ``comfyui`` model loader)
    in ``site``, on PYTHONPATH. The ComfyUI venv is shared and not touched; a checkout has no metadata
    of its own until ``pip install`` writes it."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) + "\n"
        for group, points in project["entry-points"].items()))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def test_headless_training_of_a_checkpoint(comfy_env, comfy_models, comfy_server, tmp_path):
    """``python -m progrpo_core train --model.comfyui`` on the tiny SD1.5 checkpoint (ComfyUI's
    library, no server), with the pack's loader found through its entry point; its LoRA then loads
    in the server's stock loader without unloaded keys."""
    import subprocess

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na blue car\n")
    out = tmp_path / "run"
    cmd = [comfy_env.python, "-m", "progrpo_core", "train", "--model.comfyui", str(comfy_env.comfyui),
           "--model.checkpoint", str(comfy_models / tiny_models.FILES["sd15"]), "--run.prompts", str(prompts),
           "--reward.name", "stroke", "--run.epochs", "1", "--run.eval_seeds", "1", "--sampler.eval_steps", "1",
           "--sampler.steps", "3", "--schedule.group_size", "3", "--grpo.method", "grpo", "--lora.rank", "2",
           "--grpo.prompts_per_epoch", "1", "--model.resolution", "64", "--run.out", str(out), "--no-progress"]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=installed_pack_env(tmp_path / "site"))
    print(f"headless: {time.perf_counter() - t:.1f} s; {done.stdout.strip().splitlines()[-1] if done.stdout else ''}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["optimizer_steps"] == 1
    dest = comfy_server.server.models_dir / "loras" / "host" / "headless.safetensors"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes((out / "lora.safetensors").read_bytes())
    b = flux_or_sd15("sd15")
    g = dict(b["nodes"])
    g["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": b["model"], "lora_name": "host/headless.safetensors",
                                                                 "strength_model": 1.0}}
    g["ks"] = {"class_type": "KSampler", "inputs": {
        "seed": 5, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
        "model": ["lora", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0]}}
    decode_save(g, ["ks", 0], b["vae"], "host_headless", "save")
    comfy_server.server.mark_log()
    run(comfy_server, g)
    log = comfy_server.server.log_since_mark()
    assert not [ln for ln in log.splitlines() if any(u in ln for u in UNLOADED)], log


def test_projector_on_a_latent_at_a_sigma(comfy_server):
    b = sd3_base()
    g = dict(b["nodes"])
    g["noisy"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": b["model"], "add_noise": "enable", "noise_seed": 3, "steps": 4, "cfg": 4.0, "sampler_name": "euler",
        "scheduler": "simple", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "start_at_step": 0, "end_at_step": 2, "return_with_leftover_noise": "enable"}}
    g["proj"] = {"class_type": "ProGRPOLatentProxyProjector", "inputs": {
        "step": 0, "model": b["model"], "positive": ["pos", 0], "negative": ["neg", 0], "latent": ["noisy", 0],
        "sigma": 0.6, "cfg": 4.0}}
    decode_save(g, ["proj", 0], b["vae"], "host_projected", "save")
    entry, _ = run(comfy_server, g)
    assert len(comfy_server.images(entry, "save")) == 1
    g["proj"]["inputs"]["sigma"] = 2.0
    with pytest.raises(PromptFailed, match=r"sigma 2.0 is outside this model's range \(0, 1\]"):
        comfy_server.run(g)


# ---- a cheaper decoder for the previews ---------------------------------------------------------------

def test_trainer_decodes_its_previews_with_the_proxy_vae(comfy_server, comfy_dirs):
    """proxy_vae: the TAESD that VAELoader finds in models/vae_approx decodes the pruning previews, the
    VAE the survivors' final images. The tiny taesd3 draws one flat image whatever the latent, so
    every preview gets the same reward while the final rewards still differ."""
    b = sd3_base()
    g = dict(b["nodes"])
    g["taesd3"] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}}
    g["train"] = trainer_node(b, run_name="host_proxy_vae", proxy_vae=["taesd3", 0], group_size=4, keep="2")
    g["save"] = {"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["train", 1], "filename": "host/proxy_vae",
                                                             "overwrite": True}}
    entry, seconds = run(comfy_server, g, timeout=900)
    print(f"proxy_vae: trainer {seconds:.1f} s; {texts(entry, 'train')}")
    rows = [json.loads(line) for line in
            (comfy_dirs.output_dir / "progrpo" / "host_proxy_vae" / "metrics.jsonl").read_text().splitlines()]
    (row,) = rows
    assert [p["step"] for p in row["proxy"]] == [2] and row["proxy"][0]["std"] == 0.0, row["proxy"]
    assert row["reward_std"] > 0, row
