"""Writes the example workflows in this folder (UI format, as the ComfyUI frontend saves them).

    python workflows/build.py          # rewrite the .json files
    python workflows/build.py --check  # exit 1 if a file differs from what this script writes
    python workflows/build.py --thumbnails DIR [NAME ...]  # <name>.jpg from DIR/<name>_after_run.png (all, or NAMEs)

The workflows are generated so that their links, slot indices and widget values always match
the nodes' declared inputs (``nodes/``) and the stock nodes' signatures (:data:`STOCK`); the CI
test ``tests/test_workflows.py`` checks them against its own copy of the stock signatures, and the
host tests run them in a real ComfyUI. ComfyUI 0.33 serves the ``.json`` files of a pack's
``workflows/`` folder as templates (Templates → Extensions → the pack's folder name); its frontend
(1.49.6) titles each card with the file name and shows the ``<name>.jpg`` beside it as the card's
thumbnail. The thumbnails are screenshots of the workflows in that frontend after a run on the tiny
models: ``PROGRPO_FRONTEND_SHOTS=DIR pytest tests/host/test_frontend.py`` writes them, ``--thumbnails
DIR`` scales them to card size.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Stock nodes used here: inputs in declaration order as (name, type, is_widget), outputs as (name, type).
STOCK: dict[str, tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]] = {
    "CheckpointLoaderSimple": ([("ckpt_name", "COMBO", True)], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "TripleCLIPLoader": ([("clip_name1", "COMBO", True), ("clip_name2", "COMBO", True), ("clip_name3", "COMBO", True)],
                         [("CLIP", "CLIP")]),
    "CLIPTextEncode": ([("text", "STRING", True), ("clip", "CLIP", False)], [("CONDITIONING", "CONDITIONING")]),
    "EmptySD3LatentImage": ([("width", "INT", True), ("height", "INT", True), ("batch_size", "INT", True)],
                            [("LATENT", "LATENT")]),
    "KSampler": ([("model", "MODEL", False), ("seed", "INT", True), ("steps", "INT", True), ("cfg", "FLOAT", True),
                  ("sampler_name", "COMBO", True), ("scheduler", "COMBO", True), ("positive", "CONDITIONING", False),
                  ("negative", "CONDITIONING", False), ("latent_image", "LATENT", False), ("denoise", "FLOAT", True)],
                 [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT", False), ("vae", "VAE", False)], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE", False), ("filename_prefix", "STRING", True)], [("IMAGE", "IMAGE")]),
    "PreviewImage": ([("images", "IMAGE", False)], [("IMAGE", "IMAGE")]),
    "LoraLoaderModelOnly": ([("model", "MODEL", False), ("lora_name", "COMBO", True), ("strength_model", "FLOAT", True)],
                            [("MODEL", "MODEL")]),
    "PrimitiveStringMultiline": ([("value", "STRING", True)], [("STRING", "STRING")]),
    "UNETLoader": ([("unet_name", "COMBO", True), ("weight_dtype", "COMBO", True)], [("MODEL", "MODEL")]),
    "DualCLIPLoader": ([("clip_name1", "COMBO", True), ("clip_name2", "COMBO", True), ("type", "COMBO", True)],
                       [("CLIP", "CLIP")]),
    "VAELoader": ([("vae_name", "COMBO", True)], [("VAE", "VAE")]),
    "FluxGuidance": ([("conditioning", "CONDITIONING", False), ("guidance", "FLOAT", True)],
                     [("CONDITIONING", "CONDITIONING")]),
}
SEEDED = {("KSampler", "seed")}  # INT widgets the frontend follows with a "control after generate" value
NOTE = "MarkdownNote"

SD35_FILES = {
    "checkpoint": ("sd3.5_medium.safetensors", "checkpoints",
                   "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium/resolve/main/sd3.5_medium.safetensors"),
    "clip_l": ("clip_l.safetensors", "text_encoders",
               "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium/resolve/main/text_encoders/clip_l.safetensors"),
    "clip_g": ("clip_g.safetensors", "text_encoders",
               "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium/resolve/main/text_encoders/clip_g.safetensors"),
    "t5": ("t5xxl_fp8_e4m3fn.safetensors", "text_encoders",
           "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium/resolve/main/text_encoders/t5xxl_fp8_e4m3fn.safetensors"),
}
FLUX_FILES = {  # Flux.1-dev as ComfyUI's own Flux example loads it: the bf16 file, stored in fp8 by UNETLoader
    "unet": ("flux1-dev.safetensors", "diffusion_models",
             "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors"),
    "clip_l": ("clip_l.safetensors", "text_encoders",
               "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors"),
    "t5": ("t5xxl_fp8_e4m3fn.safetensors", "text_encoders",
           "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp8_e4m3fn.safetensors"),
    "vae": ("ae.safetensors", "vae", "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors"),
}
TRAINED_LORA = "progrpo/sd35m_pickscore"
FLUX_LORA = "progrpo/flux1dev_fp8_pickscore"
# The frontend (1.49.6) gives the trainer's widgets 798 px; its live preview (a fixed 512x512 image)
# then grows the node to 1068 px at width 360 (measured). The workflows leave the preview room of
# its own below the widgets, so nothing moves when it arrives; tests/host/test_frontend.py checks
# in the browser that no two nodes overlap after a run.
TRAINER_SIZE = (400, 1180)
PROMPT = "a photo of a red fox sitting in a snowy forest, golden hour"

MODEL_NOTE = """### Model files this workflow expects
- `models/checkpoints/sd3.5_medium.safetensors` (stabilityai/stable-diffusion-3.5-medium)
- `models/text_encoders/clip_l.safetensors`, `clip_g.safetensors`, `t5xxl_fp8_e4m3fn.safetensors`
  (the `text_encoders/` folder of the same repository)
- `models/reward_models/PickScore_v1/` — the Hugging Face repo yuvalkirstain/PickScore_v1
  (`hf download yuvalkirstain/PickScore_v1 --local-dir models/reward_models/PickScore_v1`)

Other models work too: SD3.x and Flux (flow) or SD1.x/SDXL (eps/v). Swap the loaders and the empty
latent node (EmptyLatentImage for SD1.x/SDXL); use cfg 1 for Flux."""


def node_signature(kind: str):
    """(inputs [(name, type, is_widget, options)], outputs [(name, type)]) of a stock or ProGRPO node."""
    if kind in STOCK:
        ins, outs = STOCK[kind]
        return [(n, t, w, {}) for n, t, w in ins], outs
    from nodes import NODE_CLASS_MAPPINGS

    cls = NODE_CLASS_MAPPINGS[kind]
    spec = cls.INPUT_TYPES()
    ins = []
    for section in ("required", "optional"):
        for name, s in (spec.get(section) or {}).items():
            t = s[0]
            opts = s[1] if len(s) > 1 else {}
            widget = isinstance(t, list) or t in ("INT", "FLOAT", "STRING", "BOOLEAN")
            ins.append((name, "COMBO" if isinstance(t, list) else t, widget, opts))
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return ins, list(zip(names, cls.RETURN_TYPES))


class Graph:
    def __init__(self, uid: str):
        self.uid = uid
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, kind: str, pos: tuple[int, int], widgets: dict | None = None, title: str | None = None,
            size: tuple[int, int] = (320, 160), models: list[tuple[str, str, str]] | None = None) -> dict:
        nid = len(self.nodes) + 1
        node = {"id": nid, "type": kind, "pos": list(pos), "size": list(size), "flags": {}, "order": 0, "mode": 0}
        if kind == NOTE:
            node.update(inputs=[], outputs=[], properties={}, widgets_values=[widgets["text"]])
            self.nodes.append(node)
            return node
        ins, outs = node_signature(kind)
        widgets = dict(widgets or {})
        sockets = [{"name": n, "type": t, "link": None} for n, t, w, _ in ins if not w]
        wins = [{"name": n, "type": t, "widget": {"name": n}, "link": None} for n, t, w, _ in ins if w]
        values = []
        for n, t, w, opts in ins:
            if not w:
                continue
            if n not in widgets and "default" not in opts:
                raise KeyError(f"{kind}: no value for widget {n!r}")
            values.append(widgets.pop(n, opts.get("default")))
            if (kind, n) in SEEDED or (kind not in STOCK and t == "INT" and n == "seed"):
                values.append("fixed")
        if widgets:
            raise KeyError(f"{kind}: unknown widget(s) {sorted(widgets)}")
        props = {"Node name for S&R": kind,
                 "cnr_id": "comfy-core" if kind in STOCK else "comfyui-progrpo",
                 "ver": "0.33.0" if kind in STOCK else "0.1.0"}
        if models:
            props["models"] = [{"name": n, "url": u, "directory": d} for n, d, u in models]
        node.update(inputs=sockets + wins,
                    outputs=[{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outs)],
                    properties=props, widgets_values=values)
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def connect(self, src: dict, slot: int, dst: dict, name: str) -> None:
        lid = len(self.links) + 1
        out = src["outputs"][slot]
        to_slot = next(i for i, x in enumerate(dst["inputs"]) if x["name"] == name)
        dst["inputs"][to_slot]["link"] = lid
        out["links"].append(lid)
        self.links.append([lid, src["id"], slot, dst["id"], to_slot, out["type"]])

    def to_json(self) -> dict:
        # execution order as the frontend computes it: a topological order of the linked nodes
        deps = {n["id"]: {l[1] for l in self.links if l[3] == n["id"]} for n in self.nodes}
        order, done = [], set()
        while len(order) < len(self.nodes):
            ready = [i for i in sorted(deps) if i not in done and deps[i] <= done]
            order += ready
            done |= set(ready)
        for n in self.nodes:
            n["order"] = order.index(n["id"])
            for o in n.get("outputs", []):
                if not o["links"]:
                    o["links"] = None
        return {"id": self.uid, "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}}, "version": 0.4}


def sd35_loaders(g: Graph, x: int = 0, y: int = 0) -> tuple[dict, dict]:
    ckpt = g.add("CheckpointLoaderSimple", (x, y), {"ckpt_name": SD35_FILES["checkpoint"][0]},
                 models=[SD35_FILES["checkpoint"]], size=(320, 100))
    clip = g.add("TripleCLIPLoader", (x, y + 150),
                 {"clip_name1": SD35_FILES["clip_l"][0], "clip_name2": SD35_FILES["clip_g"][0],
                  "clip_name3": SD35_FILES["t5"][0]},
                 models=[SD35_FILES["clip_l"], SD35_FILES["clip_g"], SD35_FILES["t5"]], size=(320, 130))
    return ckpt, clip


def reward_loader(g: Graph, pos) -> dict:
    return g.add("ProGRPORewardModelLoader", pos, {"reward": "pickscore", "model": "PickScore_v1/", "device": "auto",
                                                    "dtype": "float32"}, size=(320, 130))


def training() -> dict:
    """(a) checkpoint → prompts → GRPO LoRA Trainer → Save LoRA → before/after sample."""
    g = Graph("7b0e7c52-7f0a-4d3e-9a51-000000000001")
    g.add(NOTE, (0, -360), {"text": "## ProGRPO: train a LoRA with Pro-GRPO\n"
                            "The trainer samples an expanded group per prompt, prunes it at the checkpoints with "
                            "OVF on the reward of one-step proxies, and trains the LoRA on the survivors (GRPO). "
                            "Its progress bar previews every epoch; interrupting keeps the LoRA trained so far in "
                            "`models/loras/progrpo/autosave/` (set *resume* to continue). The LoRA is saved to "
                            f"`models/loras/{TRAINED_LORA}.safetensors`; below, the same seed without and with it.\n\n"
                            + MODEL_NOTE}, size=(620, 300))
    ckpt, clip = sd35_loaders(g)
    prompts = g.add("ProGRPOPromptList", (0, 350), {"text": "\n".join([
        PROMPT, "a cozy cabin by a lake at dawn, highly detailed", "a bowl of ramen on a wooden table, studio light",
        "portrait of an astronaut in a sunflower field"]), "file": ""}, size=(320, 180))
    reward = reward_loader(g, (0, 590))
    latent = g.add("EmptySD3LatentImage", (0, 780), {"width": 512, "height": 512, "batch_size": 1}, size=(320, 110))
    trainer = g.add("ProGRPOLoraTrainer", (380, 0), {
        "method": "pro-grpo", "epochs": 100, "prompts_per_epoch": 1, "steps": 10, "group_size": 48,
        "checkpoints": "5,7", "keep": "24,12", "sampler": "auto", "noise_level": -1.0, "cfg": 4.5,
        "learning_rate": 0.0003, "rank": 32, "alpha": 64.0, "targets": "attention", "kl_beta": 0.0, "seed": 0,
        "gradient_checkpointing": True, "run_name": "sd35m_pickscore", "resume": False, "save_every": 5},
        size=TRAINER_SIZE)
    for slot, (src, s, name) in enumerate([(ckpt, 0, "model"), (ckpt, 2, "vae"), (reward, 0, "reward"),
                                           (prompts, 0, "prompts"), (latent, 0, "latent"), (clip, 0, "clip")]):
        g.connect(src, s, trainer, name)
    save = g.add("ProGRPOSaveLoRA", (840, 0), {"filename": TRAINED_LORA, "overwrite": True}, size=(440, 150))
    g.connect(trainer, 1, save, "lora")
    curves = g.add("PreviewImage", (840, 210), title="reward and loss curves", size=(440, 320))
    g.connect(trainer, 2, curves, "images")
    pos = g.add("CLIPTextEncode", (0, 950), {"text": PROMPT}, size=(320, 120))
    neg = g.add("CLIPTextEncode", (0, 1130), {"text": ""}, title="negative", size=(320, 100))
    for node in (pos, neg):
        g.connect(clip, 0, node, "clip")
    before_and_after(g, (ckpt, 0), trainer, pos, neg, latent, (ckpt, 2), cfg=4.5, prefix="progrpo/")
    return g.to_json()


def before_and_after(g: Graph, base: tuple, trainer, positive, negative, latent, vae: tuple, cfg: float,
                     prefix: str) -> None:
    """The same seed sampled with the base MODEL (``base``: node, output) and with the trainer's
    MODEL, decoded by ``vae`` (node, output) and saved side by side under ``prefix``."""
    sample_widgets = {"seed": 42, "steps": 20, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
                      "denoise": 1.0}
    for i, (model_src, title, name) in enumerate([(base, "before: base model", "before"),
                                                  ((trainer, 0), "after: with the trained LoRA", "after")]):
        y = 590 + 350 * i
        ks = g.add("KSampler", (840, y), sample_widgets, title=title, size=(320, 262))
        g.connect(*model_src, ks, "model")
        g.connect(positive, 0, ks, "positive")
        g.connect(negative, 0, ks, "negative")
        g.connect(latent, 0, ks, "latent_image")
        dec = g.add("VAEDecode", (1200, y), size=(200, 50))
        g.connect(ks, 0, dec, "samples")
        g.connect(*vae, dec, "vae")
        img = g.add("SaveImage", (1440, y), {"filename_prefix": prefix + name}, title=title, size=(300, 300))
        g.connect(dec, 0, img, "images")


def inspection() -> dict:
    """(b) one prompt, an expanded group, proxy previews at the checkpoints, reward histogram with
    the OVF selection, final survivors."""
    g = Graph("7b0e7c52-7f0a-4d3e-9a51-000000000002")
    g.add(NOTE, (0, -360), {"text": "## ProGRPO: look inside expand-and-prune\n"
                            "One prompt, G_max = 16 trajectories, pruned to 8 after step 5 and to 4 after step 7 by OVF on "
                            "the reward of one-step x0 proxies. The projectors show every trajectory's proxy at the "
                            "two checkpoints; the scorer and the OVF Pruner re-run the first selection on those "
                            "proxies and plot it (kept vs dropped); the last preview shows the 4 survivors' final "
                            "images. The prompt node feeds the text encoder, the sampler and the scorer.\n\n"
                            + MODEL_NOTE}, size=(620, 300))
    ckpt, clip = sd35_loaders(g)
    text = g.add("PrimitiveStringMultiline", (0, 330), {"value": PROMPT}, title="prompt", size=(320, 120))
    reward = reward_loader(g, (0, 500))
    latent = g.add("EmptySD3LatentImage", (0, 680), {"width": 512, "height": 512, "batch_size": 1}, size=(320, 110))
    pos = g.add("CLIPTextEncode", (380, 0), {"text": PROMPT}, size=(320, 100))
    neg = g.add("CLIPTextEncode", (380, 150), {"text": ""}, title="negative", size=(320, 100))
    g.connect(clip, 0, pos, "clip")
    g.connect(text, 0, pos, "text")
    g.connect(clip, 0, neg, "clip")
    sampler = g.add("ProGRPOExpandedGroupSampler", (380, 300), {
        "group_size": 16, "steps": 10, "sampler": "auto", "noise_level": -1.0, "cfg": 4.5, "seed": 7,
        "checkpoints": "5,7", "keep": "8,4", "selector": "ovf", "prompt": PROMPT}, size=(340, 520))
    for src, s, name in [(ckpt, 0, "model"), (pos, 0, "positive"), (neg, 0, "negative"), (latent, 0, "latent"),
                         (reward, 0, "reward"), (ckpt, 2, "vae"), (text, 0, "prompt")]:
        g.connect(src, s, sampler, name)
    decoded = []
    for i, cp in enumerate((5, 7)):  # checkpoint c scores the proxies of step c - 1 (its c-th model call)
        proj = g.add("ProGRPOLatentProxyProjector", (780, 320 * i), {"step": cp - 1},
                     title=f"proxies at checkpoint {cp} (step {cp - 1})", size=(300, 230))
        g.connect(sampler, 1, proj, "group")
        dec = g.add("VAEDecode", (1120, 320 * i), size=(200, 50))
        g.connect(proj, 0, dec, "samples")
        g.connect(ckpt, 2, dec, "vae")
        prev = g.add("PreviewImage", (1360, 320 * i), title=f"proxies at checkpoint {cp}", size=(360, 280))
        g.connect(dec, 0, prev, "images")
        decoded.append(dec)
    scorer = g.add("ProGRPORewardScorer", (780, 680), {"prompt": PROMPT}, title="reward of the checkpoint-5 proxies",
                   size=(320, 210))
    g.connect(reward, 0, scorer, "reward")
    g.connect(decoded[0], 0, scorer, "images")
    g.connect(text, 0, scorer, "prompt")
    pruner = g.add("ProGRPOOVFPruner", (1120, 680), {"keep": "8", "selector": "ovf", "seed": 0}, size=(300, 190))
    g.connect(scorer, 0, pruner, "scores")
    g.connect(decoded[0], 0, pruner, "images")
    hist = g.add("PreviewImage", (1460, 680), title="reward histogram: kept vs dropped", size=(400, 300))
    g.connect(pruner, 3, hist, "images")
    kept = g.add("PreviewImage", (1460, 1040), title="kept proxies (OVF)", size=(400, 280))
    g.connect(pruner, 0, kept, "images")
    dec = g.add("VAEDecode", (780, 950), size=(200, 50))
    g.connect(sampler, 0, dec, "samples")
    g.connect(ckpt, 2, dec, "vae")
    final = g.add("PreviewImage", (1120, 1040), title="final survivors", size=(300, 280))
    g.connect(dec, 0, final, "images")
    return g.to_json()


def comparison() -> dict:
    """(c) base vs trained LoRA on fixed seeds, with their rewards."""
    g = Graph("7b0e7c52-7f0a-4d3e-9a51-000000000003")
    g.add(NOTE, (0, -360), {"text": "## ProGRPO: base vs trained LoRA\n"
                            "The same prompt and seeds (a batch of 4) with and without the LoRA trained by the "
                            f"training workflow (`models/loras/{TRAINED_LORA}.safetensors`, loaded with the stock "
                            "LoraLoaderModelOnly), each scored by the reward model.\n\n" + MODEL_NOTE},
          size=(620, 300))
    ckpt, clip = sd35_loaders(g)
    reward = reward_loader(g, (0, 330))
    latent = g.add("EmptySD3LatentImage", (0, 510), {"width": 512, "height": 512, "batch_size": 4}, size=(320, 110))
    text = g.add("PrimitiveStringMultiline", (0, 660), {"value": PROMPT}, title="prompt", size=(320, 120))
    lora = g.add("LoraLoaderModelOnly", (380, 0), {"lora_name": f"{TRAINED_LORA}.safetensors", "strength_model": 1.0},
                 size=(320, 90))
    g.connect(ckpt, 0, lora, "model")
    pos = g.add("CLIPTextEncode", (380, 140), {"text": PROMPT}, size=(320, 100))
    neg = g.add("CLIPTextEncode", (380, 290), {"text": ""}, title="negative", size=(320, 100))
    g.connect(clip, 0, pos, "clip")
    g.connect(text, 0, pos, "text")
    g.connect(clip, 0, neg, "clip")
    for i, (model_src, title, prefix) in enumerate([(ckpt, "base", "progrpo/compare_base"),
                                                   (lora, "with the LoRA", "progrpo/compare_lora")]):
        y = 420 * i
        ks = g.add("KSampler", (760, y), {"seed": 1234, "steps": 28, "cfg": 4.5, "sampler_name": "euler",
                                         "scheduler": "simple", "denoise": 1.0}, title=title, size=(320, 262))
        g.connect(model_src, 0, ks, "model")
        g.connect(pos, 0, ks, "positive")
        g.connect(neg, 0, ks, "negative")
        g.connect(latent, 0, ks, "latent_image")
        dec = g.add("VAEDecode", (1120, y), size=(200, 50))
        g.connect(ks, 0, dec, "samples")
        g.connect(ckpt, 2, dec, "vae")
        save = g.add("SaveImage", (1480, y), {"filename_prefix": prefix}, title=title, size=(360, 300))
        g.connect(dec, 0, save, "images")
        scorer = g.add("ProGRPORewardScorer", (1120, y + 120), {"prompt": PROMPT}, title=f"reward: {title}",
                       size=(320, 210))
        g.connect(reward, 0, scorer, "reward")
        g.connect(dec, 0, scorer, "images")
        g.connect(text, 0, scorer, "prompt")
    return g.to_json()


def flux_fp8_training() -> dict:
    """(d) Flux.1-dev as users fit it on a 12-24 GB card: UNETLoader with weight_dtype fp8_e4m3fn, its
    own text encoders (DualCLIPLoader: CLIP-L and T5-XXL in fp8) and VAE; the trainer's LoRA trains
    on top of the fp8 weights (cfg 1: Flux is guidance-distilled; guidance 3.5 by FluxGuidance)."""
    g = Graph("7b0e7c52-7f0a-4d3e-9a51-000000000004")
    g.add(NOTE, (0, -360), {"text": "## ProGRPO: train a LoRA of Flux.1-dev in fp8\n"
                            "UNETLoader keeps Flux's 12 B weights in fp8 (`weight_dtype fp8_e4m3fn`, 12 GB instead "
                            "of 24 GB); ComfyUI casts each layer to the compute dtype as it runs and the LoRA trains "
                            "beside it (the fp8 weights are never changed). Flux is guidance-distilled: cfg stays 1 "
                            "(the trainer's cfg 0 = the model's default) and FluxGuidance sets the guidance (3.5 "
                            "where none is set). The LoRA is saved to "
                            f"`models/loras/{FLUX_LORA}.safetensors`; below, the same seed without and with it. "
                            "A GGUF file works the same way: swap the UNETLoader for ComfyUI-GGUF's Unet Loader "
                            "(GGUF).\n\n"
                            "### Model files this workflow expects\n"
                            "- `models/diffusion_models/flux1-dev.safetensors` (black-forest-labs/FLUX.1-dev)\n"
                            "- `models/text_encoders/clip_l.safetensors`, `t5xxl_fp8_e4m3fn.safetensors` "
                            "(comfyanonymous/flux_text_encoders)\n"
                            "- `models/vae/ae.safetensors` (black-forest-labs/FLUX.1-dev)\n"
                            "- `models/reward_models/PickScore_v1/` — the Hugging Face repo yuvalkirstain/PickScore_v1"},
          size=(620, 300))
    unet = g.add("UNETLoader", (0, 0), {"unet_name": FLUX_FILES["unet"][0], "weight_dtype": "fp8_e4m3fn"},
                 models=[FLUX_FILES["unet"]], size=(320, 110))
    clip = g.add("DualCLIPLoader", (0, 160), {"clip_name1": FLUX_FILES["clip_l"][0], "clip_name2": FLUX_FILES["t5"][0],
                                              "type": "flux"}, models=[FLUX_FILES["clip_l"], FLUX_FILES["t5"]],
                 size=(320, 130))
    vae = g.add("VAELoader", (0, 340), {"vae_name": FLUX_FILES["vae"][0]}, models=[FLUX_FILES["vae"]], size=(320, 80))
    prompts = g.add("ProGRPOPromptList", (0, 470), {"text": "\n".join([
        PROMPT, "a cozy cabin by a lake at dawn, highly detailed", "a bowl of ramen on a wooden table, studio light",
        "portrait of an astronaut in a sunflower field"]), "file": ""}, size=(320, 180))
    reward = reward_loader(g, (0, 700))
    latent = g.add("EmptySD3LatentImage", (0, 880), {"width": 512, "height": 512, "batch_size": 1}, size=(320, 110))
    trainer = g.add("ProGRPOLoraTrainer", (380, 0), {
        "method": "pro-mixgrpo", "epochs": 100, "prompts_per_epoch": 1, "steps": 10, "group_size": 0,
        "checkpoints": "", "keep": "", "sampler": "auto", "noise_level": -1.0, "cfg": 0.0,
        "learning_rate": 0.0003, "rank": 16, "alpha": 16.0, "targets": "attention", "kl_beta": 0.0, "seed": 0,
        "gradient_checkpointing": True, "run_name": "flux1dev_fp8_pickscore", "resume": False, "save_every": 5},
        size=TRAINER_SIZE)
    for src, slot, name in [(unet, 0, "model"), (vae, 0, "vae"), (reward, 0, "reward"), (prompts, 0, "prompts"),
                            (latent, 0, "latent"), (clip, 0, "clip")]:
        g.connect(src, slot, trainer, name)
    save = g.add("ProGRPOSaveLoRA", (840, 0), {"filename": FLUX_LORA, "overwrite": True}, size=(440, 150))
    g.connect(trainer, 1, save, "lora")
    curves = g.add("PreviewImage", (840, 210), title="reward and loss curves", size=(440, 320))
    g.connect(trainer, 2, curves, "images")
    pos = g.add("CLIPTextEncode", (0, 1050), {"text": PROMPT}, size=(320, 120))
    guided = g.add("FluxGuidance", (0, 1230), {"guidance": 3.5}, size=(320, 80))
    neg = g.add("CLIPTextEncode", (0, 1370), {"text": ""}, title="negative (unused at cfg 1)", size=(320, 100))
    g.connect(clip, 0, pos, "clip")
    g.connect(pos, 0, guided, "conditioning")
    g.connect(clip, 0, neg, "clip")
    before_and_after(g, (unet, 0), trainer, guided, neg, latent, (vae, 0), cfg=1.0, prefix="progrpo/flux_")
    return g.to_json()


WORKFLOWS = {
    "progrpo_train_lora.json": training,
    "progrpo_inspect_group.json": inspection,
    "progrpo_compare_lora.json": comparison,
    "progrpo_train_flux_fp8.json": flux_fp8_training,
}


def render() -> dict[str, str]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return {name: json.dumps(make(), indent=1) + "\n" for name, make in WORKFLOWS.items()}


def thumbnails(shots: Path, only: list[str] | None = None) -> None:
    """``<name>.jpg`` (at most 512 px a side, well under 100 KB) from ``shots/<name>_after_run.png``, for
    every workflow or those ``only`` names (with or without ``.json``)."""
    from PIL import Image

    stems = [name.removesuffix(".json") for name in WORKFLOWS]
    unknown = [n for n in only or [] if n.removesuffix(".json") not in stems]
    if unknown:
        raise SystemExit(f"no workflow named {', '.join(unknown)}; the workflows are {', '.join(stems)}")
    for stem in stems:
        if only and stem not in {n.removesuffix(".json") for n in only}:
            continue
        image = Image.open(shots / f"{stem}_after_run.png").convert("RGB")
        image.thumbnail((512, 512), Image.LANCZOS)
        image.save(HERE / f"{stem}.jpg", "JPEG", quality=82, optimize=True, progressive=True)
        print(f"wrote {HERE / stem}.jpg {image.size[0]}x{image.size[1]}, {(HERE / f'{stem}.jpg').stat().st_size} bytes")


def main(argv: list[str]) -> int:
    if "--thumbnails" in argv:
        i = argv.index("--thumbnails")
        if i + 1 >= len(argv):
            raise SystemExit("--thumbnails needs the folder of the screenshots")
        thumbnails(Path(argv[i + 1]), argv[i + 2:])
        return 0
    files = render()
    if "--check" in argv:
        stale = [n for n, text in files.items() if not (HERE / n).is_file() or (HERE / n).read_text() != text]
        if stale:
            print("out of date (run python workflows/build.py):", ", ".join(stale))
            return 1
        return 0
    for name, text in files.items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
