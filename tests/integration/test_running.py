"""How the nodes behave inside ComfyUI's executor: cancel, two requests at once, inputs refused
before anything is sent."""

from __future__ import annotations

import importlib
import time

import pytest
from conftest import PACK_NAME
from emulator import Fault

seedream = importlib.import_module(f"{PACK_NAME}.nodes.seedream")

CANCEL_LIMIT_S = 2.0  # the README promises "within a second"; the margin absorbs a busy machine


def test_cancel_stops_a_slow_request_and_the_next_prompt_runs(comfyui, cometapi, text_to_image):
    cometapi.inject(Fault("delay", delay=30))
    prompt_id = comfyui.queue_ok(text_to_image("cancelled"))
    deadline = time.monotonic() + 60
    while not cometapi.generation_requests():
        assert time.monotonic() < deadline, "the request never reached the service"
        time.sleep(0.02)
    (request,) = cometapi.generation_requests()

    started = time.monotonic()
    assert comfyui.http.post("/interrupt").status_code == 200
    entry = comfyui.wait(prompt_id, timeout=30, interval=0.02)
    latency = time.monotonic() - started
    print(f"prompt ended {latency:.2f} s after POST /interrupt")

    assert latency <= CANCEL_LIMIT_S
    assert request.status == 0, "the service answered: the node did not stop by itself"
    assert entry["status"]["status_str"] == "error"
    interrupted = [data for kind, data in entry["status"]["messages"] if kind == "execution_interrupted"]
    assert [data["node_type"] for data in interrupted] == ["CometAPISeedreamTextToImage"]

    after = comfyui.run(text_to_image("after_cancel"))
    assert after["status"]["status_str"] == "success", comfyui.problems(after)
    assert len(cometapi.generation_requests()) == 2


def test_two_nodes_in_one_graph_overlap(comfyui, cometapi, text_to_image):
    cometapi.time_scale = 0.1
    latency = cometapi.latency(0)  # each image takes this long to "generate"
    prompt = text_to_image("overlap_a", first_id=1) | text_to_image("overlap_b", first_id=3)
    started = time.monotonic()
    prompt_id = comfyui.queue_ok(prompt)
    arrived: dict[int, float] = {}
    answered: dict[int, float] = {}
    while (entry := comfyui.history(prompt_id)) is None:
        now = time.monotonic()
        assert now - started < 60, "the prompt did not finish"
        for index, request in enumerate(cometapi.generation_requests()):
            arrived.setdefault(index, now)
            if request.status:
                answered.setdefault(index, now)
        time.sleep(0.02)
    wall = time.monotonic() - started

    assert entry["status"]["status_str"] == "success", comfyui.problems(entry)
    assert len(arrived) == len(answered) == 2
    overlap = min(answered.values()) - max(arrived.values())
    print(f"each request {latency:.1f} s, both in flight for {overlap:.2f} s, prompt {wall:.2f} s")
    assert overlap >= latency / 2, "the second request started only after the first was answered"
    assert wall < 2 * latency, "one after the other would take at least twice the latency"


@pytest.mark.parametrize(
    "change",
    [{"model": "doubao-seedream-4-5-251128", "size": "1K"}, {"prompt": ""}],
    ids=["size_1K_on_4_5", "empty_prompt"],
)
def test_a_refused_input_marks_our_node_before_anything_runs(comfyui, cometapi, text_to_image, change):
    prompt = text_to_image("refused", **change)
    inputs = prompt["1"]["inputs"]
    message = seedream.SeedreamTextToImage.VALIDATE_INPUTS(
        **{name: inputs[name] for name in ("prompt", "model", "size", "width", "height")}
    )
    assert isinstance(message, str), "the pack's own check should refuse this input"

    response = comfyui.queue(prompt)
    assert response.status_code == 400, response.text
    # node_errors is what the frontend uses to outline a node in red and list its problems.
    node_errors = response.json()["node_errors"]
    assert list(node_errors) == ["1"]
    assert node_errors["1"]["class_type"] == "CometAPISeedreamTextToImage"
    details = [error["details"] for error in node_errors["1"]["errors"]]
    assert any(message in detail for detail in details), details
    assert cometapi.generation_requests() == []
