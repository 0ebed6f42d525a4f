"""ComfyUI loads the pack: no import error at startup, and the nodes it serves are the pack's."""

from __future__ import annotations

import importlib
import re

from conftest import PACK_NAME

seedream = importlib.import_module(f"{PACK_NAME}.nodes.seedream")

OUR_NODES = (
    "CometAPISeedreamTextToImage",
    "CometAPISeedreamImageToImage",
    "CometAPISeedreamSequential",
    "CometAPISeedreamLedger",
)


def test_the_pack_imports_without_error(comfyui):
    print(f"ComfyUI {comfyui.versions()}")
    log = comfyui.startup_log
    path = str(comfyui.pack_path)
    # ComfyUI lists each custom node's import time, marked "(IMPORT FAILED)" when it raised.
    mentions = [line for line in log.splitlines() if path in line]
    timing = [line for line in mentions if line.endswith(f": {path}")]
    assert len(timing) == 1 and re.fullmatch(rf"\s*[\d.]+ seconds: {re.escape(path)}", timing[0]), mentions
    assert f"Cannot import {path}" not in log, mentions
    tracebacks = log.split("Traceback (most recent call last):")[1:]
    assert not [block for block in tracebacks if path in block.split("\n\n")[0]], "a traceback from the pack"


def test_object_info_lists_our_nodes_with_their_inputs(comfyui):
    info = comfyui.object_info()
    assert set(OUR_NODES) <= set(info), f"missing: {sorted(set(OUR_NODES) - set(info))}"
    assert set(seedream.NODE_CLASS_MAPPINGS) == set(OUR_NODES)
    for node_id in OUR_NODES:
        served, cls = info[node_id], seedream.NODE_CLASS_MAPPINGS[node_id]
        assert served["python_module"] == f"custom_nodes.{comfyui.pack_folder}", node_id
        defined = cls.INPUT_TYPES()
        for section in ("required", "optional", "hidden"):
            assert list(served["input"].get(section, {})) == list(defined.get(section, {})), f"{node_id} {section}"
        assert served["output"] == list(cls.RETURN_TYPES), node_id
        assert served["output_name"] == list(cls.RETURN_NAMES), node_id
    required = {node_id: set(info[node_id]["input"]["required"]) for node_id in OUR_NODES}
    for node_id in OUR_NODES[:3]:
        assert {"prompt", "model", "size", "width", "height", "seed", "watermark"} <= required[node_id], node_id
    assert "image_1" in required["CometAPISeedreamImageToImage"]
    assert [f"image_{n}" for n in range(2, 15)] == [
        name for name in info["CometAPISeedreamImageToImage"]["input"]["optional"] if name.startswith("image_")
    ]
    assert "max_images" in required["CometAPISeedreamSequential"]
    entries = info["CometAPISeedreamLedger"]["input"]["required"]["entry"][0]
    assert entries[0] == "latest"
