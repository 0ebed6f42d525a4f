"""The fault matrix: every way the service, the network or the user can fail a run, what the
emulator saw (how many generation requests, how many images it billed) and what the user got.

Set FAULT_MATRIX_OUT=<file> to write the observed matrix as a Markdown table (docs/faults.md is
made that way).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
import os
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from conftest import PACK_NAME, TEST_KEY
from emulator import Fault

seedream = importlib.import_module(f"{PACK_NAME}.nodes.seedream")
client = importlib.import_module(f"{PACK_NAME}.nodes.client")
errors = importlib.import_module(f"{PACK_NAME}.nodes.errors")
ledger = importlib.import_module(f"{PACK_NAME}.nodes.ledger")

V45 = "doubao-seedream-4-5-251128"
BASE = {"model": V45, "size": "2048x2048 (1:1)", "width": 2048, "height": 2048, "seed": 0, "watermark": False}
ROWS: list[tuple[str, str, str, str]] = []


@pytest.fixture(scope="module", autouse=True)
def write_matrix():
    yield
    out = os.environ.get("FAULT_MATRIX_OUT")
    if out:
        lines = ["| fault | generation requests / images billed | downloads | what the user gets |"]
        lines.append("|---|---|---|---|")
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ROWS]
        Path(out).write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    """Same policy, shorter waits."""
    monkeypatch.setattr(client, "RETRY_BASE_DELAY", 0.05)
    monkeypatch.setattr(client.cooldown, "until", 0.0)


def record(name: str, service, outcome: str) -> None:
    calls = service.generation_requests()
    billing = f"{len(calls)} / {service.billed_images}"
    outcome = outcome.replace(str(ledger.ledger_dir()), "<ledger>").replace("|", "/")
    ROWS.append((name, billing, str(len(service.downloads)), outcome))


def t2i(prompt: str = "a red fox", **inputs):
    return asyncio.run(seedream.SeedreamTextToImage().run(prompt=prompt, **(BASE | inputs)))["result"]


def sequential(prompt: str, max_images: int, **inputs):
    node = seedream.SeedreamSequential()
    return asyncio.run(node.run(prompt=prompt, max_images=max_images, **(BASE | inputs)))["result"]


def failure(call, *args, **kwargs) -> Exception:
    with pytest.raises(errors.SeedreamError) as caught:
        call(*args, **kwargs)
    assert TEST_KEY not in str(caught.value)
    return caught.value


# --- generation: sent again only where nothing can have been billed ---------------------------


def test_connection_refused_is_retried_then_reported(service, monkeypatch):
    monkeypatch.setenv("COMETAPI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens on port 9
    error = failure(t2i)
    assert "Could not send" in str(error) and "nothing was billed" in str(error) and not error.maybe_billed
    record("connection refused (nothing listening)", service, f"retried {client.POST_ATTEMPTS}x, then: {error}")


def test_429_honours_retry_after_and_succeeds(service):
    service.inject(Fault("status", status=429, headers={"Retry-After": "1"}, code="rate_limit"))
    started = time.monotonic()
    images, _, _ = t2i()
    assert time.monotonic() - started >= 1.0 and images.shape[0] == 1
    assert len(service.generation_requests()) == 2 and service.billed_images == 1
    record("429 with Retry-After: 1", service, "waited 1 s, sent again, image delivered")


def test_429_forever_gives_up_without_billing(service):
    service.inject(Fault("status", status=429, times=-1, headers={"Retry-After": "0"}))
    error = failure(t2i)
    assert "429" in str(error) and "nothing was billed" in str(error)
    assert len(service.generation_requests()) == client.POST_ATTEMPTS and service.billed_images == 0
    record("429 on every try", service, f"error: {error}")


@pytest.mark.parametrize("status", [500, 503])
def test_json_server_error_means_not_processed_and_is_retried(service, status):
    body = {"error": {"message": "service busy (request id: abc)", "type": "comet_api_error", "code": "server_error"}}
    service.inject(Fault("status", status=status, body=json.dumps(body), content_type="application/json"))
    images, _, _ = t2i()
    assert len(service.generation_requests()) == 2 and service.billed_images == 1 and images.shape[0] == 1
    record(f"{status} with a JSON error body", service, "sent again (an error answer: no image made), delivered")


def test_500_invalid_request_is_a_bad_request(service):
    service.inject(Fault("status", status=500, code="invalid_request"))
    error = failure(t2i)
    assert "invalid_request" in str(error) and not error.maybe_billed
    assert len(service.generation_requests()) == 1
    record("500 with code invalid_request", service, f"not retried: {error}")


@pytest.mark.parametrize("status", [502, 504, 524])
def test_gateway_page_may_be_billed_and_is_not_retried(service, status):
    service.inject(Fault("status", status=status))
    error = failure(t2i)
    assert error.maybe_billed and "may have been billed" in str(error)
    assert len(service.generation_requests()) == 1
    record(f"{status} HTML page from a gateway", service, f"not retried: {error}")


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        ("drop_before", "connection closed after the request arrived"),
        ("drop_after", "connection closed after the images were made"),
        ("truncate", "answer cut short"),
        ("bad_json", "200 with invalid JSON"),
        ("html", "200 with an HTML page"),
    ],
)
def test_broken_answers_after_sending_are_never_resent(service, kind, label):
    service.inject(Fault(kind, nbytes=40))
    error = failure(t2i)
    assert error.maybe_billed and "may have been billed" in str(error) and "usage log" in str(error)
    assert len(service.generation_requests()) == 1
    record(label, service, f"not sent again: {error}")


def test_server_that_never_answers_times_out_once(service):
    service.inject(Fault("hang"))
    started = time.monotonic()
    error = failure(t2i, timeout=1)
    assert time.monotonic() - started < 5 and "no answer within 1 s" in str(error) and error.maybe_billed
    assert len(service.generation_requests()) == 1
    record("no answer at all (timeout 1 s)", service, f"not sent again: {error}")


def test_slow_answer_within_the_timeout_is_fine(service):
    service.inject(Fault("delay", delay=1.5))
    images, _, _ = t2i(timeout=10)
    assert images.shape[0] == 1 and len(service.generation_requests()) == 1
    record("answer after 1.5 s (timeout 10 s)", service, "delivered")


def test_redirect_is_not_followed(service):
    service.inject(Fault("redirect", status=301, location="https://elsewhere.invalid/v1/images/generations"))
    error = failure(t2i)
    assert "redirect" in str(error) and "base URL" in str(error)
    assert len(service.generation_requests()) == 1
    record("301 redirect", service, f"not followed (the key would go along): {error}")


def test_timeout_grows_with_the_group():
    assert client.generation_timeout(1).read == 180 and client.generation_timeout(15).read == 1020
    assert client.generation_timeout(15, 60).read == 60 and client.generation_timeout(1).connect == 20


# --- streamed answers ------------------------------------------------------------------------


def test_a_refused_stream_is_asked_again_without_it_at_no_cost(service, caplog):
    service.models[V45] = dataclasses.replace(service.models[V45], stream=False)
    images, _, _ = sequential("a storyboard", 2)
    first, second = service.generation_requests()
    assert first.status == 400 and first.json["stream"] is True
    assert second.status == 200 and "stream" not in second.json
    assert images.shape[0] == 2 and service.billed_images == 2
    assert "refused `stream`" in caplog.text
    record("`stream` refused with 400 InvalidParameter", service, "sent once more without it, delivered")


def test_a_stream_that_breaks_keeps_the_images_that_arrived(service):
    service.inject(Fault("truncate", events=2))  # two images, then the connection drops
    images, _, info_text = sequential("a storyboard", 4)
    info = json.loads(info_text)
    assert images.shape[0] == 2 and len(service.generation_requests()) == 1
    (note,) = [note for note in info["notes"] if "stopped early" in note]
    assert "check the usage log" in note
    entry = ledger.load_entry(info["ledger_entry"])
    assert len(entry.data["images"]) == 2 and "stream broke" in entry.data["answer_incomplete"]
    record("stream of 4 broken after 2 images", service, f"2 images out, note: {note}")


def test_a_stream_that_breaks_before_any_image_may_have_been_billed(service):
    service.inject(Fault("truncate", events=0, nbytes=10))
    exc = failure(sequential, "a storyboard", 2)
    assert isinstance(exc, errors.ServiceError) and "may have been billed" in str(exc)
    assert len(service.generation_requests()) == 1
    record("stream broken before its first image", service, f"not sent again: {exc}")


def test_a_gateway_that_ignores_stream_is_read_as_a_plain_answer(service):
    service.stream_passthrough = False
    images, _, _ = sequential("a storyboard", 2)
    assert images.shape[0] == 2 and service.generation_requests()[0].json["stream"] is True
    record("plain JSON answer to a streaming request", service, "read as usual, delivered")


# --- downloads: retried freely; the ledger keeps what was paid for --------------------------------


def test_download_server_error_is_retried(service):
    service.inject(Fault("status", target="download", status=503, times=2))
    images, _, _ = t2i()
    assert images.shape[0] == 1 and len(service.downloads) == 3
    record("download: 503 twice", service, "retried with backoff, delivered")


def test_download_cut_short_is_retried(service):
    service.inject(Fault("truncate", target="download", nbytes=1000))
    images, _, _ = t2i()
    assert images.shape[0] == 1 and len(service.downloads) == 2
    record("download: body cut short", service, "retried, delivered")


def test_failed_download_names_the_ledger_and_the_entry_recovers_it(service, monkeypatch):
    monkeypatch.setattr(client, "DOWNLOAD_ATTEMPTS", 2)
    service.inject(Fault("status", target="download", status=503, times=2))  # every try of this run
    error = failure(t2i)
    entry_id = ledger.entry_ids()[0]
    assert "billed" in str(error) and entry_id in str(error) and "Load from Ledger" in str(error)
    entry = json.loads((ledger.ledger_dir() / f"{entry_id}.json").read_text())
    assert entry["status"] == "incomplete" and entry["images"][0]["url"] and entry["prompt"] == "a red fox"
    record("download: 503 on every try", service, f"error: {error}")

    images, _, info_text = asyncio.run(seedream.SeedreamLedger().run(entry="latest"))["result"]  # the link still lives
    assert images.shape == (1, 2048, 2048, 3) and json.loads(info_text)["ledger_entry"] == entry_id
    assert len(service.generation_requests()) == 1 and len(service.downloads) == 3
    ROWS.append(("then: Seedream Load from Ledger, 'latest'", "0 / 0", "1", "image delivered, nothing billed"))


@pytest.mark.parametrize(
    ("kind", "expected", "label"),
    [
        ("expire", "AccessDenied", "download: link expired (403 AccessDenied)"),
        ("not_image", "not a readable image", "download: bytes that are not an image"),
        ("bomb", "decompression bomb", "download: PNG declaring 100000x100000"),
    ],
)
def test_download_refusals_are_clear_and_keep_the_ledger(service, kind, expected, label):
    service.inject(Fault(kind, target="download", times=-1))
    error = failure(t2i)
    assert expected in str(error) and ledger.entry_ids()[0] in str(error)
    assert len(service.generation_requests()) == 1
    record(label, service, f"error: {error}")


def test_endless_and_dripping_downloads_are_bounded(service, monkeypatch):
    monkeypatch.setattr(client, "MAX_DOWNLOAD_BYTES", 2_000_000)
    service.inject(Fault("endless", target="download", times=-1))
    error = failure(t2i)
    assert "grew past 2,000,000 bytes" in str(error)
    record("download: endless body", service, f"stopped at the size cap: {error}")

    service.reset()
    monkeypatch.setattr(client, "DOWNLOAD_DEADLINE", 1.0)
    monkeypatch.setattr(client, "DOWNLOAD_ATTEMPTS", 2)
    service.inject(Fault("slow_body", target="download", nbytes=2000, times=-1))
    started = time.monotonic()
    error = failure(t2i)
    assert "within 1 s" in str(error) and time.monotonic() - started < 6
    record("download: body dripping at 2 kB/s (deadline 1 s)", service, f"stopped at the deadline: {error}")


def test_partial_group_keeps_the_successes_unless_asked_not_to(service):
    service.inject(Fault("status", target="download", status=404, body='{"Code":"NoSuchKey"}'))
    images, image_list, info_text = sequential("three panels", 3)
    info = json.loads(info_text)
    assert images.shape[0] == 2 and len(image_list) == 2
    assert sum("download_error" in image for image in info["images"]) == 1
    assert any("could not be fetched" in note and info["ledger_entry"] in note for note in info["notes"])
    record("group of 3, one download refused (404)", service, "2 images out; the failure and ledger entry in `info`")

    service.reset()
    images, _, info_text = sequential("four panels [[moderate:2]]", 4)
    assert images.shape[0] == 3 and json.loads(info_text)["failed_images"] == 1
    record("group of 4, one image refused by moderation", service, "3 images out, the refusal in `info` (not billed)")

    service.reset()
    error = failure(sequential, "four panels [[moderate:2]]", 4, fail_on_partial=True)
    assert "fail_on_partial" in str(error) and "OutputImageSensitiveContentDetected" in str(error)
    assert ledger.entry_ids()[0] in str(error)
    record("same, with fail_on_partial", service, f"error: {error}")


def test_internal_error_stops_the_group_and_keeps_what_was_made(service):
    images, _, info_text = sequential("five panels [[internal:2]]", 5)
    info = json.loads(info_text)
    assert images.shape[0] == 2 and info["images"][2]["error"]["code"] == "InternalServiceError"
    record("group of 5, internal error at image 3", service, "2 images out, the error in `info`")


# --- interrupt --------------------------------------------------------------------------------


class _Interrupted(Exception):
    pass


@pytest.fixture
def comfy_interrupt(monkeypatch):
    """A stand-in for comfy.model_management: its flag is set by the test, as Cancel sets it."""
    state = {"flag": False}
    management = types.ModuleType("comfy.model_management")
    management.processing_interrupted = lambda: state["flag"]

    def throw():
        if state["flag"]:
            state["flag"] = False
            raise _Interrupted("Processing interrupted")

    management.throw_exception_if_processing_interrupted = throw
    management.InterruptProcessingException = _Interrupted
    comfy = types.ModuleType("comfy")
    comfy.model_management = management
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", management)
    return state


def _cancel_after(state, seconds: float) -> float:
    async def scenario(coroutine):
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, state.__setitem__, "flag", True)
        started = time.monotonic()
        with pytest.raises(_Interrupted):
            await coroutine
        stopped = time.monotonic() - started - seconds
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == [], others  # nothing left running behind
        return stopped

    return scenario


@pytest.mark.parametrize("phase", ["waiting for the answer", "downloading"])
def test_cancel_stops_within_a_second(service, comfy_interrupt, phase):
    if phase == "downloading":
        service.inject(Fault("slow_body", target="download", nbytes=5000, times=-1))
    else:
        service.inject(Fault("delay", delay=20))
    node = seedream.SeedreamTextToImage()
    stopped = asyncio.run(_cancel_after(comfy_interrupt, 0.5)(node.run(prompt="a fox", **BASE)))
    assert stopped < 1.0
    record(f"Cancel while {phase}", service, f"stopped {stopped:.2f} s after Cancel, no task left")


def test_cancel_with_two_nodes_waiting_interrupts_both(service, comfy_interrupt):
    """ComfyUI's throw clears the flag: the second waiting node must still raise the interrupt,
    never a bare CancelledError (which would escape ComfyUI's handlers)."""
    service.inject(Fault("delay", delay=20, times=2))

    async def two():
        node = seedream.SeedreamTextToImage()
        runs = [asyncio.ensure_future(node.run(prompt=f"fox {n}", **BASE)) for n in range(2)]
        asyncio.get_running_loop().call_later(0.5, comfy_interrupt.__setitem__, "flag", True)
        return await asyncio.gather(*runs, return_exceptions=True)

    outcomes = asyncio.run(two())
    assert [type(o) for o in outcomes] == [_Interrupted, _Interrupted]
    record("Cancel with two nodes waiting", service, "both stop with ComfyUI's interrupt")


# --- concurrency --------------------------------------------------------------------------------


def test_many_prompts_share_the_concurrency_limit(service):
    service.inject(Fault("delay", delay=0.6, times=-1))

    async def many():
        node = seedream.SeedreamTextToImage()
        runs = [asyncio.ensure_future(node.run(prompt=f"fox {n}", **BASE)) for n in range(10)]
        await asyncio.sleep(0.3)
        in_flight = len(service.generation_requests())
        results = await asyncio.gather(*runs)
        return in_flight, results

    in_flight, results = asyncio.run(many())
    assert in_flight == client.MAX_CONCURRENT_REQUESTS and len(results) == 10
    record("10 prompts at once", service, f"{in_flight} requests in flight at most, all 10 delivered")


def test_429_pauses_every_request(service):
    service.inject(Fault("status", status=429, headers={"Retry-After": "1"}))

    async def two():
        node = seedream.SeedreamTextToImage()
        first = asyncio.ensure_future(node.run(prompt="fox a", **BASE))
        await asyncio.sleep(0.2)  # the 429 has come back and set the pause
        started = time.monotonic()
        await node.run(prompt="fox b", **BASE)
        await first
        return time.monotonic() - started

    waited = asyncio.run(two())
    assert waited >= 0.7 and len(service.generation_requests()) == 3
    record("429 for one of two concurrent runs", service, "both waited out Retry-After, both delivered")


# --- secrets ----------------------------------------------------------------------------------


def test_key_in_the_prompt_is_refused_before_sending(service):
    error = failure(t2i, prompt=f"a sign that reads {TEST_KEY}")
    assert "contains your CometAPI key" in str(error) and service.requests == []
    record("the key pasted into the prompt", service, f"refused: {error}")


def test_key_never_appears_anywhere(service, caplog, monkeypatch):
    monkeypatch.setattr(client, "DOWNLOAD_ATTEMPTS", 1)
    echoed = json.dumps({"error": {"message": f"bad key {TEST_KEY} (request id: r1)", "type": "x", "code": ""}})
    service.inject(Fault("status", status=401, body=echoed, content_type="application/json"))
    texts = []
    with caplog.at_level(logging.DEBUG):
        texts.append(str(failure(t2i)))
        service.inject(Fault("status", target="download", status=403, body=f"denied {TEST_KEY}"))
        _, _, info_text = sequential("three panels [[moderate:0]]", 3)
        texts.append(info_text)
    texts.append(caplog.text)
    texts += [p.read_text() for p in ledger.ledger_dir().glob("*.json")]
    assert texts[0].count("***") and all(TEST_KEY not in text for text in texts)
    assert all("authorization" not in d.headers for d in service.downloads)
    record("the service echoes the key in an error", service, "masked as *** in errors, info, logs and the ledger")


def test_ledger_write_failures_never_lose_the_links(service, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ledger, "record_outcome", broken)
    images, _, info_text = t2i()
    assert images.shape[0] == 1 and any("could not be updated" in n for n in json.loads(info_text)["notes"])

    monkeypatch.setattr(ledger, "record_answer", broken)
    service.inject(Fault("status", target="download", status=404, body="gone"))
    error = failure(t2i)
    assert "ledger could not be written" in str(error) and service.storage_origin in str(error)
    record("ledger folder full, then a download refused", service, "error carries the links themselves")


def test_b64_answers_with_line_breaks_decode_and_bad_ones_are_kept(service):
    images, _, _ = t2i(response_format="b64_json")
    assert images.shape[0] == 1
    assert client.decode_b64("data:image/png;base64,aGVs\nbG8=") == b"hello"
    entry = ledger.record_answer(
        client.parse_answer({"data": [{"b64_json": "%%%", "size": "2x2"}]}), {}, "x", {0: "%%%"}
    )
    assert entry.image_file(entry.data["images"][0]["file"]).read_text() == "%%%"


def test_load_from_ledger_input_is_validated():
    assert "empty" in seedream.SeedreamLedger.VALIDATE_INPUTS(entry="latest")
    assert "no ledger entry" in seedream.SeedreamLedger.VALIDATE_INPUTS(entry="20990101-000000-abcdef")


def test_dtype_and_device_of_references_do_not_matter(service):
    reference = torch.rand(2, 64, 64, 3, dtype=torch.bfloat16)
    node = seedream.SeedreamImageToImage()
    images, _, _ = asyncio.run(node.run(image_1=reference, prompt="edit image 1", **BASE))["result"]
    assert images.shape[0] == 1 and len(service.generation_requests()[0].json["image"]) == 2
