"""ComfyUI's two workflow formats: the UI format (what the frontend saves and users share) and the
API format (what `POST /prompt` takes). Shared by the example checks (tests/test_workflows.py) and
the suite against a real ComfyUI (tests/integration/), which feeds it `/object_info`."""

from __future__ import annotations

from typing import Any

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CONTROL_MODES = ("fixed", "increment", "decrement", "randomize")
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")


def is_widget(spec: tuple) -> bool:
    """A widget (value stored in `widgets_values`) rather than a socket (value comes by a link)."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES) and not options.get("forceInput")


def widget_slots(input_types: dict[str, Any]) -> list[tuple[str, tuple, str | None]]:
    """One entry per position of `widgets_values`, as the ComfyUI frontend (1.2x) lays them out.

    Widgets follow INPUT_TYPES order, required then optional (hidden inputs have no widget).
    Each entry is `(input name, input spec, extra)`: `extra` is None for the input's own value,
    `"control"` for the control_after_generate mode the frontend stores right after an INT/COMBO
    with `control_after_generate` (or an INT named seed/noise_seed, the legacy convention), and
    `"upload"` for the upload button stored after a combo with `image_upload` and the like.
    Extra values are UI-only: they are not sent in the API prompt.
    """
    slots: list[tuple[str, tuple, str | None]] = []
    for section in ("required", "optional"):
        for name, spec in input_types.get(section, {}).items():
            if not is_widget(spec):
                continue
            kind = spec[0]
            options = spec[1] if len(spec) > 1 else {}
            slots.append((name, spec, None))
            is_combo = isinstance(kind, (list, tuple)) or kind == "COMBO"
            control = options.get("control_after_generate")
            if control is None and kind == "INT":
                control = name in ("seed", "noise_seed")
            if control and (kind == "INT" or is_combo):
                slots.append((name, spec, "control"))
            if is_combo and section == "required" and any(options.get(flag) for flag in UPLOAD_FLAGS):
                slots.append((name, spec, "upload"))
    return slots


def ui_to_api_prompt(workflow: dict[str, Any], node_defs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Convert a UI-format workflow (frontend 1.2x, `"version": 0.4`) to ComfyUI's API prompt format.

    `node_defs` maps each node type (class_type) to its `INPUT_TYPES()` dict (or the `input` of its
    `/object_info` entry, the same data as JSON). The result is
    `{"<node id>": {"class_type": type, "inputs": {...}}}`: widget values by input name (the
    UI-only control_after_generate and upload values are dropped), and each linked input as
    `[str(from_node_id), from_slot]`; a link into a widget that was turned into an input (an
    input entry with `"widget": {"name": ...}`) replaces that widget's value.

    Only plain nodes are handled: every node type must be in `node_defs` (no Reroute or
    PrimitiveNode, no groups/subgraphs) and active (`mode` 0); `links` are the 0.4 arrays
    `[id, from_node, from_slot, to_node, to_slot, type]`. Anything else raises ValueError.
    """
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, dict[str, Any]] = {}
    for node in workflow["nodes"]:
        class_type = node["type"]
        if class_type not in node_defs:
            raise ValueError(f"node {node['id']}: no definition for node type {class_type!r}")
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']}: muted or bypassed nodes are not supported")
        slots = widget_slots(node_defs[class_type])
        values = node.get("widgets_values") or []
        if isinstance(values, dict):
            raise ValueError(f"node {node['id']}: widgets_values as a dict is not supported")
        if len(values) != len(slots):
            raise ValueError(
                f"node {node['id']} ({class_type}): {len(values)} widgets_values, expected {len(slots)}"
            )
        inputs: dict[str, Any] = {
            name: value for (name, _, extra), value in zip(slots, values, strict=True) if extra is None
        }
        for slot in node.get("inputs", []):
            if slot.get("link") is None:
                continue
            link = links.get(slot["link"])
            if link is None:
                raise ValueError(f"node {node['id']}: input {slot['name']!r} has unknown link {slot['link']}")
            name = (slot.get("widget") or {}).get("name", slot["name"])
            inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": class_type, "inputs": inputs}
    return prompt
