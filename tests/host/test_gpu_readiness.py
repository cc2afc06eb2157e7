"""What a GPU run depends on, checked on real ComfyUI architectures on the CPU (needs a ComfyUI
checkout: ``PROGRPO_COMFYUI``). Each check runs ``gpu_readiness.py`` in ComfyUI's python; see its
docstring for what is measured."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import HERE, REPO_ROOT


def readiness(comfy_env, comfy_models, *check) -> dict:
    cmd = [comfy_env.python, str(HERE / "gpu_readiness.py"), "--comfyui", str(comfy_env.comfyui), "--models",
           str(comfy_models), *check]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    return result


@pytest.mark.parametrize("kind", ["sdxl_v", "sd3"])
def test_half_precision_training_keeps_the_gradient(comfy_env, comfy_models, kind):
    # a UNet (v-prediction, 64 channels: SD1.5's tiny UNet has ComfyUI's 320 and made this test take
    # 20 minutes in half precision, which this CPU emulates) and an MMDiT, one epoch per precision
    runs = readiness(comfy_env, comfy_models, "precision", kind, "fp32,fp16,bf16", "1")["runs"]
    ref = runs["fp32"]
    for dtype in ("fp16", "bf16"):
        r = runs[dtype]
        assert r["weights"] == r["compute"] == {"fp16": "torch.float16", "bf16": "torch.bfloat16"}[dtype]
        assert r["scaler"] == (dtype == "fp16")  # fp16 trains with loss scaling
        assert r["finite"] and r["steps"] > 0
        # every LoRA entry that fp32 moves, half precision moves too (a few are structurally zero)
        assert r["moved_fraction"] >= 0.99 * ref["moved_fraction"] > 0


def test_bf16_training_learns(comfy_env, comfy_models):
    r = readiness(comfy_env, comfy_models, "precision", "sd3", "bf16")["runs"]["bf16"]  # 8 epochs
    assert r["finite"] and r["eval_after"] > r["eval_before"], r


def test_the_lora_branch_is_exact_where_the_compute_is(comfy_env, comfy_models):
    r = readiness(comfy_env, comfy_models, "branch")
    # a delta of std 1e-5 on bf16 weights computed in fp32 changes the output as the fp32 reference
    assert r["branch_fp32"] <= 1e-2
    # in bf16 compute the output's own rounding hides most of it, but less than merging into the weight
    assert r["branch_bf16"] < r["merge_bf16"]


@pytest.mark.parametrize("kind", ["unet", "mmdit", "flux"])
def test_gradient_checkpointing_halves_the_bytes_saved_for_backward(comfy_env, comfy_models, kind):
    r = readiness(comfy_env, comfy_models, "checkpointing", kind)
    assert r["modules"] > 0 and r["ratio"] <= 0.5, r


def test_optimizer_state_and_ema_stay_with_the_lora_after_an_unload(comfy_env, comfy_models):
    r = readiness(comfy_env, comfy_models, "rehome")
    d = r["devices"]
    assert len(d["lora"]) == 1 and d["optimizer"] == d["ema"] == d["lora"] and r["steps"] == 2


def test_training_under_memory_sliced_attention(comfy_env, comfy_models):
    # ComfyUI slices attention by free memory when it has no SDPA/xformers kernel; its chunked path
    # is not differentiable and a recomputed block would slice differently: training pins SDPA
    r = readiness(comfy_env, comfy_models, "sliced_attention")
    assert r["attention"] in ("attention_sub_quad", "attention_split"), r  # what the CPU runs by default
    assert r["steps"] == 1 and r["loss"] is not None, r


def test_the_training_copy_of_a_dynamic_vram_model_is_a_plain_fully_loaded_patcher(comfy_env, comfy_models):
    # ComfyUI 0.33 started by main.py on NVIDIA gives every standard loader's MODEL a ModelPatcherDynamic,
    # whose weights stream through reused buffers; training needs its own whole copy
    r = readiness(comfy_env, comfy_models, "dynamic")
    assert r["given_class"] == "ModelPatcherDynamic" and r["given_dynamic"], r
    assert r["class"] == "ModelPatcher" and not r["dynamic"], r
    assert not r["shares_weights"] and not r["same_model"] and not r["inference_weights"], r
    # dynamic VRAM loads a float32 file's layers as float32 (it casts per call); the plain copy is
    # loaded as without dynamic VRAM, every weight in the model's dtype (an H200 crashed on fp32
    # weights in an fp16 forward), and dynamic VRAM stays on for everything else
    assert "torch.float32" in r["given_dtypes"], r
    assert r["dtypes_as_legacy"] and r["dtypes"] == r["legacy_dtypes"], r
    assert r["dynamic_flag_during"] and r["dynamic_flag_after"], r


def test_the_trained_model_stays_loaded_while_comfyui_frees_memory_mid_session(comfy_env, comfy_models):
    r = readiness(comfy_env, comfy_models, "kept_loaded")
    assert r["before"] and r["during"] and r["finite"], r
    assert not r["after"], r  # after the session ComfyUI may unload it again


def test_on_comfyui_the_cut_is_judged_with_the_lora_off(comfy_env, comfy_models):
    """``schedule.preview_model reference`` through the host adapter: the previews the cut scored
    are the prediction of the model with the trained LoRA off, not with it on."""
    r = readiness(comfy_env, comfy_models, "judge")
    assert r["survivors"] == 3
    assert r["to_reference"] <= 1e-4 * max(1.0, r["scale"]), r
    assert r["to_policy"] > 1e-2 * r["scale"], r
