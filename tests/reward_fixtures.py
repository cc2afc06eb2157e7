"""Tiny reward models in the real releases' file layouts, built offline for the reward tests.

Each builder makes a model with the real architecture class from a small config, with random
weights, and writes it the way the real release ships:

- ``PickScore_v1``-style transformers folder: config.json + model.safetensors + CLIP tokenizer
  (vocab.json/merges.txt written from open_clip's bundled BPE, i.e. the OpenAI CLIP vocabulary)
  + a legacy ``preprocessor_config.json`` (``"size": 224`` as in the real repo);
- HPS-style ``.pt``: ``{"state_dict": ..., "epoch": ...}`` of an open_clip model whose config is
  registered with ``open_clip.add_model_config`` at runtime;
- ImageReward-style folder: ``ImageReward.pt`` with the BLIP key names, ``med_config.json`` and a
  small BERT ``vocab.txt``;
- the aesthetic head ``sac+logos+ava1-l14-linearMSE.pth`` (``layers.{0,2,4,6,7}``).

Run ``python tests/reward_fixtures.py`` for the throughput benchmark quoted in docs/REWARDS.md.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # no test may touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

TINY_OPEN_CLIP = "progrpo-tiny-ViT-H-14"
PROMPTS = ["a photo of a cat", "a red car on a beach at sunset", "A PAINTING of a lighthouse, oil on canvas",
           "a cat"]


def images(n: int, h: int, w: int, seed: int = 0, quantised: bool = True) -> torch.Tensor:
    """(n, 3, h, w) in [0, 1]: smooth structure plus noise, 8-bit levels if ``quantised``."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, max(2, h // 6), max(2, w // 6), generator=g)
    x = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    x = (0.8 * x + 0.2 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)
    return (x * 255).round() / 255 if quantised else x


def to_pil(img: torch.Tensor):
    from PIL import Image
    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


# ---------------------------------------------------------------------------------------------
# transformers CLIP folders (PickScore_v1 / clip-vit-large-patch14 layout)

def write_clip_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt of the OpenAI CLIP BPE, taken from open_clip's bundled vocabulary."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    # open_clip spells the two special tokens differently; the released vocab.json uses these
    hf_names = {tok.sot_token_id: "<|startoftext|>", tok.eot_token_id: "<|endoftext|>"}
    vocab = {hf_names.get(i, t): i for t, i in tok.encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m, _ in merges) + "\n",
                                       encoding="utf-8")
    from transformers import CLIPTokenizer
    hf = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    hf.save_pretrained(str(folder))  # tokenizer.json + tokenizer_config.json, as the real repos ship


LEGACY_PREPROCESSOR = {
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3, "size": 224,
}


def tiny_clip_config(projection_dim: int = 32, logit_scale: float = math.log(50.0)):
    from transformers import CLIPConfig
    return CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=projection_dim, logit_scale_init_value=logit_scale)


def build_hf_clip(folder: Path, seed: int = 0, projection_dim: int = 32, logit_scale: float = math.log(50.0),
                  processor: bool = True, tokenizer: bool = True) -> Path:
    """A tiny CLIPModel saved as a Hugging Face folder (safetensors)."""
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(projection_dim, logit_scale)).eval()
    with torch.no_grad():  # larger weights than the 0.02 init, so scores depend visibly on the pixels
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embedding" not in name:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    if tokenizer:
        write_clip_tokenizer(folder)
    if processor:
        (folder / "preprocessor_config.json").write_text(json.dumps(LEGACY_PREPROCESSOR, indent=2))
    return folder


# ---------------------------------------------------------------------------------------------
# open_clip (HPS layout)

TINY_OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny_open_clip(folder: Path) -> str:
    import open_clip
    if TINY_OPEN_CLIP not in open_clip.list_models():
        folder.mkdir(parents=True, exist_ok=True)
        cfg = folder / f"{TINY_OPEN_CLIP}.json"
        cfg.write_text(json.dumps(TINY_OPEN_CLIP_CFG))
        open_clip.add_model_config(cfg)
    return TINY_OPEN_CLIP


def build_hps(file: Path, seed: int = 0) -> Path:
    """A tiny open_clip model saved as HPS does: torch.save({'state_dict': ..., 'epoch': ...})."""
    import open_clip

    register_tiny_open_clip(file.parent / "open_clip_configs")
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_OPEN_CLIP, pretrained=None)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "epoch": 4, "name": "tiny"}, file)
    return file


def hps_resize_max_size(img, size: int = 224):
    """HPSv2's ResizeMaxSize + Normalize, written from its definition with torchvision ops."""
    import torchvision.transforms.functional as TF
    h, w = img.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        new = tuple(round(d * scale) for d in (h, w))
        img = TF.resize(img, list(new), TF.InterpolationMode.BICUBIC)
        ph, pw = size - new[0], size - new[1]
        img = TF.pad(img, padding=[pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    return TF.normalize(img, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


# ---------------------------------------------------------------------------------------------
# ImageReward layout (BLIP key names)

BERT_WORDS = ["a", "photo", "of", "cat", "red", "car", "on", "beach", "at", "sunset", "painting", "lighthouse",
              ",", "oil", "canvas", "the", "dog", "##s", "##ing", "house", "light", "sun", "set", "blue"]
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + BERT_WORDS

TINY_MED_CONFIG = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 2,
    "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(BERT_VOCAB) + 2,
    "encoder_width": 768, "add_cross_attention": True,
}
TINY_VIT = dict(width=128, depth=2, patch=32, image=224, mlp=256)   # heads = 128 / 64 = 2


def imagereward_state_dict(seed: int = 0, med: dict = TINY_MED_CONFIG, vit: dict = TINY_VIT) -> dict:
    """Random weights under ImageReward.pt's key names (BLIP vit.py / med.py + the MLP head)."""
    g = torch.Generator().manual_seed(seed)

    def lin(out_f: int, in_f: int, prefix: str) -> dict:
        return {prefix + ".weight": torch.randn(out_f, in_f, generator=g) / math.sqrt(in_f),
                prefix + ".bias": 0.1 * torch.randn(out_f, generator=g)}

    def ln(n: int, prefix: str) -> dict:
        return {prefix + ".weight": 1 + 0.1 * torch.randn(n, generator=g), prefix + ".bias": 0.1 * torch.randn(n, generator=g)}

    W, P, C = vit["width"], vit["patch"], med["hidden_size"]
    n_pos = (vit["image"] // P) ** 2 + 1
    v = "blip.visual_encoder."
    sd = {v + "cls_token": 0.5 * torch.randn(1, 1, W, generator=g),
          v + "pos_embed": 0.5 * torch.randn(1, n_pos, W, generator=g),
          v + "patch_embed.proj.weight": torch.randn(W, 3, P, P, generator=g) / math.sqrt(3 * P * P),
          v + "patch_embed.proj.bias": 0.1 * torch.randn(W, generator=g)}
    for i in range(vit["depth"]):
        b = f"{v}blocks.{i}."
        sd |= ln(W, b + "norm1") | lin(3 * W, W, b + "attn.qkv") | lin(W, W, b + "attn.proj")
        sd |= ln(W, b + "norm2") | lin(vit["mlp"], W, b + "mlp.fc1") | lin(W, vit["mlp"], b + "mlp.fc2")
    sd |= ln(W, v + "norm")
    t = "blip.text_encoder."
    sd[t + "embeddings.word_embeddings.weight"] = torch.randn(med["vocab_size"], C, generator=g)
    sd[t + "embeddings.position_embeddings.weight"] = 0.5 * torch.randn(med["max_position_embeddings"], C, generator=g)
    sd[t + "embeddings.position_ids"] = torch.arange(med["max_position_embeddings"]).expand(1, -1)
    sd |= ln(C, t + "embeddings.LayerNorm")
    for i in range(med["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        for att, kv_in in (("attention", C), ("crossattention", W)):
            sd |= lin(C, C, f"{b}{att}.self.query") | lin(C, kv_in, f"{b}{att}.self.key")
            sd |= lin(C, kv_in, f"{b}{att}.self.value") | lin(C, C, f"{b}{att}.output.dense")
            sd |= ln(C, f"{b}{att}.output.LayerNorm")
        sd |= lin(med["intermediate_size"], C, b + "intermediate.dense")
        sd |= lin(C, med["intermediate_size"], b + "output.dense") | ln(C, b + "output.LayerNorm")
    sd |= lin(256, W, "blip.vision_proj") | lin(256, C, "blip.text_proj")
    for idx, (o, i) in zip((0, 2, 4, 6, 7), ((1024, C), (128, 1024), (64, 128), (16, 64), (1, 16))):
        sd |= lin(o, i, f"mlp.layers.{idx}")
    return sd


def build_imagereward(folder: Path, seed: int = 0, tokenizer_here: bool = True) -> Path:
    """``folder/ImageReward.pt`` + ``med_config.json`` (+ ``vocab.txt`` unless ``tokenizer_here``
    is False, then it goes to a sibling ``bert-base-uncased`` folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(imagereward_state_dict(seed), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(TINY_MED_CONFIG, indent=2))
    vocab_dir = folder if tokenizer_here else folder.parent / "bert-base-uncased"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    (vocab_dir / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
    return folder / "ImageReward.pt"


# ---------------------------------------------------------------------------------------------
# aesthetic head

def aesthetic_head_state(seed: int = 0, dim: int = 768) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for idx, (o, i) in zip((0, 2, 4, 6, 7), ((1024, dim), (128, 1024), (64, 128), (16, 64), (1, 16))):
        sd[f"layers.{idx}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
        sd[f"layers.{idx}.bias"] = 0.1 * torch.randn(o, generator=g)
    return sd


def build_aesthetic(folder: Path, seed: int = 0) -> Path:
    """``folder/sac+logos+ava1-l14-linearMSE.pth`` + ``folder/clip-vit-large-patch14`` (tiny, 768-d)."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(aesthetic_head_state(seed), file)
    build_hf_clip(folder / "clip-vit-large-patch14", seed=seed + 1, projection_dim=768)
    return file


# ---------------------------------------------------------------------------------------------
# benchmark

def benchmark(root: Path, batch: int = 16, size: int = 512, repeats: int = 3) -> dict[str, float]:
    """Images per second of each reward on the tiny models (the reward's full cost: preprocessing,
    both towers, one forward per batch)."""
    import time

    from progrpo_core.rewards import build_reward

    root.mkdir(parents=True, exist_ok=True)
    build_hf_clip(root / "PickScore_v1")
    build_hps(root / "HPS_v2.1_compressed.pt")
    build_aesthetic(root)
    build_imagereward(root / "ImageReward")
    rewards = {
        "pickscore": build_reward("pickscore", path=root / "PickScore_v1"),
        "clip": build_reward("clip", path=root / "PickScore_v1"),
        "hpsv2.1": build_reward("hpsv2.1", path=root / "HPS_v2.1_compressed.pt", arch=TINY_OPEN_CLIP),
        "aesthetic": build_reward("aesthetic", path=root),
        "imagereward": build_reward("imagereward", path=root / "ImageReward"),
    }
    x = images(batch, size, size, seed=1)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    out = {}
    for name, reward in rewards.items():
        reward(x[:2], prompts[:2])  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            reward(x, prompts)
        out[name] = batch * repeats / (time.perf_counter() - t)
    return out


if __name__ == "__main__":
    import tempfile
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    with tempfile.TemporaryDirectory() as d:
        for size in (224, 512, 1024):
            res = benchmark(Path(d) / str(size), size=size)
            print(f"{size}x{size}, batch 16, {torch.get_num_threads()} threads: "
                  + ", ".join(f"{k} {v:.0f} img/s" for k, v in res.items()))


# ---------------------------------------------------------------------------------------------
# one set of tiny models per test session (shared by the test modules without a conftest)

_MODELS: dict[str, Path] = {}


def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Build every tiny model once per process; returns their paths by role."""
    if not _MODELS:
        root = tmp_path_factory.mktemp("reward_models")
        _MODELS.update(
            root=root,
            pickscore=build_hf_clip(root / "PickScore_v1", seed=0),
            hps=build_hps(root / "HPS_v2.1_compressed.pt", seed=0),
            hps20=build_hps(root / "HPS_v2_compressed.pt", seed=7),
            aesthetic=build_aesthetic(root, seed=0),
            imagereward=build_imagereward(root / "ImageReward", seed=0),
        )
        _MODELS["clip_l14"] = root / "clip-vit-large-patch14"
    return _MODELS
