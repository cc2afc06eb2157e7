"""The host harness works: stock-node graphs run on the tiny models in a real ComfyUI.

Tests on the same model sit together: ComfyUI keeps only the previous prompt's node
outputs, so a neighbour with the same loaders reuses the loaded CLIP-L and encodings.
Each pipeline test also checks, in the server log, that ComfyUI detected the tiny file as
the intended architecture (``model_type FLOW`` for SD3, ``FLUX`` for Flux, ``EPS`` for SD1.5).
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import tiny_models
from client import PromptInterrupted, PromptRejected, output_nodes, ui_to_api
from launcher import PACK_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]


def model_name(key: str) -> str:
    """File name of a tiny model inside its ComfyUI model folder."""
    return tiny_models.FILES[key].split("/", 1)[1]


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def text_to_image(loaders: dict, latent: dict, *, prefix: str, steps: int = 4, cfg: float = 4.0,
                  positive_extra: dict | None = None, zero_negative: bool = False) -> dict:
    """API graph: loaders → 2×CLIPTextEncode → KSampler → VAEDecode → SaveImage.

    ``loaders`` maps "model"/"clip"/"vae" to ``[node_id, slot]`` of nodes already in it (its
    ``"nodes"`` entry). ``positive_extra`` is a node taking the positive conditioning as
    ``conditioning`` (e.g. FluxGuidance); ``zero_negative`` makes the negative a
    ConditioningZeroOut of the positive, as Flux graphs do.
    """
    g = dict(loaders["nodes"])
    g["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple on a table", "clip": loaders["clip"]}}
    positive = ["pos", 0]
    if positive_extra:
        g["pos2"] = {**positive_extra, "inputs": {**positive_extra["inputs"], "conditioning": positive}}
        positive = ["pos2", 0]
    if zero_negative:
        g["neg"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["pos", 0]}}
    else:
        g["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": loaders["clip"]}}
    g["latent"] = latent
    g["sample"] = {"class_type": "KSampler", "inputs": {
        "seed": 7, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
        "model": loaders["model"], "positive": positive, "negative": ["neg", 0], "latent_image": ["latent", 0]}}
    g["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": loaders["vae"]}}
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}}
    return g


def separate_loaders(unet: str, clip_type: str, vae: str) -> dict:
    return {
        "nodes": {
            "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": model_name(unet), "weight_dtype": "default"}},
            "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": model_name("clip_l"), "type": clip_type,
                                                              "device": "default"}},
            "vae": {"class_type": "VAELoader", "inputs": {"vae_name": model_name(vae)}},
        },
        "model": ["unet", 0], "clip": ["clip", 0], "vae": ["vae", 0],
    }


def run_and_check_image(client, graph: dict, size: tuple[int, int], model_type: str, timeout: float = 300):
    """Run ``graph``; assert one saved PNG of ``size`` and the model detection log line."""
    client.server.mark_log()
    t = time.perf_counter()
    entry = client.run(graph, timeout=timeout)
    elapsed = time.perf_counter() - t
    images = client.images(entry)
    assert len(images) == 1, entry["outputs"]
    ref = images[0]
    assert ref["type"] == "output"
    on_disk = client.server.output_dir / ref["subfolder"] / ref["filename"]
    data = client.view(ref)
    assert on_disk.read_bytes() == data
    assert png_size(data) == size
    # (in the whole log: an earlier test of the session, e.g. the browser test, may have loaded it first)
    assert f"model_type {model_type}" in client.server.log_text()
    print(f"{graph['save']['inputs']['filename_prefix']}: {elapsed:.1f} s")
    return entry


def test_sd3_txt2img(comfy_server):
    graph = text_to_image(separate_loaders("sd3", "sd3", "vae16"),
                          {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                          prefix="host_sd3")
    run_and_check_image(comfy_server, graph, (64, 64), "FLOW")


# --- UI-format workflow ------------------------------------------------------------------

def _ui_workflow() -> dict:
    """A UI-format SD3 txt2img graph exercising the converter's rules.

    Node 7 (LatentUpscaleBy ×1.5) is bypassed, so the image stays 64×64 only if the latent
    link is routed around it; node 13 (PreviewImage) is muted; node 8 is a Reroute for the
    MODEL; node 9 is a PrimitiveNode driving KSampler's seed; node 14 is a Note. KSampler's
    widgets_values carry the frontend's extra "randomize" after the seed.
    """
    def node(id_, type_, inputs=(), outputs=(), widgets=None, mode=0, order=0):
        n = {"id": id_, "type": type_, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": order,
             "mode": mode, "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs],
             "properties": {"Node name for S&R": type_}}
        if widgets is not None:
            n["widgets_values"] = widgets
        return n

    def inp(name, type_, link=None, widget=False):
        d = {"name": name, "type": type_, "link": link}
        if widget:
            d["widget"] = {"name": name}
        return d

    def out(name, type_, links):
        return {"name": name, "type": type_, "links": links}

    nodes = [
        node(1, "UNETLoader", [inp("unet_name", "COMBO", widget=True), inp("weight_dtype", "COMBO", widget=True)],
             [out("MODEL", "MODEL", [1])], [model_name("sd3"), "default"]),
        node(2, "CLIPLoader", [inp("clip_name", "COMBO", widget=True), inp("type", "COMBO", widget=True),
                               inp("device", "COMBO", widget=True)],
             [out("CLIP", "CLIP", [2, 3])], [model_name("clip_l"), "sd3", "default"]),
        node(3, "VAELoader", [inp("vae_name", "COMBO", widget=True)], [out("VAE", "VAE", [9])], [model_name("vae16")]),
        node(4, "CLIPTextEncode", [inp("clip", "CLIP", 2), inp("text", "STRING", widget=True)],
             [out("CONDITIONING", "CONDITIONING", [4])], ["a red apple on a table"]),
        node(5, "CLIPTextEncode", [inp("clip", "CLIP", 3), inp("text", "STRING", widget=True)],
             [out("CONDITIONING", "CONDITIONING", [5])], ["blurry"]),
        node(6, "EmptySD3LatentImage", [inp("width", "INT", widget=True), inp("height", "INT", widget=True),
                                        inp("batch_size", "INT", widget=True)],
             [out("LATENT", "LATENT", [6])], [64, 64, 1]),
        node(7, "LatentUpscaleBy", [inp("samples", "LATENT", 6), inp("upscale_method", "COMBO", widget=True),
                                    inp("scale_by", "FLOAT", widget=True)],
             [out("LATENT", "LATENT", [7])], ["nearest-exact", 1.5], mode=4),
        node(8, "Reroute", [inp("", "*", 1)], [out("", "MODEL", [8])]),
        node(9, "PrimitiveNode", [], [out("INT", "INT", [10])], [42, "fixed"]),
        node(10, "KSampler", [inp("model", "MODEL", 8), inp("positive", "CONDITIONING", 4),
                              inp("negative", "CONDITIONING", 5), inp("latent_image", "LATENT", 7),
                              inp("seed", "INT", 10, widget=True), inp("steps", "INT", widget=True),
                              inp("cfg", "FLOAT", widget=True), inp("sampler_name", "COMBO", widget=True),
                              inp("scheduler", "COMBO", widget=True), inp("denoise", "FLOAT", widget=True)],
             [out("LATENT", "LATENT", [11])], [1, "randomize", 3, 4.0, "euler", "simple", 1.0]),
        node(11, "VAEDecode", [inp("samples", "LATENT", 11), inp("vae", "VAE", 9)],
             [out("IMAGE", "IMAGE", [12, 13])]),
        node(12, "SaveImage", [inp("images", "IMAGE", 12), inp("filename_prefix", "STRING", widget=True)], [],
             ["host_ui"]),
        node(13, "PreviewImage", [inp("images", "IMAGE", 13)], [], mode=2),
        node(14, "Note", [], [], ["The seed comes from the primitive; the upscale is bypassed."]),
    ]
    links = [
        [1, 1, 0, 8, 0, "MODEL"], [2, 2, 0, 4, 0, "CLIP"], [3, 2, 0, 5, 0, "CLIP"],
        [4, 4, 0, 10, 1, "CONDITIONING"], [5, 5, 0, 10, 2, "CONDITIONING"], [6, 6, 0, 7, 0, "LATENT"],
        [7, 7, 0, 10, 3, "LATENT"], [8, 8, 0, 10, 0, "MODEL"], [9, 3, 0, 11, 1, "VAE"],
        [10, 9, 0, 10, 4, "INT"], [11, 10, 0, 11, 0, "LATENT"], [12, 11, 0, 12, 0, "IMAGE"],
        [13, 11, 0, 13, 0, "IMAGE"],
    ]
    return {"id": "00000000-0000-4000-8000-000000000001", "revision": 0, "last_node_id": 14, "last_link_id": 13,
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def test_ui_workflow_converts_and_runs(comfy_server):
    workflow = json.loads(json.dumps(_ui_workflow()))  # as if read from a .json file
    api = ui_to_api(workflow, comfy_server.object_info())
    got = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    assert got == {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": model_name("sd3"), "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": model_name("clip_l"), "type": "sd3", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": model_name("vae16")}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple on a table", "clip": ["2", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["2", 0]}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "10": {"class_type": "KSampler", "inputs": {
            "seed": 42, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0]}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["3", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"filename_prefix": "host_ui", "images": ["11", 0]}},
    }
    assert output_nodes(api, comfy_server.object_info()) == ["12"]
    entry = comfy_server.run(api, timeout=300, extra_data={"extra_pnginfo": {"workflow": workflow}})
    (ref,) = comfy_server.images(entry)
    assert png_size(comfy_server.view(ref)) == (64, 64)  # 96×96 had the bypass not been routed around


def test_interrupt_stops_a_running_prompt(comfy_server):
    graph = text_to_image(separate_loaders("sd3", "sd3", "vae16"),
                          {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                          prefix="host_interrupt", steps=10000)
    prompt_id = comfy_server.queue(graph)
    try:
        deadline = time.monotonic() + 120
        while "/10000 [" not in comfy_server.server.log_since_mark():  # KSampler's tqdm bar
            assert time.monotonic() < deadline, "sampling never started"
            time.sleep(0.1)
        t = time.perf_counter()
        comfy_server.interrupt(prompt_id)
        with pytest.raises(PromptInterrupted):
            comfy_server.wait(prompt_id, timeout=60)
        print(f"interrupted after {time.perf_counter() - t:.1f} s")
    finally:  # never leave a 10000-step prompt blocking the shared server
        if comfy_server.queue_state()["queue_running"]:
            comfy_server.interrupt()


def test_invalid_prompt_is_rejected_with_node_errors(comfy_server):
    graph = text_to_image(separate_loaders("sd3", "sd3", "vae16"),
                          {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                          prefix="host_bad")
    graph["unet"]["inputs"]["unet_name"] = "no_such_model.safetensors"
    with pytest.raises(PromptRejected, match="unet_name"):
        comfy_server.queue(graph)


def test_flux_txt2img(comfy_server):
    graph = text_to_image(separate_loaders("flux", "stable_diffusion", "vae16"),
                          {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                          prefix="host_flux", cfg=1.0, zero_negative=True,
                          positive_extra={"class_type": "FluxGuidance", "inputs": {"guidance": 3.5}})
    run_and_check_image(comfy_server, graph, (64, 64), "FLUX")


def test_sd15_checkpoint_txt2img(comfy_server):
    loaders = {"nodes": {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model_name("sd15")}}},
               "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2]}
    graph = text_to_image(loaders, {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
                          prefix="host_sd15", steps=2)
    run_and_check_image(comfy_server, graph, (64, 48), "EPS")


def test_pack_is_linked_into_custom_nodes(comfy_server):
    link = comfy_server.server.custom_nodes_dir / PACK_NAME
    assert link.resolve() == REPO_ROOT
    if not (REPO_ROOT / "__init__.py").is_file():
        pytest.skip("the pack has no root __init__.py yet, so ComfyUI has nothing to load")
    log = comfy_server.server.log_text()
    assert f"(IMPORT FAILED): {link}" not in log, comfy_server.server.log_tail()
    modules = {info.get("python_module") for info in comfy_server.object_info().values()}
    assert f"custom_nodes.{PACK_NAME}" in modules, "ComfyUI loaded the pack but it registered no nodes"
