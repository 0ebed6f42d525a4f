"""The example workflows in `examples/workflows/`: saved in ComfyUI's UI format (what the frontend
writes and what users drag onto the canvas), they must line up with the node definitions, since
`widgets_values` is positional and links refer to slot numbers.

`ui_to_api_prompt` (tests/workflow_format.py) turns such a workflow into the API format that
`POST /prompt` takes.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import PACK_DIR, PACK_NAME
from workflow_format import CONTROL_MODES, is_widget, ui_to_api_prompt, widget_slots

seedream = importlib.import_module(f"{PACK_NAME}.nodes.seedream")
request = importlib.import_module(f"{PACK_NAME}.nodes.request")
models = importlib.import_module(f"{PACK_NAME}.nodes.models")

WORKFLOW_DIR = PACK_DIR / "examples" / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
REQUIRED_WORKFLOWS = {
    "seedream_text_to_image",
    "seedream_image_to_image",
    "seedream_sequential_storyboard",
    "seedream_generate_then_edit",
}
OUR_NODES = dict(seedream.NODE_CLASS_MAPPINGS)

# ---------------------------------------------------------------------------------------------
# Core ComfyUI nodes the examples may use: INPUT_TYPES as in ComfyUI 0.3.64 (LoadImage's combo
# holds the one file ComfyUI ships in input/), outputs as (name, type, is_list), and the length of
# widgets_values the frontend saves (a self-check of `widget_slots`).

CORE_NODES: dict[str, dict[str, Any]] = {
    "SaveImage": {
        "input_types": {
            "required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        "outputs": (),
        "widget_count": 1,
    },
    "PreviewImage": {
        "input_types": {
            "required": {"images": ("IMAGE",)},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        "outputs": (),
        "widget_count": 0,
    },
    "LoadImage": {
        "input_types": {"required": {"image": (["example.png"], {"image_upload": True})}},
        "outputs": (("IMAGE", "IMAGE", False), ("MASK", "MASK", False)),
        "widget_count": 2,
    },
}
NON_EMPTY_STRINGS = {"prompt", "filename_prefix"}


def node_definitions() -> dict[str, dict[str, Any]]:
    defs = {node_id: cls.INPUT_TYPES() for node_id, cls in OUR_NODES.items()}
    return defs | {node_type: core["input_types"] for node_type, core in CORE_NODES.items()}


def node_outputs(node_type: str) -> list[tuple[str, str, bool]]:
    if node_type in OUR_NODES:
        cls = OUR_NODES[node_type]
        return list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES, cls.OUTPUT_IS_LIST, strict=True))
    return list(CORE_NODES[node_type]["outputs"])


def socket_inputs(input_types: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(name, type, required) of every socket input, in definition order."""
    return [
        (name, spec[0], section == "required")
        for section in ("required", "optional")
        for name, spec in input_types.get(section, {}).items()
        if not is_widget(spec)
    ]


def value_problem(name: str, spec: tuple, extra: str | None, value: Any) -> str | None:
    """Why `value` is not valid for this widget position, or None."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    if extra == "control":
        return None if value in CONTROL_MODES else f"control mode {value!r} not in {CONTROL_MODES}"
    if extra == "upload":
        return None if isinstance(value, str) else f"upload button value {value!r} is not a string"
    if isinstance(kind, (list, tuple)) or kind == "COMBO":
        choices = kind if isinstance(kind, (list, tuple)) else options.get("options", [])
        return None if value in choices else f"{value!r} is not one of its choices"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if kind == "STRING":
        if not isinstance(value, str):
            return f"{value!r} is not a string"
        return f"{name} is empty" if name in NON_EMPTY_STRINGS and not value.strip() else None
    if kind in ("INT", "FLOAT"):
        numeric = (int,) if kind == "INT" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            return f"{value!r} is not {kind}"
        low, high = options.get("min", float("-inf")), options.get("max", float("inf"))
        if not low <= value <= high:
            return f"{value} is outside {low}..{high}"
        step = options.get("step")
        if kind == "INT" and step and (value - options.get("min", 0)) % step:
            return f"{value} is not on the step {step} from {options.get('min', 0)}"
        return None
    return f"unknown widget type {kind!r}"


# ---------------------------------------------------------------------------------------------


@pytest.fixture
def node_defs() -> dict[str, dict[str, Any]]:
    """INPUT_TYPES of every known node, read inside the test (built-in model table only)."""
    return node_definitions()


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


workflow_files = pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])


def test_the_examples_exist():
    names = {path.stem for path in WORKFLOWS}
    assert REQUIRED_WORKFLOWS <= names, f"missing: {sorted(REQUIRED_WORKFLOWS - names)}"
    for name in names:
        assert name == name.lower() and " " not in name, f"{name}: keep file names short and lowercase"


def test_workflow_ids_are_distinct():
    ids = [load(path)["id"] for path in WORKFLOWS]
    assert len(set(ids)) == len(ids)


def test_core_node_table_matches_the_layout_rule():
    for node_type, core in CORE_NODES.items():
        assert len(widget_slots(core["input_types"])) == core["widget_count"], node_type


def test_seed_is_followed_by_its_control_value(node_defs):
    for node_type in (t for t in OUR_NODES if "seed" in node_defs[t]["required"]):
        slots = widget_slots(node_defs[node_type])
        position = slots.index(("seed", node_defs[node_type]["required"]["seed"], None))
        assert slots[position + 1][0] == "seed" and slots[position + 1][2] == "control"
        assert "unique_id" not in {name for name, _, _ in slots}


@workflow_files
def test_top_level_format(path):
    workflow = load(path)
    assert path.read_text(encoding="utf-8").startswith('{\n  "'), "2-space indented JSON"
    assert uuid.UUID(workflow["id"]).version == 4
    assert workflow["revision"] == 0
    assert workflow["version"] == 0.4
    assert workflow["groups"] == [] and workflow["config"] == {}
    assert workflow["extra"]["ds"] == {"scale": 1, "offset": [0, 0]}
    node_ids = [node["id"] for node in workflow["nodes"]]
    link_ids = [link[0] for link in workflow["links"]]
    assert len(set(node_ids)) == len(node_ids) and len(set(link_ids)) == len(link_ids)
    assert workflow["last_node_id"] == max(node_ids)
    assert workflow["last_link_id"] == max(link_ids, default=0)


@workflow_files
def test_nodes_are_known_and_well_formed(path, node_defs):
    workflow = load(path)
    for node in workflow["nodes"]:
        node_type = node["type"]
        where = f"{path.name} node {node['id']} ({node_type})"
        assert node_type in OUR_NODES or node_type in CORE_NODES, f"{where}: unknown node type"
        assert node["mode"] == 0, where
        assert node["flags"] == {}, where
        assert node["properties"].get("Node name for S&R") == node_type, where
        assert len(node["pos"]) == 2 and len(node["size"]) == 2, where
        outputs = node_outputs(node_type)
        assert [(o["name"], o["type"], o.get("shape") == 6) for o in node["outputs"]] == outputs, where
        sockets = socket_inputs(node_defs[node_type])
        listed = [(i["name"], i["type"]) for i in node["inputs"] if "widget" not in i]
        assert listed == [(name, kind) for name, kind, _ in sockets], f"{where}: socket inputs"


@workflow_files
def test_widget_values_fit_the_definitions(path, node_defs):
    for node in load(path)["nodes"]:
        where = f"{path.name} node {node['id']} ({node['type']})"
        slots = widget_slots(node_defs[node["type"]])
        values = node["widgets_values"]
        assert len(values) == len(slots), f"{where}: {len(values)} widgets_values, expected {len(slots)}"
        for (name, spec, extra), value in zip(slots, values, strict=True):
            problem = value_problem(name, spec, extra, value)
            assert problem is None, f"{where}, {name}{' (' + extra + ')' if extra else ''}: {problem}"
        if node["type"] in OUR_NODES:
            controls = [value for (_, _, extra), value in zip(slots, values, strict=True) if extra == "control"]
            assert controls == ["fixed"], f"{where}: examples keep the seed fixed (no rebilling on open)"


@workflow_files
def test_links_are_consistent(path, node_defs):
    workflow = load(path)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for link in workflow["links"]:
        link_id, from_id, from_slot, to_id, to_slot, kind = link
        assert from_id in nodes and to_id in nodes, f"link {link_id}: missing node"
        output = nodes[from_id]["outputs"][from_slot]
        target = nodes[to_id]["inputs"][to_slot]
        assert link_id in (output["links"] or []), f"link {link_id}: not listed on its output"
        assert target["link"] == link_id, f"link {link_id}: not set on its input"
        assert kind == output["type"] == target["type"] == "IMAGE", f"link {link_id}: type"
        assert nodes[from_id]["order"] < nodes[to_id]["order"], f"link {link_id}: order is not topological"
    by_id = {link[0]: link for link in workflow["links"]}
    for node in workflow["nodes"]:
        for slot, output in enumerate(node["outputs"]):
            for link_id in output["links"] or []:
                assert by_id[link_id][1:3] == [node["id"], slot], f"node {node['id']} output {slot}"
        for slot, target in enumerate(node["inputs"]):
            if target["link"] is not None:
                assert by_id[target["link"]][3:5] == [node["id"], slot], f"node {node['id']} input {slot}"
        required = [name for name, _, is_required in socket_inputs(node_defs[node["type"]]) if is_required]
        linked = {i["name"] for i in node["inputs"] if i["link"] is not None}
        assert set(required) <= linked, f"node {node['id']} ({node['type']}): required input not linked"
    orders = sorted(node["order"] for node in workflow["nodes"])
    assert orders == list(range(len(orders)))


@workflow_files
def test_layout_does_not_overlap(path):
    nodes = load(path)["nodes"]
    boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in nodes]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
            assert apart, f"{path.name}: nodes overlap at {a} and {b}"


@workflow_files
def test_api_prompt_passes_the_definitions(path, node_defs):
    workflow = load(path)
    prompt = ui_to_api_prompt(workflow, node_defs)
    assert set(prompt) == {str(node["id"]) for node in workflow["nodes"]}
    for node_id, entry in prompt.items():
        defs = node_defs[entry["class_type"]]
        known = {**defs.get("required", {}), **defs.get("optional", {})}
        inputs = entry["inputs"]
        missing = set(defs.get("required", {})) - set(inputs)
        assert not missing, f"node {node_id}: required inputs missing: {sorted(missing)}"
        unknown = set(inputs) - set(known)
        assert not unknown, f"node {node_id}: unknown inputs: {sorted(unknown)}"
        for name, value in inputs.items():
            if is_widget(known[name]):
                assert value_problem(name, known[name], None, value) is None, f"node {node_id}: {name}"
            else:
                source, slot = value
                assert source in prompt, f"node {node_id}: {name} comes from a missing node"
                assert node_outputs(prompt[source]["class_type"])[slot][1] == known[name][0]


@workflow_files
def test_our_nodes_pass_the_pre_flight_check(path, node_defs):
    """Each example would be accepted by the pack's own checks (no error, no warning note)."""
    fields = {f.name for f in dataclasses.fields(request.GenerationOptions)}
    for node_id, entry in ui_to_api_prompt(load(path), node_defs).items():
        if entry["class_type"] not in OUR_NODES:
            continue
        inputs = entry["inputs"]
        opts = request.GenerationOptions(**{k: v for k, v in inputs.items() if k in fields})
        references = [(2048, 2048) for name in inputs if name.startswith("image_")]
        checked = request.check_request(opts, models.load_table(), references)
        assert checked.notes == [], f"node {node_id}: {checked.notes}"


def test_ui_to_api_prompt_example(node_defs):
    workflow = load(WORKFLOW_DIR / "seedream_generate_then_edit.json")
    prompt = ui_to_api_prompt(workflow, node_defs)
    generate = next(k for k, v in prompt.items() if v["class_type"] == "CometAPISeedreamTextToImage")
    edit = next(k for k, v in prompt.items() if v["class_type"] == "CometAPISeedreamImageToImage")
    assert prompt[edit]["inputs"]["image_1"] == [generate, 0]
    assert prompt[edit]["inputs"]["seed"] == 0
    assert "control_after_generate" not in prompt[edit]["inputs"]
    assert "unique_id" not in prompt[edit]["inputs"]
    saves = [v["inputs"] for v in prompt.values() if v["class_type"] == "SaveImage"]
    assert sorted(s["images"][0] for s in saves) == sorted([generate, edit])


def test_ui_to_api_prompt_drops_the_upload_value_and_follows_converted_widgets(node_defs):
    workflow = {
        "nodes": [
            {"id": 1, "type": "LoadImage", "mode": 0, "inputs": [], "widgets_values": ["example.png", "image"]},
            {"id": 2, "type": "CometAPISeedreamTextToImage", "mode": 0,
             "inputs": [{"name": "prompt", "type": "STRING", "widget": {"name": "prompt"}, "link": 7}],
             "widgets_values": [
                 "", "doubao-seedream-4-5-251128", "2K", 2048, 2048, 5, "randomize", False,
                 "url", "jpeg", 2.5, "standard", False, 0, False,
             ]},
        ],
        "links": [[7, 1, 0, 2, 0, "STRING"]],
    }
    prompt = ui_to_api_prompt(workflow, node_defs)
    assert prompt["1"] == {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    assert prompt["2"]["inputs"]["prompt"] == ["1", 0]
    assert prompt["2"]["inputs"]["seed"] == 5 and prompt["2"]["inputs"]["watermark"] is False
    with pytest.raises(ValueError, match="widgets_values"):
        ui_to_api_prompt({"nodes": [{**workflow["nodes"][0], "widgets_values": ["example.png"]}]}, node_defs)
