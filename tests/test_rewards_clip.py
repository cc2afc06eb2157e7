"""PickScore, CLIP score and the LAION aesthetic predictor against transformers' own pipelines."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import reward_fixtures as rf
from progrpo_core.rewards import RewardInputError, build_reward
from progrpo_core.rewards.preprocess import ImagePrep
from progrpo_core.rewards.weights import CheckpointMismatchError, RewardWeightsNotFound


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return rf.tiny_models(tmp_path_factory)


@pytest.fixture(scope="module")
def pickscore(models):
    return build_reward("pickscore", path=models["pickscore"])


def official_pickscore(folder, pil_images, prompt, image_processor=None):
    """PickScore's README procedure: CLIPProcessor + CLIPModel from the same folder. With
    transformers >= 5 the processor's image part defaults to a torchvision backend;
    ``image_processor`` replaces it (the PIL backend, the only one of transformers 4)."""
    from transformers import CLIPModel, CLIPProcessor
    processor = CLIPProcessor.from_pretrained(str(folder))
    model = CLIPModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        image_inputs = (image_processor or processor.image_processor)(images=pil_images, return_tensors="pt")
        text_inputs = processor(text=[prompt], padding=True, truncation=True, max_length=77, return_tensors="pt")
        img = model.get_image_features(**image_inputs)
        txt = model.get_text_features(**text_inputs)
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return model.logit_scale.exp() * (txt @ img.T)[0], model


def pil_backend(folder):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    return CLIPImageProcessorPil.from_pretrained(str(folder))


@pytest.mark.parametrize("hw", [(300, 517), (37, 53), (1000, 230)])
def test_pickscore_matches_the_official_procedure(models, pickscore, hw):
    x = rf.images(3, *hw, seed=11)
    prompt = "a red car on a beach at sunset"
    pil = [rf.to_pil(i) for i in x]
    ref, model = official_pickscore(models["pickscore"], pil, prompt, pil_backend(models["pickscore"]))
    ours = pickscore(x, [prompt] * 3)
    assert ours.shape == (3,) and ours.dtype == torch.float32
    # the scale is the checkpoint's (exp(log 50) in the tiny model), not a hard-coded 100
    assert pickscore.scale == pytest.approx(50.0, rel=1e-5)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert ours.std() > 0.2  # the images are told apart, so the comparison above means something
    # transformers 5's default torchvision backend rounds once instead of per pass: close, not equal
    fast, _ = official_pickscore(models["pickscore"], pil, prompt)
    torch.testing.assert_close(ours, fast, atol=0.05, rtol=0)
    # given the same pixels, the model part agrees exactly with transformers' CLIPModel.forward
    from transformers import CLIPProcessor
    tokens = CLIPProcessor.from_pretrained(str(models["pickscore"]))(text=[prompt] * 3, padding=True,
                                                                    return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=pickscore.prep(x), **tokens)
    torch.testing.assert_close(ours, out.logits_per_image.diagonal(), atol=1e-4, rtol=1e-5)


def test_pickscore_preprocessing_is_the_folders_processor(models, pickscore):
    assert pickscore.prep == ImagePrep(size=224, crop=(224, 224), crop_rounding="floor", resampler="pil")
    x = rf.images(2, 53, 37, seed=2)
    ref = pil_backend(models["pickscore"])(images=[rf.to_pil(i) for i in x], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pickscore.prep(x), ref, atol=2e-6, rtol=0)


def test_a_folder_saved_by_transformers_5_loads(models, pickscore, tmp_path):
    # transformers >= 5 saves a CLIPProcessor as processor_config.json (the image processor an entry
    # in it), with no preprocessor_config.json: whatever CLIPProcessor loads, we load
    from transformers import CLIPProcessor
    folder = _copy(models, tmp_path)
    CLIPProcessor.from_pretrained(str(folder)).save_pretrained(str(folder))
    (folder / "preprocessor_config.json").unlink(missing_ok=True)
    assert json.loads((folder / "processor_config.json").read_text())["image_processor"]["crop_size"]
    reward = build_reward("pickscore", path=folder)
    assert reward.prep == pickscore.prep
    x = rf.images(2, 64, 65, seed=3)
    torch.testing.assert_close(reward(x, ["a", "b"]), pickscore(x, ["a", "b"]), atol=0, rtol=0)


def test_distinct_prompts_and_images_pair_up(models, pickscore):
    x = rf.images(4, 64, 64, seed=5)
    prompts = [rf.PROMPTS[0], rf.PROMPTS[1], rf.PROMPTS[0], rf.PROMPTS[2]]
    batch = pickscore(x, prompts)
    single = torch.stack([pickscore(x[i:i + 1], [p])[0] for i, p in enumerate(prompts)])
    torch.testing.assert_close(batch, single, atol=1e-4, rtol=1e-5)


def test_one_forward_per_batch(pickscore):
    calls = {"vision": 0, "text": 0}
    hooks = [pickscore.model.vision_model.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1)),
             pickscore.model.text_model.register_forward_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1))]
    try:
        pickscore(rf.images(6, 40, 40), ["a cat", "a dog"] * 3)
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"vision": 1, "text": 1}


def test_clip_score_is_cosine(models, pickscore):
    clip = build_reward("clip", path=models["pickscore"])
    hundred = build_reward("clip", path=models["pickscore"], scale=100)
    x = rf.images(2, 90, 70, seed=8)
    prompts = rf.PROMPTS[:2]
    cos = clip(x, prompts)
    assert cos.abs().max() <= 1.0
    torch.testing.assert_close(cos * pickscore.scale, pickscore(x, prompts), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(hundred(x, prompts), 100 * cos, atol=1e-4, rtol=1e-5)


def test_bfloat16_model_runs_in_bfloat16(models, pickscore):
    low = build_reward("pickscore", path=models["pickscore"], dtype="bf16")
    assert next(low.model.parameters()).dtype == torch.bfloat16
    x = rf.images(3, 37, 53, seed=4)
    got = low(x, rf.PROMPTS[:3])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, pickscore(x, rf.PROMPTS[:3]), atol=0.5, rtol=0.05)


@pytest.mark.parametrize("bad, match", [
    (lambda x: x.permute(0, 2, 3, 1), "movedim"),
    (lambda x: x * 255, r"\[0, 1\]"),
    (lambda x: x.to(torch.uint8), "float"),
])
def test_bad_images_are_refused_with_a_hint(pickscore, bad, match):
    with pytest.raises(RewardInputError, match=match):
        pickscore(bad(rf.images(2, 32, 32)), ["a", "b"])


def test_prompt_count_must_match(pickscore):
    with pytest.raises(RewardInputError, match="2 images but 1 prompts"):
        pickscore(rf.images(2, 32, 32), ["a"])


# --- wrong folders and checkpoints --------------------------------------------------------------

def _copy(models, tmp_path, name="PickScore_v1"):
    dst = tmp_path / name
    shutil.copytree(models["pickscore"], dst)
    return dst


def test_folder_of_another_model_type(models, tmp_path):
    folder = _copy(models, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="'bert' model .*expected a CLIP model"):
        build_reward("pickscore", path=folder)


def test_folder_without_weights(models, tmp_path):
    folder = _copy(models, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(RewardWeightsNotFound, match="no weights .*yuvalkirstain/PickScore_v1"):
        build_reward("pickscore", path=folder)


def test_folder_without_tokenizer_or_processor(models, tmp_path):
    folder = _copy(models, tmp_path)
    for f in ("tokenizer.json", "vocab.json", "merges.txt"):
        (folder / f).unlink()
    with pytest.raises(RewardWeightsNotFound, match="no CLIP tokenizer files .*processor=PATH"):
        build_reward("pickscore", path=folder)
    # a processor folder supplies them (the official README takes them from laion/CLIP-ViT-H-14)
    build_reward("pickscore", path=folder, processor=models["pickscore"])
    (folder / "preprocessor_config.json").unlink()
    tokenizer_only = tmp_path / "tokenizer_only"
    rf.write_clip_tokenizer(tokenizer_only)
    with pytest.raises(RewardWeightsNotFound) as e:
        build_reward("pickscore", path=folder, processor=tokenizer_only)
    msg = str(e.value)
    assert "no CLIP image processor could be loaded" in msg and "processor=PATH" in msg
    assert f"{tokenizer_only} has neither preprocessor_config.json (transformers < 5) nor processor_config.json" in msg
    # a processor file without an image part (a tokenizer-only processor) is named as such
    (tokenizer_only / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor"}))
    with pytest.raises(RewardWeightsNotFound, match="processor_config.json has no 'image_processor' entry"):
        build_reward("pickscore", path=folder, processor=tokenizer_only)


def test_weights_of_another_model(models, tmp_path):
    from safetensors.torch import load_file, save_file
    folder = _copy(models, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state = {("other." + k if k.startswith("vision_model.") else k): v for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as e:
        build_reward("pickscore", path=folder)
    n_vision = sum(k.startswith("other.vision_model.") for k in state)
    assert f"{n_vision} of" in str(e.value) and "missing" in str(e.value) and "unexpected" in str(e.value)


# --- aesthetic ------------------------------------------------------------------------------------

def test_aesthetic_matches_the_reference_predictor(models):
    """improved-aesthetic-predictor's simple_inference: OpenAI CLIP preprocess, encode_image,
    L2-normalise (numpy), then the MLP loaded with load_state_dict."""
    import torchvision.transforms as T
    from transformers import CLIPModel

    reward = build_reward("aesthetic", path=models["aesthetic"])
    x = rf.images(3, 300, 517, seed=9)
    clip = CLIPModel.from_pretrained(str(models["clip_l14"])).eval()
    preprocess = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                            T.ToTensor(), T.Normalize((0.48145466, 0.4578275, 0.40821073),
                                                      (0.26862954, 0.26130258, 0.27577711))])
    mlp = torch.nn.Module()  # the reference MLP(pl.LightningModule) holds its layers as .layers
    mlp.layers = torch.nn.Sequential(torch.nn.Linear(768, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                                     torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                                     torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))
    mlp.load_state_dict(torch.load(models["aesthetic"], weights_only=True))
    mlp.eval()

    def predict(pixels):
        with torch.no_grad():
            emb = clip.get_image_features(pixel_values=pixels)
            emb = getattr(emb, "pooler_output", emb).numpy()
            emb = emb / np.expand_dims(np.linalg.norm(emb, 2, -1), -1)
            return mlp.layers(torch.from_numpy(emb).float()).squeeze(-1)

    ours = reward(x, [""] * 3)
    ref = predict(torch.stack([preprocess(rf.to_pil(i)) for i in x]))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert ours.max() - ours.min() > 100 * 1e-5                 # ... far below the images' spread
    torch.testing.assert_close(ours, predict(reward.prep(x)), atol=1e-5, rtol=1e-5)


def test_aesthetic_finds_its_backbone_next_to_the_head_or_via_clip_path(models, tmp_path):
    head = tmp_path / "heads" / "sac+logos+ava1-l14-linearMSE.pth"
    head.parent.mkdir()
    shutil.copy(models["aesthetic"], head)
    with pytest.raises(RewardWeightsNotFound, match="openai/clip-vit-large-patch14"):
        build_reward("aesthetic", path=head)
    r = build_reward("aesthetic", path=head, clip_path=models["clip_l14"])
    r2 = build_reward("aesthetic", path=head, search_dirs=[models["root"]])
    x = rf.images(1, 50, 50)
    torch.testing.assert_close(r(x, [""]), r2(x, [""]))


def test_aesthetic_head_for_another_embedding_size(models, tmp_path):
    torch.save(rf.aesthetic_head_state(dim=1024), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(CheckpointMismatchError, match="takes 1024-d embeddings .* gives 768-d"):
        build_reward("aesthetic", path=tmp_path, clip_path=models["clip_l14"])


def test_aesthetic_given_an_hps_checkpoint(models, tmp_path):
    shutil.copy(models["hps"], tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(CheckpointMismatchError, match=r"10 of 10 expected weights are missing.*unexpected"):
        build_reward("aesthetic", path=tmp_path, clip_path=models["clip_l14"])
