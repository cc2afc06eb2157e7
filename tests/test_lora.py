import pytest
import torch
from safetensors import safe_open

from progrpo_core.embedded import load_digits_model
from progrpo_core.lora import LoraAdapter, LoraFileError, lora_from_file


def _randomise(adapter, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_keys_follow_comfyui_format(tmp_path, flow_model):
    ad = LoraAdapter(flow_model, rank=4, alpha=8)
    path = ad.save(tmp_path / "l.safetensors", {"method": "pro-grpo", "steps": 3})
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "diffusion_model.blocks.0.fc1.lora_down.weight" in keys
    assert "diffusion_model.blocks.0.fc1.lora_up.weight" in keys
    assert "diffusion_model.blocks.0.fc1.alpha" in keys
    assert all(k.startswith("diffusion_model.") and k.rsplit(".", 2)[-2:] != ["lora_A", "weight"] for k in keys)
    down = ad.comfy_state_dict()["diffusion_model.blocks.0.fc1.lora_down.weight"]
    up = ad.comfy_state_dict()["diffusion_model.blocks.0.fc1.lora_up.weight"]
    assert down.shape == (4, 192) and up.shape == (384, 4)  # (rank, in), (out, rank)
    assert meta["progrpo.method"] == "pro-grpo" and meta["progrpo.steps"] == "3"
    assert meta["progrpo.base_model_hash"] == flow_model.fingerprint()
    assert "pro-grpo" not in path.name


def test_comfyui_formula_reproduces_the_adapted_layer(flow_model):
    ad = LoraAdapter(flow_model, rank=4, alpha=8)
    _randomise(ad)
    sd = ad.comfy_state_dict()
    layer = flow_model.net.blocks[1].fc2
    x = torch.randn(3, 384)
    w = layer.base_layer.weight
    up, down = sd["diffusion_model.blocks.1.fc2.lora_up.weight"], sd["diffusion_model.blocks.1.fc2.lora_down.weight"]
    alpha = float(sd["diffusion_model.blocks.1.fc2.alpha"])
    merged = w + (alpha / down.shape[0]) * up @ down  # what ComfyUI's LoRA patch computes
    torch.testing.assert_close(layer(x), x @ merged.T + layer.base_layer.bias, rtol=1e-5, atol=1e-5)


def test_round_trip_and_reference_policy(tmp_path):
    m1 = load_digits_model("digits-flow")
    ad = LoraAdapter(m1, rank=4, alpha=8)
    _randomise(ad, 1)
    path = ad.save(tmp_path / "l.safetensors")
    m2 = load_digits_model("digits-flow")
    ad2 = lora_from_file(m2, path)
    for (n1, p1), (n2, p2) in zip(ad.named_parameters(), ad2.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    x, s, c = torch.randn(4, 1, 8, 8), torch.full((4,), 0.5), torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(m1.denoise(x, s, c), m2.denoise(x, s, c))
    base = load_digits_model("digits-flow")
    with ad2.disabled():
        torch.testing.assert_close(m2.denoise(x, s, c), base.denoise(x, s, c))
    assert not torch.allclose(m2.denoise(x, s, c), base.denoise(x, s, c))
    ad2.remove()
    torch.testing.assert_close(m2.denoise(x, s, c), base.denoise(x, s, c))


def test_lora_from_another_model_is_refused(tmp_path):
    ad = LoraAdapter(load_digits_model("digits-eps"), rank=2, alpha=2)
    path = ad.save(tmp_path / "eps.safetensors")
    with pytest.raises(LoraFileError, match="trained on base model .* but this model is"):
        lora_from_file(load_digits_model("digits-flow"), path)


def test_lora_with_foreign_modules_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"diffusion_model.joint_blocks.0.attn.qkv.lora_down.weight": torch.zeros(2, 4),
               "diffusion_model.joint_blocks.0.attn.qkv.lora_up.weight": torch.zeros(4, 2)},
              str(tmp_path / "sd3.safetensors"))
    with pytest.raises(LoraFileError, match="module\\(s\\) not in this model"):
        lora_from_file(load_digits_model("digits-flow"), tmp_path / "sd3.safetensors")


def test_not_a_lora_file(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    with pytest.raises(LoraFileError, match="not a readable safetensors"):
        lora_from_file(load_digits_model("digits-flow"), tmp_path / "x.safetensors")
