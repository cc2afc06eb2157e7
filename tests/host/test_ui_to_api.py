"""ui_to_api on a synthetic object_info: the frontend's widget and link rules, no ComfyUI needed."""

from __future__ import annotations

import pytest
from client import ui_to_api, widget_values

OBJECT_INFO = {
    # V1-style sampler: "seed" declares nothing, so the frontend adds the control value anyway.
    "Sampler": {
        "input": {"required": {"model": ["MODEL"], "seed": ["INT", {"default": 0}], "steps": ["INT", {}],
                               "sampler": [["euler", "heun"], {}]},
                  "optional": {"strength": ["FLOAT", {"default": 1.0}]}},
        "input_order": {"required": ["model", "seed", "steps", "sampler"], "optional": ["strength"]},
        "output": ["LATENT"], "output_node": False,
    },
    # Declared flags: seed without control, a FLOAT and a COMBO with control, a forced socket.
    "Flags": {
        "input": {"required": {"seed": ["INT", {"control_after_generate": False}],
                               "jitter": ["FLOAT", {"control_after_generate": True}],
                               "pick": ["COMBO", {"options": ["a", "b"], "control_after_generate": True}],
                               "count": ["INT", {"forceInput": True}],
                               "label": ["STRING", {}]}},
        "output": ["STRING"],
    },
    # input_order wins over the (possibly reordered) dict order.
    "Ordered": {
        "input": {"required": {"b": ["INT", {}], "a": ["INT", {}]}},
        "input_order": {"required": ["a", "b"]},
        "output": ["INT"],
    },
    "Upload": {
        "input": {"required": {"image": [["x.png"], {"image_upload": True}], "scale": ["FLOAT", {}]},
                  "optional": {"note": ["STRING", {}]}},
        "output": ["IMAGE"],
    },
    "Loader": {"input": {"required": {"name": [["m.safetensors"]]}}, "output": ["MODEL", "CLIP"]},
    "Mix": {"input": {"required": {"clip": ["CLIP"], "model": ["MODEL"]}}, "output": ["MODEL"]},
    "Sink": {"input": {"required": {"model": ["MODEL"]}, "optional": {"x": ["INT", {}]}},
             "output": [], "output_node": True},
}


def node(id_, type_, widgets=None, inputs=(), outputs=(), mode=0):
    n = {"id": id_, "type": type_, "mode": mode, "inputs": list(inputs), "outputs": list(outputs)}
    if widgets is not None:
        n["widgets_values"] = widgets
    return n


@pytest.mark.parametrize("type_, values, expected", [
    ("Sampler", [5, "randomize", 20, "heun", 0.5], {"seed": 5, "steps": 20, "sampler": "heun", "strength": 0.5}),
    ("Sampler", [5, "fixed", 20, "heun"], {"seed": 5, "steps": 20, "sampler": "heun"}),  # optional absent
    ("Flags", [3, 0.1, "fixed", "b", "increment", "", "hi"], {"seed": 3, "jitter": 0.1, "pick": "b", "label": "hi"}),
    ("Ordered", [1, 2], {"a": 1, "b": 2}),
    ("Upload", ["x.png", 2.0, "image", "n"], {"image": "x.png", "scale": 2.0, "note": "n"}),
])
def test_positional_widgets_values_skip_frontend_only_values(type_, values, expected):
    assert widget_values({"widgets_values": values}, OBJECT_INFO[type_]) == expected


def test_named_and_dict_widgets_values_map_by_name():
    named = {"widgets_values": [9, "randomize", 1, "euler"],
             "widgets_values_named": {"seed": 5, "control_after_generate": "fixed", "steps": 20, "sampler": "heun"}}
    assert widget_values(named, OBJECT_INFO["Sampler"]) == {"seed": 5, "steps": 20, "sampler": "heun"}
    as_dict = {"widgets_values": {"steps": 3, "seed": 1, "unknown": 0}}
    assert widget_values(as_dict, OBJECT_INFO["Sampler"]) == {"seed": 1, "steps": 3}


def _graph(mix_mode=0, loader_mode=0):
    """Loader(1) -MODEL-> Reroute(2) -> Mix(3, also CLIP from 1) -> Sink(4); Primitive(5) -> Sink.x."""
    nodes = [
        node(1, "Loader", ["m.safetensors"], outputs=[{"name": "MODEL", "type": "MODEL", "links": [1]},
                                                      {"name": "CLIP", "type": "CLIP", "links": [2]}], mode=loader_mode),
        node(2, "Reroute", inputs=[{"name": "", "type": "*", "link": 1}], outputs=[{"type": "MODEL", "links": [3]}]),
        # Mix's slot 0 is CLIP, so a bypass must fall back to its first MODEL input (slot 1).
        node(3, "Mix", inputs=[{"name": "clip", "type": "CLIP", "link": 2}, {"name": "model", "type": "MODEL", "link": 3}],
             outputs=[{"name": "MODEL", "type": "MODEL", "links": [4]}], mode=mix_mode),
        node(4, "Sink", [7], inputs=[{"name": "model", "type": "MODEL", "link": 4},
                                     {"name": "x", "type": "INT", "link": 5, "widget": {"name": "x"}}]),
        node(5, "PrimitiveNode", [11, "fixed"], outputs=[{"type": "INT", "links": [5]}]),
        node(6, "MarkdownNote", ["# notes"]),
    ]
    links = [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 3, 0, "CLIP"], [3, 2, 0, 3, 1, "MODEL"], [4, 3, 0, 4, 0, "MODEL"],
             {"id": 5, "origin_id": 5, "origin_slot": 0, "target_id": 4, "target_slot": 1, "type": "INT"}]
    return {"nodes": nodes, "links": links}


def _inputs(api):
    return {k: v["inputs"] for k, v in api.items()}


def test_links_reroutes_primitives_and_notes():
    assert _inputs(ui_to_api(_graph(), OBJECT_INFO)) == {
        "1": {"name": "m.safetensors"},
        "3": {"clip": ["1", 1], "model": ["1", 0]},
        "4": {"model": ["3", 0], "x": 11},
    }


def test_bypassed_node_is_routed_around_by_type():
    assert _inputs(ui_to_api(_graph(mix_mode=4), OBJECT_INFO)) == {
        "1": {"name": "m.safetensors"},
        "4": {"model": ["1", 0], "x": 11},
    }


def test_muted_source_drops_the_link_and_keeps_widget_values():
    graph = _graph(loader_mode=2)
    graph["nodes"][4]["mode"] = 2  # the primitive too: Sink.x falls back to its widget value
    assert _inputs(ui_to_api(graph, OBJECT_INFO)) == {"3": {}, "4": {"model": ["3", 0], "x": 7}}


def test_unknown_node_type_and_subgraphs_are_refused():
    graph = _graph()
    graph["nodes"][0]["type"] = "NotInstalled"
    with pytest.raises(ValueError, match="NotInstalled"):
        ui_to_api(graph, OBJECT_INFO)
    graph = _graph()
    graph["definitions"] = {"subgraphs": [{"id": "Sub-1"}]}
    graph["nodes"][3]["type"] = "Sub-1"
    with pytest.raises(ValueError, match="subgraph"):
        ui_to_api(graph, OBJECT_INFO)
