"""Every example workflow, as a user runs it: the saved UI-format file, converted with what the
server's /object_info says, queued, run to success, its images saved, and the service asked exactly
what the graph means."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import PACK_DIR
from PIL import Image
from workflow_format import ui_to_api_prompt

WORKFLOWS = sorted((PACK_DIR / "examples" / "workflows").glob("*.json"))
GENERATORS = {"CometAPISeedreamTextToImage", "CometAPISeedreamImageToImage", "CometAPISeedreamSequential"}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module", autouse=True)
def reference_images(comfyui):
    """The files the examples' Load Image nodes name, in ComfyUI's input folder."""
    nodes = [node for path in WORKFLOWS for node in load(path)["nodes"]]
    names = {node["widgets_values"][0] for node in nodes if node["type"] == "LoadImage"}
    y, x = np.mgrid[0:480, 0:640]
    pixels = np.stack([x * 255 // 639, y * 255 // 479, (x // 40 + y // 40) % 2 * 200 + 30], axis=-1)
    comfyui.input_dir.mkdir(exist_ok=True)
    for name in names:
        Image.fromarray(pixels.astype(np.uint8)).save(comfyui.input_dir / name)


def expected_request(inputs: dict) -> tuple[str, int, int | None]:
    # Each linked image_N carries one image in the examples (a Load Image, or a single result).
    references = sum(1 for name in inputs if name.startswith("image_"))
    return inputs["model"], references, inputs.get("max_images")


def sent_request(body: dict) -> tuple[str, int, int | None]:
    images = body.get("image") or []
    references = 1 if isinstance(images, str) else len(images)
    return body["model"], references, (body.get("sequential_image_generation_options") or {}).get("max_images")


def pixel_digest(data: bytes) -> tuple[tuple[int, ...], str]:
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"))
    return pixels.shape, hashlib.sha256(pixels.tobytes()).hexdigest()


@pytest.mark.parametrize("path", WORKFLOWS, ids=[path.stem for path in WORKFLOWS])
def test_example_workflow_runs(path, comfyui, cometapi):
    prompt = ui_to_api_prompt(load(path), comfyui.node_defs())
    entry = comfyui.run(prompt)
    assert entry["status"]["status_str"] == "success", comfyui.problems(entry)

    generators = [node["inputs"] for node in prompt.values() if node["class_type"] in GENERATORS]
    sent = sorted(sent_request(request.json) for request in cometapi.generation_requests())
    assert sent == sorted(expected_request(inputs) for inputs in generators)

    saved = []
    for node_id, output in entry["outputs"].items():
        if prompt[node_id]["class_type"] != "SaveImage":
            continue
        for image in output["images"]:
            assert image["type"] == "output", image
            saved.append((comfyui.output_dir / image["subfolder"] / image["filename"]).read_bytes())
    # The emulator makes exactly max_images in a group; the other nodes make one image each.
    assert len(saved) == sum(inputs.get("max_images", 1) for inputs in generators)

    # What the service served, fetched again through the same signed links the pack used.
    links = [download.raw_target for download in list(cometapi.downloads) if download.status == 200]
    served = [httpx.get(cometapi.storage_origin + link).content for link in links]
    assert sorted(map(pixel_digest, saved)) == sorted(map(pixel_digest, served)), "saved pixels differ from served"
