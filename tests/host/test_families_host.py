"""Every model family ProGRPO trains, in the real server, from one table.

Each case loads a tiny random-weight model built from ComfyUI's own model classes (tiny_models.py:
real configs scaled down) — through the stock UNETLoader where ComfyUI's detection recognises the
tiny file, through the test pack's ProGRPOTestTinyModel where detection fixes the family's sizes,
with fp8 weights (UNETLoader's ``weight_dtype``) or from GGUF files (ComfyUI-GGUF's loader) — and
runs, in one prompt, the Expanded Group Sampler with pruning and two epochs of the trainer on its
defaults (cfg, guidance, targets found from the architecture, gradient checkpointing), then, in a
second, the saved LoRA in the stock LoraLoaderModelOnly: no unloaded key, a different image. The
planner's plan is in the log of every training run. Text conditioning comes from the test pack's
ProGRPOTestConditioning at each family's shapes (their text encoders are LLMs or T5).
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import tiny_models  # noqa: E402
from conftest import gguf_checkout  # noqa: E402
from test_nodes_host import UNLOADED, decode_save, pixels, run, texts  # noqa: E402


def file(key: str) -> str:
    return tiny_models.FILES[key].split("/", 1)[1]


def unet(key: str, weight_dtype: str = "default") -> dict:
    return {"class_type": "UNETLoader", "inputs": {"unet_name": file(key), "weight_dtype": weight_dtype}}


def tiny(key: str, weight_dtype: str = "default") -> dict:
    return {"class_type": "ProGRPOTestTinyModel", "inputs": {"unet_name": file(key), "weight_dtype": weight_dtype}}


def gguf(key: str) -> dict:
    return {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": file(key)}}


IMAGE16 = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
IMAGE4 = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}


@dataclasses.dataclass(frozen=True)
class Case:
    family: str                      # the name ProGRPO's family table gives the MODEL
    model: dict                      # the loader node
    cond: dict                       # ProGRPOTestConditioning shapes
    cfg: float                       # the cfg the trainer settles on (the family's default)
    latent: dict = dataclasses.field(default_factory=lambda: IMAGE16)
    vae: str = file("vae16")         # VAELoader's vae_name
    targets: str = "attention"
    needs: str = ""                  # "gguf": ComfyUI-GGUF
    video_reward: dict | None = None  # ProGRPOVideoReward's settings (video families)
    trainer: dict = dataclasses.field(default_factory=dict)  # more trainer widgets
    cfg_given: float = 0.0           # the sampler's and trainer's cfg widget (0: the family's default)
    weights_below: float = 0.0       # the plan's weights must be under this fraction of fp32's


CASES = {
    # ComfyUI's SD1.5 detection needs 320 channels: this UNet is 10x the others' cost, so it samples at
    # cfg 1 given (its default, 4.5, would double every call; the table's default is checked by tests/test_families.py)
    "sd15": Case("SD1.x", {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": file("sd15")}},
                 {"cond": [8, 768]}, 4.5, IMAGE4, file("vae4"), cfg_given=1.0),
    "flux2": Case("Flux.2", unet("flux2"), {"cond": [8, 256]}, 1.0,
                  {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                  vae="taef2", targets="attention+mlp"),
    "zimage": Case("Z-Image", tiny("zimage"), {"cond": [8, 256]}, 1.0),
    "qwen_image": Case("Qwen-Image", tiny("qwen_image"), {"cond": [8, 256]}, 2.5),
    "chroma": Case("Chroma", tiny("chroma"), {"cond": [8, 256]}, 4.0),
    "hidream": Case("HiDream", tiny("hidream"),
                    {"cond": [8, 256], "pooled": 256, "extra": {"conditioning_llama3": [2, 8, 256]}}, 5.0),
    "lumina2": Case("Lumina 2", tiny("lumina2"), {"cond": [8, 256]}, 4.0, targets="attention+mlp"),
    "sdxl_v": Case("SDXL v-prediction", tiny("sdxl_v"), {"cond": [8, 2048], "pooled": 1280}, 4.5, IMAGE4, file("vae4")),
    "wan21": Case("Wan 2.1", unet("wan21"), {"cond": [8, 4096]}, 6.0,
                  {"class_type": "EmptyHunyuanLatentVideo",
                   "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": 1}}, file("wan_vae"),
                  video_reward={"frames": 2, "stride": 4, "consistency_weight": 0.5}),
    "unlisted_auraflow": Case("unlisted (AuraFlow)", tiny("auraflow"), {"cond": [8, 256]}, 4.5, IMAGE4, file("vae4")),
    "flux_fp8_e4m3fn": Case("Flux.1", unet("flux", "fp8_e4m3fn"), {"cond": [8, 768], "pooled": 768}, 1.0,
                            weights_below=0.3, trainer={"kl_beta": 0.01}),  # and the KL to the model without LoRA
    "flux_fp8_e5m2": Case("Flux.1", unet("flux", "fp8_e5m2"), {"cond": [8, 768], "pooled": 768}, 1.0,
                          targets="all linear", weights_below=0.3),
    "flux_gguf_q8_0": Case("Flux.1", gguf("flux_q8_0"), {"cond": [8, 768], "pooled": 768}, 1.0, needs="gguf",
                           weights_below=0.3),
    "flux_gguf_q4_k": Case("Flux.1", gguf("flux_q4_k"), {"cond": [8, 768], "pooled": 768}, 1.0, needs="gguf",
                           weights_below=0.2),
}

SMALL = {"group_size": 3, "steps": 3, "checkpoints": "1", "keep": "2"}
PLAN_WEIGHTS = re.compile(r"model weights ([0-9.]+ [MG]iB) as stored \(([0-9.]+ [MG]iB) in float32\)")


def mib(text: str) -> float:
    value, unit = text.split()
    return float(value) * (1024 if unit == "GiB" else 1)


def graph(case: Case, key: str) -> dict:
    cond = json.dumps(case.cond)
    extra = {}
    if case.video_reward is not None:  # frames 0 and 4 of Wan's 5, plus CLIP consistency of the two
        extra = {"clip_reward": {"class_type": "ProGRPORewardModelLoader", "inputs": {
                     "reward": "clip", "model": "clip_tiny/", "device": "cpu", "dtype": "float32"}},
                 "video_reward": {"class_type": "ProGRPOVideoReward", "inputs": {
                     "reward": ["reward", 0], "consistency_clip": ["clip_reward", 0], **case.video_reward}}}
    return {**extra,
        "model": case.model,
        "pos": {"class_type": "ProGRPOTestConditioning", "inputs": {"text": "a red apple", "shapes": cond}},
        "neg": {"class_type": "ProGRPOTestConditioning", "inputs": {"text": "", "shapes": cond}},
        "latent": case.latent,
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": case.vae}},
        "reward": {"class_type": "ProGRPORewardModelLoader", "inputs": {"reward": "stroke", "model": "(search)",
                                                                        "device": "cpu", "dtype": "float32"}},
        "prompts": {"class_type": "ProGRPOPromptList", "inputs": {"text": "a red apple", "file": ""}},
    }


@pytest.mark.parametrize("key", list(CASES))
def test_family_samples_trains_and_its_lora_loads(comfy_server, key):
    case = CASES[key]
    if case.needs == "gguf" and gguf_checkout() is None:
        pytest.skip("set PROGRPO_COMFYUI_GGUF to a ComfyUI-GGUF checkout (city96) to run the GGUF cases")
    server = comfy_server.server
    if case.video_reward is not None:
        from reward_fixtures import build_hf_clip

        build_hf_clip(server.models_dir / "reward_models" / "clip_tiny")
        comfy_server.object_info(refresh=True)  # the loader's list of models now has it
    g = graph(case, key)
    reward = ["video_reward", 0] if case.video_reward is not None else ["reward", 0]
    common = {"model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent": ["latent", 0],
              "vae": ["vae", 0], "reward": reward, **SMALL}
    g["group"] = {"class_type": "ProGRPOExpandedGroupSampler", "inputs": {
        **common, "sampler": "auto", "noise_level": -1.0, "cfg": case.cfg_given, "seed": 3, "selector": "ovf",
        "prompt": "a red apple"}}
    decode_save(g, ["group", 0], ["vae", 0], f"family_{key}_group", "save_group")  # the survivors, decoded
    run_name = f"family_{key}"
    g["train"] = {"class_type": "ProGRPOLoraTrainer", "inputs": {
        **common, "prompts": ["prompts", 0], "method": "pro-grpo", "epochs": 2, "prompts_per_epoch": 1,
        "sampler": "auto", "noise_level": -1.0, "cfg": case.cfg_given, "learning_rate": 0.05, "rank": 4, "alpha": 4.0,
        "targets": case.targets, "kl_beta": 0.0, "seed": 0, "gradient_checkpointing": True, "run_name": run_name,
        "resume": False, "save_every": 0, "overwrite": True, **case.trainer}}
    g["save"] = {"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["train", 1], "filename": f"host/{run_name}",
                                                             "overwrite": True}}
    server.mark_log()
    entry, seconds = run(comfy_server, g, timeout=900)
    log = server.log_since_mark()
    print(f"{key}: sampler + trainer {seconds:.1f} s; {texts(entry, 'group')}; {texts(entry, 'train')}")

    assert texts(entry, "group").startswith("group 3 → 2 at steps 1 of"), texts(entry, "group")
    frames = 5 if "Video" in case.latent["class_type"] else 1
    assert len(comfy_server.images(entry, "save_group")) == 2 * frames
    rewards = re.search(r"epochs 1–2/2, reward (\S+) → (\S+)", texts(entry, "train"))
    assert rewards, texts(entry, "train")
    assert all(abs(float(r)) < 1e6 for r in rewards.groups())  # finite, printed as numbers
    spec = json.loads((server.output_dir / "progrpo" / run_name / "run.json").read_text())["spec"]
    assert spec["sampler"]["cfg"] == (case.cfg_given or case.cfg), spec["sampler"]
    assert spec["run"]["gradient_checkpointing"] == 1
    assert f"ProGRPO {run_name}\nplan for " in log, log[-3000:]
    assert f"family {case.family}" in log, log[-3000:]
    if not key.startswith("unlisted"):
        assert "not in ProGRPO's family table" not in log
    else:
        assert "AuraFlow is not in ProGRPO's family table" in log, log[-3000:]
    if case.video_reward is not None:  # the video reward's parts reach the metrics: frame mean and consistency
        rows = [json.loads(ln) for ln in (server.output_dir / "progrpo" / run_name / "metrics.jsonl").read_text()
                .splitlines()]
        print(f"{key}: metrics of epoch 2: {rows[-1].get('components')}")
        assert '"consistency"' in json.dumps(rows[-1]) and '"stroke"' in json.dumps(rows[-1]), rows[-1]
    if case.weights_below:
        stored, fp32 = map(mib, PLAN_WEIGHTS.search(log).groups())
        print(f"{key}: the plan counts {stored:.2f} MiB of weights ({fp32:.2f} MiB in float32)")
        assert stored < case.weights_below * fp32
    lora = server.models_dir / "loras" / "host" / f"{run_name}.safetensors"
    raw = lora.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    targets = json.loads(header["__metadata__"]["progrpo.targets"])
    assert targets and all(k.startswith("diffusion_model.") for k in header if k != "__metadata__")
    if case.targets == "attention+mlp":
        assert any(re.search(r"mlp|feed_forward|ffn", t) for t in targets), targets

    # the saved LoRA in the stock loader: every key loads, the output changes
    g2 = graph(case, key)
    g2["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["model", 0], "lora_name": f"host/{run_name}.safetensors", "strength_model": 1.0}}
    samplers = [("base", ["model", 0]), ("with_lora", ["lora", 0])]
    if case.weights_below:  # quantized weights: the MODEL trained on reads as a fresh load of the file does
        fresh = server.models_dir / "diffusion_models" / f"fresh_{case.model['inputs']['unet_name']}"
        if not fresh.exists():
            fresh.symlink_to((server.models_dir / "diffusion_models" / case.model["inputs"]["unet_name"]).resolve())
        g2["fresh_model"] = json.loads(json.dumps(case.model))
        g2["fresh_model"]["inputs"]["unet_name"] = fresh.name
        samplers.append(("fresh", ["fresh_model", 0]))
    for nid, model in samplers:
        g2[nid + "_ks"] = {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": 2, "cfg": case.cfg_given or case.cfg, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0, "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0]}}
        decode_save(g2, [nid + "_ks", 0], ["vae", 0], f"family_{key}_{nid}", nid)
    server.mark_log()
    entry2, _ = run(comfy_server, g2, timeout=600)
    log = server.log_since_mark()
    assert not [ln for ln in log.splitlines() if any(u in ln for u in UNLOADED)], log
    a = pixels(comfy_server, comfy_server.images(entry2, "base")[0])
    b = pixels(comfy_server, comfy_server.images(entry2, "with_lora")[0])
    print(f"{key}: mean |base - lora| pixel difference {float(abs(a - b).mean()):.2f}")
    assert abs(a - b).max() > 0, f"{key}: the LoRA changed nothing"
    if case.weights_below:
        fresh_pixels = pixels(comfy_server, comfy_server.images(entry2, "fresh")[0])
        assert abs(a - fresh_pixels).max() == 0, f"{key}: training changed the quantized base weights"
