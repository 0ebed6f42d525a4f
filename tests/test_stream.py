"""Streamed answers (`stream: true`): each image of a group is recorded in the ledger, downloaded
and shown as soon as its event arrives, and a plain answer is taken as it is; plus what the node
shows while it runs. Streams that break or are refused are in test_faults.py (the fault matrix)."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
import types

import pytest
from conftest import PACK_NAME

seedream = importlib.import_module(f"{PACK_NAME}.nodes.seedream")
generation = importlib.import_module(f"{PACK_NAME}.nodes.generation")
ledger = importlib.import_module(f"{PACK_NAME}.nodes.ledger")

V45 = "doubao-seedream-4-5-251128"
BASE = {"model": V45, "size": "2K", "width": 2048, "height": 2048, "seed": 0, "watermark": False}


def sequential(max_images: int, prompt: str = "a storyboard", **inputs) -> dict:
    node = seedream.SeedreamSequential()
    return asyncio.run(node.run(prompt=prompt, max_images=max_images, unique_id="7", **(BASE | inputs)))


@pytest.fixture
def comfy_display(monkeypatch):
    """Stand-ins for ComfyUI's progress bar and progress text, recording what the node shows."""
    shown: dict[str, list] = {"text": [], "bar": []}

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.node_id = node_id

        def update_absolute(self, value, total=None, preview=None):
            shown["bar"].append((value, total, preview))

    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    server = types.ModuleType("server")
    server.PromptServer = types.SimpleNamespace(
        instance=types.SimpleNamespace(send_progress_text=lambda text, node_id: shown["text"].append(text))
    )
    comfy = types.ModuleType("comfy")
    comfy.utils = utils
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", utils)
    monkeypatch.setitem(sys.modules, "server", server)
    return shown


def test_a_streamed_group_is_saved_and_downloaded_image_by_image(service, monkeypatch):
    service.time_scale = 0.01  # images done at 0.2 s, 0.43 s and 0.69 s
    recorded, downloads, answered = [], [], []
    record_answer, download = ledger.record_answer, generation.download
    client_generate = generation.CometAPIClient.generate

    def spy_record(answer, *args):
        recorded.append(sum(item.ok for item in answer.items))
        return record_answer(answer, *args)

    async def spy_download(url):
        downloads.append(time.monotonic())
        return await download(url)

    async def spy_generate(self, *args, **kwargs):
        answer = await client_generate(self, *args, **kwargs)
        answered.append(time.monotonic())
        return answer

    monkeypatch.setattr(ledger, "record_answer", spy_record)
    monkeypatch.setattr(generation, "download", spy_download)
    monkeypatch.setattr(generation.CometAPIClient, "generate", spy_generate)
    images, image_list, info_text = sequential(3)["result"]

    assert images.shape[0] == 3 and len(image_list) == 3
    (call,) = service.generation_requests()
    assert call.json["stream"] is True and service.billed_images == 3
    assert recorded == [1, 2, 3]  # the ledger holds each image before its download starts
    assert len(downloads) == 3 and downloads[0] < answered[0] - 0.3  # the first was fetched during the group
    info = json.loads(info_text)
    assert info["usage"]["generated_images"] == 3 and info["notes"] == []
    entry = ledger.load_entry(info["ledger_entry"])
    assert entry.data["status"] == "complete" and entry.data["usage"]["generated_images"] == 3


def test_the_node_shows_phases_elapsed_time_previews_and_the_outcome(service, comfy_display):
    service.time_scale = 0.01
    out = sequential(3)
    texts = comfy_display["text"]
    assert texts[0].startswith("Generating with Seedream 4.5 · ")
    assert any(t.startswith("Generating with Seedream 4.5: 2 of up to 3 done · ") for t in texts)
    assert texts[-1].startswith("Done: 3 images · ")
    previews = [preview for _, _, preview in comfy_display["bar"] if preview]
    assert len(previews) == 3
    kind, image, side = previews[0]
    assert kind == "JPEG" and side == 512 and max(image.size) <= 512

    (shown,) = out["ui"]["seedream"]
    assert shown["generated_images"] == 3 and shown["estimated_cost_usd"] == pytest.approx(0.096)
    assert [image["size"] for image in shown["images"]] == ["2048x2048"] * 3
    assert all(image["url"].startswith(service.storage_origin) and image["expires_at"] for image in shown["images"])
    assert "prompt" not in shown and "request" not in shown


def test_uploading_references_is_a_phase_of_its_own(service, comfy_display):
    import torch

    node = seedream.SeedreamImageToImage()
    asyncio.run(node.run(image_1=torch.rand(1, 256, 256, 3), prompt="edit image 1", unique_id="3", **BASE))
    texts = comfy_display["text"]
    phases = [text.split(" · ")[0] for text in texts]
    upload = next(n for n, phase in enumerate(phases) if phase.startswith("Uploading 1 reference ("))
    assert phases.index("Preparing 1 reference image") < upload < phases.index("Generating with Seedream 4.5")


def test_a_streamed_group_of_inline_images_is_saved_image_by_image(service):
    images, _, info_text = sequential(3, response_format="b64_json")["result"]
    entry = ledger.load_entry(json.loads(info_text)["ledger_entry"])
    files = [image["file"] for image in entry.data["images"]]
    assert images.shape[0] == 3 and len(set(files)) == 3 and not service.downloads
    assert all(entry.image_file(name).read_bytes()[:2] == b"\xff\xd8" for name in files)
