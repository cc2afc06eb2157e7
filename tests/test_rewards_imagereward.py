"""ImageReward against a from-the-definition twin that reads ImageReward.pt's own key names.

The twin below is plain tensor code following THUDM/ImageReward's BLIP ``vit.py`` (timm blocks,
LayerNorm eps 1e-6) and ``med.py`` (BERT without token types, a cross-attention after each
self-attention, additive -10000 mask) and ``ImageReward.score`` (CLS -> MLP -> normalise). It
shares nothing with the implementation under test, which renames the keys onto transformers'
BLIP modules, so a wrong key mapping, head count or mask shows up as a score difference.
"""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

import reward_fixtures as rf
from progrpo_core.rewards import build_reward
from progrpo_core.rewards.imagereward import REWARD_MEAN, REWARD_STD, map_imagereward_keys
from progrpo_core.rewards.weights import CheckpointMismatchError, RewardWeightsNotFound


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return rf.tiny_models(tmp_path_factory)


@pytest.fixture(scope="module")
def reward(models):
    return build_reward("imagereward", path=models["imagereward"].parent)


def _lin(sd, p, x):
    return F.linear(x, sd[p + ".weight"], sd[p + ".bias"])


def _ln(sd, p, x, eps):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def _attend(q, k, v, heads, mask=None):
    B, Lq, C = q.shape
    split = lambda t: t.reshape(B, t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s + mask
    return (s.softmax(-1) @ v).transpose(1, 2).reshape(B, Lq, C)


def twin_vit(sd, pixels, heads):
    p = "blip.visual_encoder."
    patch = sd[p + "patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(pixels, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[p + "cls_token"].expand(x.shape[0], -1, -1), x], 1)
    x = x + sd[p + "pos_embed"][:, :x.shape[1]]
    i = 0
    while f"{p}blocks.{i}.norm1.weight" in sd:
        b = f"{p}blocks.{i}."
        h = _ln(sd, b + "norm1", x, 1e-6)
        q, k, v = _lin(sd, b + "attn.qkv", h).chunk(3, dim=-1)
        x = x + _lin(sd, b + "attn.proj", _attend(q, k, v, heads))
        h = _ln(sd, b + "norm2", x, 1e-6)
        x = x + _lin(sd, b + "mlp.fc2", F.gelu(_lin(sd, b + "mlp.fc1", h)))
        i += 1
    return _ln(sd, p + "norm", x, 1e-6)


def twin_text(sd, ids, att, image_embeds, med):
    p = "blip.text_encoder."
    x = sd[p + "embeddings.word_embeddings.weight"][ids] + sd[p + "embeddings.position_embeddings.weight"][:ids.shape[1]]
    x = _ln(sd, p + "embeddings.LayerNorm", x, med["layer_norm_eps"])
    mask = (1.0 - att[:, None, None, :].float()) * -10000.0
    heads = med["num_attention_heads"]
    for i in range(med["num_hidden_layers"]):
        b = f"{p}encoder.layer.{i}."
        for name, kv, m in (("attention", x, mask), ("crossattention", image_embeds, None)):
            a = f"{b}{name}."
            ctx = _attend(_lin(sd, a + "self.query", x), _lin(sd, a + "self.key", kv), _lin(sd, a + "self.value", kv),
                          heads, m)
            x = _ln(sd, a + "output.LayerNorm", _lin(sd, a + "output.dense", ctx) + x, med["layer_norm_eps"])
        h = F.gelu(_lin(sd, b + "intermediate.dense", x))
        x = _ln(sd, b + "output.LayerNorm", _lin(sd, b + "output.dense", h) + x, med["layer_norm_eps"])
    return x


def twin_score(sd, pixels, ids, att, med, vit_heads):
    emb = twin_vit(sd, pixels, vit_heads)
    cls = twin_text(sd, ids, att, emb, med)[:, 0]
    r = cls
    for idx in (0, 2, 4, 6, 7):
        r = _lin(sd, f"mlp.layers.{idx}", r)
    return (r.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072


@pytest.mark.parametrize("hw", [(37, 53), (300, 517)])
def test_imagereward_matches_the_twin(models, reward, hw):
    sd = torch.load(models["imagereward"], weights_only=True)
    med = json.loads((models["imagereward"].parent / "med_config.json").read_text())
    x = rf.images(4, *hw, seed=hw[0])
    prompts = ["a photo of a cat", "a red car on the beach at sunset", "an unknown wordpiece xyz", "a"]
    ours = reward(x, prompts)
    from transformers import BertTokenizer
    tok = BertTokenizer.from_pretrained(str(models["imagereward"].parent))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    t = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert t["attention_mask"].sum(1).min() < 35  # padding is present, so the mask matters
    pixels = torch.stack([openai_clip_transform()(rf.to_pil(i)) for i in x])   # BLIP's transform on PIL images
    with torch.no_grad():
        ref = twin_score(sd, pixels, t["input_ids"], t["attention_mask"], med, vit_heads=rf.TINY_VIT["width"] // 64)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-5)
    assert ours.max() - ours.min() > 0.05


def openai_clip_transform():
    import torchvision.transforms as T
    return T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])


def test_imagereward_preprocessing_is_openai_clip_transform(reward):
    for hw in [(37, 53), (64, 65), (517, 300)]:
        x = rf.images(2, *hw, seed=1)
        ref = torch.stack([openai_clip_transform()(rf.to_pil(i)) for i in x])
        torch.testing.assert_close(reward.prep(x), ref, atol=2e-6, rtol=0)


def test_prompt_tokenisation_is_bert_uncased_35(reward):
    t = reward.tokenizer(["A PHOTO of CATS"], padding="max_length", truncation=True, max_length=35)
    ids = t["input_ids"][0]
    assert len(ids) == 35 and ids[0] == rf.BERT_VOCAB.index("[CLS]")
    words = [rf.BERT_VOCAB[i] for i in ids[1:6]]
    assert words == ["a", "photo", "of", "cat", "##s"]
    assert len(reward.tokenizer) == len(rf.BERT_VOCAB) + 2  # [DEC] and [ENC] added, as the reference


def test_key_mapping_covers_every_weight(models):
    sd = torch.load(models["imagereward"], weights_only=True)
    mapped = map_imagereward_keys(sd)
    assert not [k for k in mapped if k.startswith("blip.")]
    dropped = set(sd) - {k for k in sd if k.startswith(("blip.visual_encoder.", "blip.text_encoder.", "mlp."))}
    assert dropped == {"blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight",
                       "blip.text_proj.bias"}


def test_normalisation_constants():
    assert REWARD_MEAN == 0.16717362830052426 and REWARD_STD == 1.0333394966054072


def test_tokenizer_found_in_a_sibling_bert_folder(tmp_path, reward):
    pt = rf.build_imagereward(tmp_path / "ImageReward", seed=0, tokenizer_here=False)
    other = build_reward("imagereward", path=pt)
    x = rf.images(2, 60, 60)
    torch.testing.assert_close(other(x, ["a cat", "a dog"]), reward(x, ["a cat", "a dog"]))


def test_missing_tokenizer_says_to_get_bert_vocab(tmp_path, monkeypatch):
    monkeypatch.delenv("PROGRPO_REWARD_DIR", raising=False)
    pt = rf.build_imagereward(tmp_path / "ImageReward", seed=0, tokenizer_here=False)
    shutil.rmtree(tmp_path / "bert-base-uncased")
    with pytest.raises(RewardWeightsNotFound, match="google-bert/bert-base-uncased") as e:
        build_reward("imagereward", path=pt)
    assert str(tmp_path / "bert-base-uncased") in str(e.value)


def test_wrong_vocabulary_size(tmp_path):
    pt = rf.build_imagereward(tmp_path / "ImageReward", seed=0)
    (pt.parent / "vocab.txt").write_text("\n".join(rf.BERT_VOCAB + ["extra"]) + "\n")
    with pytest.raises(CheckpointMismatchError, match="vocab_size=.*bert-base-uncased's vocab.txt"):
        build_reward("imagereward", path=pt)


def test_missing_or_wrong_med_config(tmp_path):
    pt = rf.build_imagereward(tmp_path / "ImageReward", seed=0)
    cfg = dict(rf.TINY_MED_CONFIG, add_cross_attention=False)
    (pt.parent / "med_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="add_cross_attention"):
        build_reward("imagereward", path=pt)
    (pt.parent / "med_config.json").unlink()
    with pytest.raises(RewardWeightsNotFound, match="med_config.json .*THUDM/ImageReward"):
        build_reward("imagereward", path=pt)


def test_checkpoint_of_another_model_reports_counts(models, tmp_path):
    folder = tmp_path / "ImageReward"
    folder.mkdir()
    shutil.copy(models["hps"], folder / "ImageReward.pt")
    for f in ("med_config.json", "vocab.txt"):
        shutil.copy(models["imagereward"].parent / f, folder / f)
    with pytest.raises(CheckpointMismatchError) as e:
        build_reward("imagereward", path=folder)
    assert "expected weights are missing" in str(e.value) and "unexpected" in str(e.value)
    # the missing count is that of the real ImageReward (BLIP ViT-L) since nothing could be inferred
    assert "THUDM/ImageReward" in str(e.value)


def test_truncated_text_tower_reports_missing_layers(models, tmp_path):
    folder = tmp_path / "ImageReward"
    folder.mkdir()
    sd = torch.load(models["imagereward"], weights_only=True)
    sd = {k: v for k, v in sd.items() if ".encoder.layer.1." not in k}
    torch.save(sd, folder / "ImageReward.pt")
    for f in ("med_config.json", "vocab.txt"):
        shutil.copy(models["imagereward"].parent / f, folder / f)
    n = sum(".encoder.layer.1." in k for k in torch.load(models["imagereward"], weights_only=True))
    with pytest.raises(CheckpointMismatchError, match=f"{n} of .* expected weights are missing"):
        build_reward("imagereward", path=folder)


def test_bfloat16(models, reward):
    low = build_reward("imagereward", path=models["imagereward"], dtype="bf16")
    assert next(low.model.visual.parameters()).dtype == torch.bfloat16
    assert next(low.model.mlp.parameters()).dtype == torch.float32  # the head runs in float32, as the reference
    x = rf.images(3, 64, 64, seed=2)
    torch.testing.assert_close(low(x, rf.PROMPTS[:3]), reward(x, rf.PROMPTS[:3]), atol=0.1, rtol=0)


def test_unused_blip_entries_are_ignored_but_foreign_encoder_keys_are_not(models, tmp_path):
    folder = tmp_path / "ImageReward"
    folder.mkdir()
    for f in ("med_config.json", "vocab.txt"):
        shutil.copy(models["imagereward"].parent / f, folder / f)
    sd = torch.load(models["imagereward"], weights_only=True)
    torch.save({**sd, "blip.itm_head.weight": torch.zeros(2, 32)}, folder / "ImageReward.pt")
    build_reward("imagereward", path=folder)  # like the reference's strict=False load
    torch.save({**sd, "blip.text_encoder.pooler.dense.weight": torch.zeros(32, 32)}, folder / "ImageReward.pt")
    with pytest.raises(CheckpointMismatchError, match="1 of its .* weights are unexpected .*pooler"):
        build_reward("imagereward", path=folder)
