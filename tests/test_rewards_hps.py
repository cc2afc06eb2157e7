"""HPSv2 / HPSv2.1 against open_clip's own model, tokenizer and HPS's ResizeMaxSize transform."""
from __future__ import annotations

import shutil

import pytest
import torch

import reward_fixtures as rf
from progrpo_core.rewards import build_reward
from progrpo_core.rewards.weights import CheckpointMismatchError, RewardWeightsNotFound, UnsafeCheckpointError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return rf.tiny_models(tmp_path_factory)


@pytest.fixture(scope="module")
def hps(models):
    return build_reward("hpsv2.1", path=models["hps"], arch=rf.TINY_OPEN_CLIP)


def reference_hps(checkpoint, pil_images, prompt):
    """hpsv2.img_score.score with stock open_clip: create the model, load checkpoint['state_dict'],
    preprocess with ResizeMaxSize, model(image, text) -> diag(image_features @ text_features.T)."""
    import open_clip
    import torchvision.transforms.functional as TF

    model = open_clip.create_model(rf.TINY_OPEN_CLIP, pretrained=None, output_dict=True)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    tokenizer = open_clip.get_tokenizer(rf.TINY_OPEN_CLIP)
    scores = []
    with torch.no_grad():
        for im in pil_images:
            image = rf.hps_resize_max_size(TF.to_tensor(im.convert("RGB")))[None]
            out = model(image, tokenizer([prompt]))
            scores.append((out["image_features"] @ out["text_features"].T).diagonal()[0])
    return torch.stack(scores)


@pytest.mark.parametrize("hw", [(37, 53), (300, 517), (512, 512)])
def test_hps_matches_the_reference_scorer(models, hps, hw):
    x = rf.images(3, *hw, seed=hw[0])
    prompt = "a painting of a lighthouse"
    ref = reference_hps(models["hps"], [rf.to_pil(i) for i in x], prompt)
    ours = hps(x, [prompt] * 3)
    # HPS resizes float tensors, so the pipeline is reproduced exactly, not just closely
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert ours.max() - ours.min() > 1e-3
    assert ours.abs().max() <= 1.0  # a cosine, no logit scale


def test_hpsv2_and_hpsv21_load_their_own_files(models):
    v20 = build_reward("hpsv2", search_dirs=[models["root"]], arch=rf.TINY_OPEN_CLIP)
    v21 = build_reward("hpsv2.1", search_dirs=[models["root"]], arch=rf.TINY_OPEN_CLIP)
    x = rf.images(2, 64, 80)
    assert v20.name == "hpsv2" and v21.name == "hpsv2.1"
    assert not torch.allclose(v20(x, ["a", "b"]), v21(x, ["a", "b"]))


def test_each_prompt_encoded_once_and_one_image_forward(hps):
    calls = {"image": 0, "text": 0}
    orig_img, orig_txt = hps.model.encode_image, hps.model.encode_text

    def enc_img(pixels, *a, **k):
        calls["image"] += 1
        return orig_img(pixels, *a, **k)

    def enc_txt(tokens, *a, **k):
        calls["text"] += 1
        assert tokens.shape[0] == 2  # two distinct prompts among six images
        return orig_txt(tokens, *a, **k)

    hps.model.encode_image, hps.model.encode_text = enc_img, enc_txt
    try:
        hps(rf.images(6, 50, 60), ["a cat", "a dog"] * 3)
    finally:
        del hps.model.encode_image, hps.model.encode_text
    assert calls == {"image": 1, "text": 1}


def test_safetensors_conversion_gives_the_same_scores(models, hps, tmp_path):
    from safetensors.torch import save_file
    sd = torch.load(models["hps"], weights_only=True)["state_dict"]
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "HPS_v2.1_compressed.safetensors")
    other = build_reward("hpsv2.1", path=tmp_path, arch=rf.TINY_OPEN_CLIP)
    x = rf.images(2, 40, 90)
    torch.testing.assert_close(other(x, ["a", "b"]), hps(x, ["a", "b"]))


def test_fp16_checkpoint_loads_into_float32_and_bfloat16(models, hps, tmp_path):
    sd = torch.load(models["hps"], weights_only=True)["state_dict"]
    torch.save({"state_dict": {k: v.half() for k, v in sd.items()}}, tmp_path / "HPS_v2.1_compressed.pt")
    x = rf.images(2, 40, 90)
    half_file = build_reward("hpsv2.1", path=tmp_path, arch=rf.TINY_OPEN_CLIP)
    assert next(half_file.model.parameters()).dtype == torch.float32
    torch.testing.assert_close(half_file(x, ["a", "b"]), hps(x, ["a", "b"]), atol=2e-3, rtol=0)
    low = build_reward("hpsv2.1", path=models["hps"], arch=rf.TINY_OPEN_CLIP, dtype="bfloat16")
    assert next(low.model.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(low(x, ["a", "b"]), hps(x, ["a", "b"]), atol=3e-2, rtol=0)


def test_the_real_architecture_is_stock_vit_h_14():
    from progrpo_core.rewards.hps import build_open_clip
    model = build_open_clip("ViT-H-14")  # parameters on meta: costs nothing
    assert sum(p.numel() for p in model.parameters()) == 986_109_441
    assert len(model.state_dict()) == 686  # the key count of HPS's vendored open_clip ViT-H-14
    assert model.attn_mask.device.type == "cpu" and torch.isinf(model.attn_mask[0, 1])


def test_wrong_checkpoint_reports_counts(models, tmp_path):
    shutil.copy(models["aesthetic"], tmp_path / "HPS_v2.1_compressed.pt")  # an aesthetic head instead
    with pytest.raises(CheckpointMismatchError) as e:
        build_reward("hpsv2.1", path=tmp_path, arch=rf.TINY_OPEN_CLIP)
    n = len(torch.load(models["hps"], weights_only=True)["state_dict"])
    assert f"{n} of {n} expected weights are missing" in str(e.value)
    assert "10 of its 10 weights are unexpected" in str(e.value)
    assert "xswu/HPSv2" in str(e.value)


def test_checkpoint_for_another_size_reports_shapes(models, tmp_path):
    sd = torch.load(models["hps"], weights_only=True)["state_dict"]
    sd["text_projection"] = torch.zeros(32, 64)
    torch.save({"state_dict": sd}, tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(CheckpointMismatchError, match=r"1 have the wrong shape \(e.g. text_projection"):
        build_reward("hpsv2.1", path=tmp_path, arch=rf.TINY_OPEN_CLIP)


class Opaque:
    pass


def test_unsafe_pickle_is_refused(models, tmp_path):
    sd = torch.load(models["hps"], weights_only=True)["state_dict"]
    torch.save({"state_dict": sd, "args": Opaque()}, tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        build_reward("hpsv2.1", path=tmp_path, arch=rf.TINY_OPEN_CLIP)


def test_missing_file_names_what_to_download(tmp_path, monkeypatch):
    monkeypatch.delenv("PROGRPO_REWARD_DIR", raising=False)
    with pytest.raises(RewardWeightsNotFound) as e:
        build_reward("hpsv2.1", search_dirs=[tmp_path])
    assert str(tmp_path / "HPS_v2.1_compressed.pt") in str(e.value)
    assert "hf download xswu/HPSv2 HPS_v2.1_compressed.pt" in str(e.value)


def test_unknown_options_and_architectures(models):
    with pytest.raises(TypeError, match="unknown option"):
        build_reward("hpsv2.1", path=models["hps"], arch=rf.TINY_OPEN_CLIP, colour="red")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        build_reward("hpsv2.1", path=models["hps"], arch="ViT-Q-99")
