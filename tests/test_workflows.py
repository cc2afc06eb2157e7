"""Every bundled workflow is consistent with the nodes it uses: its node types exist (in this pack
or in :data:`STOCK`), links connect matching types between existing slots, widget values fit the
declared inputs, it converts to an API prompt with every required input given, and it names the
model files it expects. ``tests/host/test_nodes_host.py`` checks :data:`STOCK` against a real
ComfyUI's /object_info and runs the workflows there."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests" / "host"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from client import NOTE_TYPES, ui_to_api  # noqa: E402  (standard library only)
from nodes import NODE_CLASS_MAPPINGS  # noqa: E402

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))

# The stock ComfyUI (0.33) nodes the workflows use, as /object_info describes them: inputs in
# declaration order, (name, type, options); a list type is a combo (None: any of the server's files).
STOCK: dict[str, dict] = {
    "CheckpointLoaderSimple": {"required": [("ckpt_name", None, {})], "outputs": ["MODEL", "CLIP", "VAE"]},
    "TripleCLIPLoader": {"required": [("clip_name1", None, {}), ("clip_name2", None, {}), ("clip_name3", None, {})],
                         "outputs": ["CLIP"]},
    "CLIPTextEncode": {"required": [("text", "STRING", {"multiline": True}), ("clip", "CLIP", {})],
                       "outputs": ["CONDITIONING"]},
    "EmptySD3LatentImage": {"required": [("width", "INT", {"min": 16, "max": 16384}),
                                         ("height", "INT", {"min": 16, "max": 16384}),
                                         ("batch_size", "INT", {"min": 1, "max": 4096})], "outputs": ["LATENT"]},
    "KSampler": {"required": [("model", "MODEL", {}), ("seed", "INT", {"min": 0, "control_after_generate": True}),
                              ("steps", "INT", {"min": 1, "max": 10000}), ("cfg", "FLOAT", {"min": 0.0, "max": 100.0}),
                              ("sampler_name", ["euler", "euler_ancestral", "dpmpp_2m", "ddim"], {}),
                              ("scheduler", ["simple", "normal", "karras", "beta", "sgm_uniform"], {}),
                              ("positive", "CONDITIONING", {}), ("negative", "CONDITIONING", {}),
                              ("latent_image", "LATENT", {}), ("denoise", "FLOAT", {"min": 0.0, "max": 1.0})],
                 "outputs": ["LATENT"]},
    "VAEDecode": {"required": [("samples", "LATENT", {}), ("vae", "VAE", {})], "outputs": ["IMAGE"]},
    "SaveImage": {"required": [("images", "IMAGE", {}), ("filename_prefix", "STRING", {})], "outputs": ["IMAGE"],
                  "output_node": True},
    "PreviewImage": {"required": [("images", "IMAGE", {})], "outputs": ["IMAGE"], "output_node": True},
    "LoraLoaderModelOnly": {"required": [("model", "MODEL", {}), ("lora_name", None, {}),
                                         ("strength_model", "FLOAT", {"min": -100.0, "max": 100.0})],
                            "outputs": ["MODEL"]},
    "PrimitiveStringMultiline": {"required": [("value", "STRING", {"multiline": True})], "outputs": ["STRING"]},
    "UNETLoader": {"required": [("unet_name", None, {}),
                                ("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {})],
                   "outputs": ["MODEL"]},
    "DualCLIPLoader": {"required": [("clip_name1", None, {}), ("clip_name2", None, {}),
                                    ("type", ["sdxl", "sd3", "flux", "hidream"], {})], "outputs": ["CLIP"]},
    "VAELoader": {"required": [("vae_name", None, {})], "outputs": ["VAE"]},
    "FluxGuidance": {"required": [("conditioning", "CONDITIONING", {}), ("guidance", "FLOAT", {"min": 0.0, "max": 100.0})],
                     "outputs": ["CONDITIONING"]},
}
WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def object_info() -> dict:
    """/object_info entries for this pack's nodes and :data:`STOCK`, as a server would serve them."""
    info = {}
    for name, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        info[name] = {
            "input": {s: {k: list(v) for k, v in (spec.get(s) or {}).items()} for s in ("required", "optional")},
            "input_order": {s: list(spec.get(s) or {}) for s in ("required", "optional")},
            "output": list(cls.RETURN_TYPES), "output_name": list(cls.RETURN_NAMES),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
    for name, s in STOCK.items():
        req = {n: [t if t is not None else ["<file>"], o] for n, t, o in s["required"]}
        info[name] = {"input": {"required": req, "optional": {}},
                      "input_order": {"required": [n for n, _, _ in s["required"]], "optional": []},
                      "output": list(s["outputs"]), "output_name": list(s["outputs"]),
                      "output_node": s.get("output_node", False)}
    return info


def declared(kind: str) -> list[tuple[str, object, dict, bool]]:
    """(name, type, options, required) of every input of a node type, in declaration order."""
    if kind in STOCK:
        return [(n, t, o, True) for n, t, o in STOCK[kind]["required"]]
    spec = NODE_CLASS_MAPPINGS[kind].INPUT_TYPES()
    return [(n, s[0], s[1] if len(s) > 1 else {}, sec == "required")
            for sec in ("required", "optional") for n, s in (spec.get(sec) or {}).items()]


FILE_LISTS = {("ProGRPORewardModelLoader", "model")}


def is_widget(t) -> bool:
    return t is None or isinstance(t, list) or t in WIDGET_KINDS


def outputs_of(kind: str) -> list[str]:
    return list(STOCK[kind]["outputs"]) if kind in STOCK else list(NODE_CLASS_MAPPINGS[kind].RETURN_TYPES)


def check_value(kind, name, t, opts, value) -> None:
    where = f"{kind}.{name}={value!r}"
    if t is None:
        assert isinstance(value, str) and value.endswith(".safetensors"), where
    elif isinstance(t, list):
        if kind in STOCK or (kind, name) in FILE_LISTS:  # the choices are what the user's folders hold
            assert isinstance(value, str) and value, where
        else:
            assert value in t, f"{where} is not one of {t}"
    elif t == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif t == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    elif t == "BOOLEAN":
        assert isinstance(value, bool), where
    elif t == "STRING":
        assert isinstance(value, str), where
    if t in ("INT", "FLOAT"):
        assert opts.get("min", value) <= value <= opts.get("max", value), f"{where} outside [{opts.get('min')}, {opts.get('max')}]"


@pytest.fixture(params=WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def workflow(request):
    return json.loads(request.param.read_text())


def test_there_are_four_workflows():
    assert {p.name for p in WORKFLOWS} == {"progrpo_train_lora.json", "progrpo_inspect_group.json",
                                           "progrpo_compare_lora.json", "progrpo_train_flux_fp8.json"}


def test_workflows_are_up_to_date_with_their_builder():
    done = subprocess.run([sys.executable, str(ROOT / "workflows" / "build.py"), "--check"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_node_types_exist(workflow):
    for node in workflow["nodes"]:
        kind = node["type"]
        assert kind in NODE_CLASS_MAPPINGS or kind in STOCK or kind in NOTE_TYPES, f"unknown node type {kind}"


def test_links_match_types_and_slots(workflow):
    nodes = {n["id"]: n for n in workflow["nodes"]}
    seen_in, seen_out = {}, {}
    for lid, src, src_slot, dst, dst_slot, ltype in workflow["links"]:
        s, d = nodes[src], nodes[dst]
        out_type = outputs_of(s["type"])[src_slot]
        assert s["outputs"][src_slot]["type"] == out_type == ltype, (lid, s["type"], out_type, ltype)
        assert lid in s["outputs"][src_slot]["links"]
        slot = d["inputs"][dst_slot]
        assert slot["link"] == lid, (lid, d["type"], slot)
        decl = {n: t for n, t, _, _ in declared(d["type"])}
        assert slot["name"] in decl, (d["type"], slot["name"])
        want = decl[slot["name"]]
        want = "COMBO" if isinstance(want, list) or want is None else want
        assert want == ltype, f"link {lid}: {s['type']} gives {ltype}, {d['type']}.{slot['name']} takes {want}"
        seen_in[(dst, dst_slot)] = lid
        seen_out.setdefault((src, src_slot), set()).add(lid)
    for n in workflow["nodes"]:  # no dangling link ids on nodes
        for i, slot in enumerate(n.get("inputs", [])):
            assert slot.get("link") == seen_in.get((n["id"], i)), (n["type"], slot)
        for i, out in enumerate(n.get("outputs", [])):
            assert set(out.get("links") or []) == seen_out.get((n["id"], i), set()), (n["type"], out)
    assert workflow["last_link_id"] == max(l[0] for l in workflow["links"])
    assert workflow["last_node_id"] == max(nodes)


def test_widget_values_match_declared_inputs(workflow):
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in NOTE_TYPES:
            continue
        values = list(node.get("widgets_values") or [])
        i = 0
        for name, t, opts, _ in declared(kind):
            if not is_widget(t):
                continue
            assert i < len(values), f"{kind}: no value for widget {name}"
            check_value(kind, name, t, opts, values[i])
            i += 1
            if t == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                assert values[i] in ("fixed", "increment", "decrement", "randomize"), (kind, values[i])
                i += 1
        assert i == len(values), f"{kind}: {len(values)} widget values for {i} widget slots"


def test_converts_to_an_api_prompt_with_every_required_input(workflow):
    info = object_info()
    api = ui_to_api(workflow, info)
    for nid, entry in api.items():
        inputs = entry["inputs"]
        for name, t, _, required in declared(entry["class_type"]):
            if required:
                assert name in inputs, f"node {nid} ({entry['class_type']}) lacks required input {name}"
            if name in inputs and not is_widget(t):
                src, slot = inputs[name]
                assert src in api, f"node {nid}.{name} links to a node that is not sent"
    assert any(info[e["class_type"]]["output_node"] for e in api.values())


def test_names_the_model_files_it_expects(workflow):
    notes = [n for n in workflow["nodes"] if n["type"] in NOTE_TYPES]
    assert notes, "a workflow needs a note naming the model files it expects"
    text = " ".join(str(v) for n in notes for v in n.get("widgets_values", []))
    files = {"CheckpointLoaderSimple": 1, "TripleCLIPLoader": 3, "UNETLoader": 1, "DualCLIPLoader": 2, "VAELoader": 1}
    for n in workflow["nodes"]:
        for f in n.get("widgets_values", [])[:files.get(n["type"], 0)]:  # the file names, not dtypes or types
            assert f in text, f"the note does not name {f}"
    assert "reward_models" in text


TITLE_BAR = 30  # the frontend draws a node's title above its pos (LiteGraph.NODE_TITLE_HEIGHT)
GAP = 10  # as tests/host/test_frontend.py, which checks the same in the browser after a run


def test_nodes_do_not_overlap_as_laid_out(workflow):
    """The stored layout leaves room between nodes; the browser test checks it again once a run has
    grown them (the trainer's preview, result texts, images)."""
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - TITLE_BAR, n["size"][0], n["size"][1] + TITLE_BAR)
             for n in workflow["nodes"]]
    for i, (a, ax, ay, aw, ah) in enumerate(boxes):
        for b, bx, by, bw, bh in boxes[i + 1:]:
            dx = min(ax + aw, bx + bw) - max(ax, bx)
            dy = min(ay + ah, by + bh) - max(ay, by)
            assert dx <= -GAP or dy <= -GAP, f"nodes {a} and {b} overlap or lie closer than {GAP}"


def test_trainer_has_room_for_its_preview(workflow):
    """ComfyUI's frontend (1.49.6) gives the trainer's widgets 798 px and its text and 512x512
    preview 1084 px at least (measured in the browser test); the node keeps room above that."""
    for n in workflow["nodes"]:
        if n["type"] == "ProGRPOLoraTrainer":
            assert n["size"][1] >= 1084 + 60, n["size"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_has_a_template_thumbnail(path):
    """The frontend's template card shows ``<workflow>.jpg`` from beside the JSON."""
    jpg = path.with_suffix(".jpg")
    assert jpg.is_file(), f"no thumbnail {jpg.name} (python workflows/build.py --thumbnails DIR)"
    data = jpg.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and len(data) < 100_000, (jpg.name, len(data))
