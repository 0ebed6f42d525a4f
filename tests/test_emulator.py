"""Self-tests of the service emulator, with stdlib HTTP clients only (the pack's client is not involved)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:  # tests/conftest.py normally does this; kept so the file also runs alone
    sys.path.insert(0, TESTS_DIR)

from emulator import Fault, SeedreamEmulator, decode_index, has_watermark, keyword_size  # noqa: E402

KEY = "sk-emulator-0123456789abcdef"
V40 = "doubao-seedream-4-0-250828"
V45 = "doubao-seedream-4-5-251128"
V50 = "doubao-seedream-5-0-260128"
PRO = "seedream-5-0-pro-260628"
V30 = "bytedance-seedream-3.0-t2i"
ACCESS_DENIED = {"Code": "AccessDenied", "Message": "Access Denied", "EC": "0003-00000015"}


@pytest.fixture(scope="module")
def server() -> Iterator[SeedreamEmulator]:
    with SeedreamEmulator(KEY) as emulator:
        yield emulator


@pytest.fixture
def emu(server: SeedreamEmulator) -> SeedreamEmulator:
    server.reset()
    return server


def call(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 5
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; the target is sent exactly as written in `url`."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), data, headers or {})
        response = connection.getresponse()
        payload = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload
    finally:
        connection.close()


def generate(emu: SeedreamEmulator, body: Any, key: str | None = KEY) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    status, response_headers, payload = call("POST", f"{emu.base_url}/images/generations", body, headers)
    try:
        return status, response_headers, json.loads(payload)
    except ValueError:
        return status, response_headers, payload


def data_uri(width: int, height: int, mime: str = "png") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "PNG")
    return f"data:image/{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def b64_images(answer: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(item["b64_json"]) for item in answer["data"] if "b64_json" in item]


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_bad_key_gets_cometapi_401(emu: SeedreamEmulator, key: str | None) -> None:
    status, _, answer = generate(emu, {"model": V40, "prompt": "cat"}, key=key)
    assert status == 401
    error = answer["error"]
    assert error["type"] == "comet_api_error" and error["code"] == "" and error["param"] == ""
    assert error["message"].startswith("invalid token (request id: ")
    assert KEY not in json.dumps(answer)


@pytest.mark.parametrize(
    ("fields", "param", "detail"),
    [
        ({"model": V45, "size": "1024x1024"}, "size", "must be at least 3686400 pixels"),
        ({"model": V45, "size": "1K"}, "size", "1K is not supported"),
        ({"model": V40, "size": "1:1"}, "size", "must be a preset"),
        ({"model": V40, "size": "6400x256"}, "size", "aspect ratio"),
        ({"model": PRO, "size": "4096x4096"}, "size", "at most 4624220 pixels"),
        ({"model": V30, "size": "2K"}, "size", "not supported"),
        ({"model": V30, "size": "2049x512"}, "size", "between 512 and 2048"),
        ({"model": V30, "image": "https://example.com/a.png"}, "image", "does not accept"),
        ({"model": V45, "image": ["https://example.com/a.png"] * 15}, "image", "at most 14"),
        ({"model": PRO, "image": ["https://example.com/a.png"] * 11}, "image", "at most 10"),
        ({"model": V40, "image": data_uri(64, 64, "PNG")}, "image", "lowercase"),
        ({"model": V40, "image": data_uri(14, 64)}, "image", "more than 14 px"),
        ({"model": V40, "image": "data:image/png;base64,AAAA"}, "image", "cannot be decoded"),
        ({"model": PRO, "sequential_image_generation": "auto"}, "sequential_image_generation", "not supported"),
        ({"model": PRO, "stream": True}, "stream", "not supported"),
        ({"model": V30, "stream": True}, "stream", "not supported"),
        ({"model": V45, "output_format": "png"}, "output_format", "not supported"),
        ({"model": V40, "guidance_scale": 5}, "guidance_scale", "not supported"),
        ({"model": V40, "seed": -2}, "seed", "between -1 and 2147483647"),
        (
            {
                "model": V40,
                "image": ["https://example.com/a.png"] * 2,
                "sequential_image_generation": "auto",
                "sequential_image_generation_options": {"max_images": 14},
            },
            "sequential_image_generation_options.max_images",
            "exceed 15",
        ),
    ],
)
def test_provider_shaped_400(emu: SeedreamEmulator, fields: dict[str, Any], param: str, detail: str) -> None:
    status, _, answer = generate(emu, {"prompt": "a cat"} | fields)
    assert status == 400, answer
    error = answer["error"]
    assert (error["code"], error["param"], error["type"]) == ("InvalidParameter", param, "BadRequest")
    assert error["message"].startswith(f"The parameter `{param}` specified in the request is not valid: ")
    assert detail in error["message"] and "Request id: " in error["message"]
    assert emu.billed_images == 0


@pytest.mark.parametrize("body", [b"{not json", {"model": V40}, {"prompt": "a cat"}, {"model": V40, "prompt": " "}])
def test_cometapi_shaped_400(emu: SeedreamEmulator, body: Any) -> None:
    status, _, answer = generate(emu, body)
    assert status == 400
    assert answer["error"]["code"] == "invalid_request" and answer["error"]["type"] == "comet_api_error"


def test_unknown_model_is_404_unsupported(emu: SeedreamEmulator) -> None:
    status, _, answer = generate(emu, {"model": "seedream-9", "prompt": "a cat"})
    assert status == 404 and answer["error"]["code"] == "UnsupportedModel"


def test_wrong_paths_look_like_a_wrong_base_url(emu: SeedreamEmulator) -> None:
    status, headers, _ = call("POST", emu.base_url.removesuffix("/v1") + "/images/generations?x=1", b"{}")
    assert status == 301 and headers["location"] == f"{emu.base_url}/images/generations?x=1"
    status, headers, page = call("POST", emu.base_url + "/chat/images/generations", b"{}")
    assert status == 404 and headers["content-type"].startswith("text/html") and b"Not Found" in page
    assert call("GET", emu.base_url + "/images/generations")[0] == 405
    assert [r.status for r in emu.requests] == [301, 404, 405] and emu.generation_requests() == []


def test_url_answer_and_its_download(emu: SeedreamEmulator) -> None:
    status, _, answer = generate(emu, {"model": V40, "prompt": "a wide cat", "size": "1K"})
    assert status == 200 and answer["model"] == V40 and isinstance(answer["created"], int)
    [item] = answer["data"]
    assert item["size"] == "1312x736"
    assert answer["usage"] == {"generated_images": 1, "output_tokens": 1312 * 736 // 256, "total_tokens": 3772}
    link = item["url"]
    assert link.startswith(f"{emu.storage_origin}/ark-content-generation-cn-beijing/")
    assert ".jpeg?X-Tos-Algorithm=TOS4-HMAC-SHA256&" in link
    assert "X-Tos-Credential=AKLTemulator%2F" in link and "&X-Tos-Expires=86400&" in link
    status, headers, data = call("GET", link)
    assert status == 200 and headers["content-type"] == "image/jpeg" and int(headers["content-length"]) == len(data)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("JPEG", (1312, 736))
    assert decode_index(data) == 0 and has_watermark(data)  # watermark was not sent: the provider adds it
    assert emu.downloads[0].raw_target == link.removeprefix(emu.storage_origin)
    assert "authorization" not in emu.downloads[0].headers and emu.generation_requests()[0].json["size"] == "1K"


@pytest.mark.parametrize(
    "alter",
    [
        lambda link: link.replace("%2F", "/"),
        lambda link: link.replace("%2F", "%252F"),
        lambda link: link.split("&")[0],
        lambda link: link.replace("X-Tos-Algorithm=TOS4-HMAC-SHA256&X-Tos-Content-Sha256=UNSIGNED-PAYLOAD",
                                  "X-Tos-Content-Sha256=UNSIGNED-PAYLOAD&X-Tos-Algorithm=TOS4-HMAC-SHA256"),
    ],
)  # fmt: skip
def test_altered_link_is_access_denied(emu: SeedreamEmulator, alter: Any) -> None:
    _, _, answer = generate(emu, {"model": V40, "prompt": "a cat", "size": "1K"})
    status, headers, body = call("GET", alter(answer["data"][0]["url"]))
    assert status == 403 and headers["content-type"] == "application/json" and json.loads(body) == ACCESS_DENIED


def test_download_with_authorization_is_rejected_and_recorded(emu: SeedreamEmulator) -> None:
    _, _, answer = generate(emu, {"model": V40, "prompt": "a cat", "size": "1K"})
    status, _, body = call("GET", answer["data"][0]["url"], headers={"Authorization": f"Bearer {KEY}"})
    assert status == 400 and json.loads(body)["Code"] == "InvalidArgument"
    assert emu.downloads[0].headers["authorization"] == f"Bearer {KEY}" and emu.downloads[0].status == 400


def test_link_expires_after_a_day(emu: SeedreamEmulator) -> None:
    _, _, answer = generate(emu, {"model": V40, "prompt": "a cat", "size": "1K"})
    emu.now = lambda: datetime.now(timezone.utc) + timedelta(hours=24, minutes=1)
    status, _, body = call("GET", answer["data"][0]["url"])
    assert status == 403 and json.loads(body)["Message"] == "Request has expired"


def test_b64_json_png_without_watermark(emu: SeedreamEmulator) -> None:
    body = {"model": V50, "prompt": "a cat", "response_format": "b64_json", "output_format": "png", "watermark": False}
    status, _, answer = generate(emu, body)
    assert status == 200 and answer["data"][0]["size"] == "2048x2048" and "url" not in answer["data"][0]
    [data] = b64_images(answer)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("PNG", (2048, 2048))
    assert not has_watermark(data) and emu.downloads == []


@pytest.mark.parametrize(
    ("mode", "max_images", "sequential_count", "expected"),
    [("auto", 3, None, 3), ("auto", 5, 2, 2), ("disabled", 4, None, 1), (None, 4, None, 1), ("auto", None, None, 15)],
)
def test_number_of_images(
    emu: SeedreamEmulator, mode: str | None, max_images: int | None, sequential_count: int | None, expected: int
) -> None:
    emu.sequential_count = sequential_count
    body: dict[str, Any] = {"model": V40, "prompt": "cats", "size": "1K", "response_format": "b64_json"}
    if mode:
        body["sequential_image_generation"] = mode
    if max_images:
        body["sequential_image_generation_options"] = {"max_images": max_images}
    status, _, answer = generate(emu, body)
    assert status == 200
    assert [decode_index(data) for data in b64_images(answer)] == list(range(expected))
    assert answer["usage"]["generated_images"] == expected == emu.billed_images


def test_moderated_item_is_skipped_and_not_billed(emu: SeedreamEmulator) -> None:
    body = {
        "model": V40,
        "prompt": "[[moderate:1]] cats [[size:2=1312x736]]",
        "size": "1K",
        "sequential_image_generation": "auto",
        "sequential_image_generation_options": {"max_images": 3},
    }
    status, _, answer = generate(emu, body)
    assert status == 200
    assert [sorted(item) for item in answer["data"]] == [["size", "url"], ["error"], ["size", "url"]]
    assert answer["data"][1]["error"]["code"] == "OutputImageSensitiveContentDetected"
    assert [answer["data"][0]["size"], answer["data"][2]["size"]] == ["1024x1024", "1312x736"]
    tokens = (1024 * 1024 + 1312 * 736) // 256
    assert answer["usage"] == {"generated_images": 2, "output_tokens": tokens, "total_tokens": tokens}


def test_internal_error_stops_the_group(emu: SeedreamEmulator) -> None:
    body = {"model": V40, "prompt": "[[internal:1]]", "size": "1K", "sequential_image_generation": "auto"}
    _, _, answer = generate(emu, body)
    assert len(answer["data"]) == 2 and answer["data"][1]["error"]["code"] == "InternalServiceError"
    assert answer["usage"]["generated_images"] == 1


@pytest.mark.parametrize(
    ("prompt", "code"),
    [("[[moderate:0]] cat", "OutputImageSensitiveContentDetected"),
     ("[[input_moderation]]", "InputTextSensitiveContentDetected")],
)  # fmt: skip
def test_nothing_produced_is_a_top_level_error(emu: SeedreamEmulator, prompt: str, code: str) -> None:
    status, _, answer = generate(emu, {"model": V40, "prompt": prompt, "size": "1K"})
    assert status == 400 and answer["error"]["code"] == code and "data" not in answer


def test_keyword_size_follows_the_prompt() -> None:
    assert keyword_size("2K", "a WIDE view") == (2848, 1600)
    assert keyword_size("4K", "poster 16:9") == (5504, 3040)
    assert keyword_size("3K", "9:16 portrait") == (2304, 4096)
    assert keyword_size("1K", "a tall tower") == (736, 1312)
    assert keyword_size("2K", "a cat") == (2048, 2048)


def test_stream_events_in_order_headers_after_first_image(emu: SeedreamEmulator) -> None:
    emu.time_scale = 0.005  # first image after 0.1 s, the second 0.115 s later, the third 0.13 s later
    body = {
        "model": V40,
        "prompt": "[[moderate:1]] cats",
        "size": "1K",
        "stream": True,
        "sequential_image_generation": "auto",
        "sequential_image_generation_options": {"max_images": 3},
    }
    parts = urlsplit(emu.base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    started = time.monotonic()
    connection.request("POST", "/v1/images/generations", json.dumps(body), {"Authorization": f"Bearer {KEY}"})
    response = connection.getresponse()
    headers_after = time.monotonic() - started
    text = response.read().decode()
    connection.close()
    assert 0.09 < headers_after < time.monotonic() - started - 0.2
    assert response.status == 200 and response.getheader("content-type") == "text/event-stream"
    blocks = [block.splitlines() for block in text.strip().split("\n\n")]
    assert [block[0] for block in blocks[:-1]] == [
        "event: image_generation.partial_succeeded",
        "event: image_generation.partial_failed",
        "event: image_generation.partial_succeeded",
        "event: image_generation.completed",
    ]
    assert blocks[-1] == ["data: [DONE]"]
    events = [json.loads(block[1].removeprefix("data: ")) for block in blocks[:-1]]
    assert [event.get("image_index") for event in events] == [0, 1, 2, None]
    assert events[0]["size"] == "1024x1024" and "url" in events[0] and "error" in events[1]
    assert events[3]["usage"]["generated_images"] == 2 and events[0]["type"] == "image_generation.partial_succeeded"


def test_status_fault_429_with_retry_after_then_normal(emu: SeedreamEmulator) -> None:
    emu.inject(Fault("status", status=429, headers={"Retry-After": "1"}))
    status, headers, answer = generate(emu, {"model": V40, "prompt": "cat", "size": "1K"})
    assert status == 429 and headers["retry-after"] == "1" and answer["error"]["type"] == "comet_api_error"
    assert generate(emu, {"model": V40, "prompt": "cat", "size": "1K"})[0] == 200
    assert [r.status for r in emu.generation_requests()] == [429, 200]


@pytest.mark.parametrize(
    ("fault", "content_type", "code"),
    [(Fault("status", status=500, code="invalid_request"), "application/json", "invalid_request"),
     (Fault("status", status=524), "text/html", None)],
)  # fmt: skip
def test_status_fault_bodies(emu: SeedreamEmulator, fault: Fault, content_type: str, code: str | None) -> None:
    emu.inject(fault)
    status, headers, answer = generate(emu, {"model": V40, "prompt": "cat"})
    assert status == fault.status and headers["content-type"].startswith(content_type)
    assert code is None or answer["error"]["code"] == code


@pytest.mark.parametrize(("kind", "billed"), [("drop_before", 0), ("drop_after", 1), ("truncate", 1), ("refuse", 0)])
def test_connection_faults_are_recorded(emu: SeedreamEmulator, kind: str, billed: int) -> None:
    emu.inject(Fault(kind, nbytes=10))
    with pytest.raises((http.client.HTTPException, OSError)):
        generate(emu, {"model": V40, "prompt": "cat", "size": "1K"})
    [record] = emu.generation_requests()
    assert record.status == (200 if kind == "truncate" else 0)
    assert record.json == ({"model": V40, "prompt": "cat", "size": "1K"} if kind != "refuse" else None)
    assert emu.billed_images == billed


def test_delay_does_not_block_other_requests(emu: SeedreamEmulator) -> None:
    emu.inject(Fault("delay", delay=0.4))
    slow = threading.Thread(target=generate, args=(emu, {"model": V40, "prompt": "slow", "size": "1K"}))
    slow.start()
    time.sleep(0.05)
    started = time.monotonic()
    assert generate(emu, {"model": V40, "prompt": "fast", "size": "1K"})[0] == 200
    assert time.monotonic() - started < 0.3
    slow.join()
    assert [r.json["prompt"] for r in emu.generation_requests()] == ["slow", "fast"]


def test_hang_does_not_block_stop() -> None:
    emulator = SeedreamEmulator(KEY).start()
    emulator.inject(Fault("hang"))
    errors: list[BaseException] = []

    def client() -> None:
        try:
            generate(emulator, {"model": V40, "prompt": "cat"})
        except (http.client.HTTPException, OSError) as error:
            errors.append(error)

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    emulator.stop()
    thread.join(timeout=2)
    assert time.monotonic() - started < 1 and not thread.is_alive() and errors
    assert emulator.generation_requests()[0].status == 0


@pytest.mark.parametrize(
    ("kind", "error"), [("bomb", Image.DecompressionBombError), ("not_image", Image.UnidentifiedImageError)]
)
def test_download_content_faults(emu: SeedreamEmulator, kind: str, error: type[Exception]) -> None:
    _, _, answer = generate(emu, {"model": V40, "prompt": "cat", "size": "1K"})
    emu.inject(Fault(kind, target="download"))
    status, _, data = call("GET", answer["data"][0]["url"])
    assert status == 200 and len(data) < 100_000
    with pytest.raises(error):
        Image.open(io.BytesIO(data))
    assert call("GET", answer["data"][0]["url"])[0] == 200  # the fault was used up


def test_download_slow_expired_and_endless(emu: SeedreamEmulator) -> None:
    _, _, answer = generate(emu, {"model": V40, "prompt": "cat", "size": "1K"})
    link = answer["data"][0]["url"]
    size = len(call("GET", link)[2])
    emu.inject(Fault("slow_body", target="download", nbytes=size * 5))
    started = time.monotonic()
    assert len(call("GET", link)[2]) == size and time.monotonic() - started > 0.15
    emu.inject(Fault("expire", target="download"))
    assert json.loads(call("GET", link)[2])["Message"] == "Request has expired"
    emu.inject(Fault("endless", target="download"))
    parts = urlsplit(link)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    connection.request("GET", f"{parts.path}?{parts.query}")
    response = connection.getresponse()
    assert response.getheader("transfer-encoding") == "chunked" and len(response.read(1_000_000)) == 1_000_000
    connection.close()
    assert call("GET", link)[0] == 200
    assert [r.status for r in emu.downloads] == [200, 200, 403, 200, 200]


def test_fault_validation_and_forever(emu: SeedreamEmulator) -> None:
    with pytest.raises(ValueError):
        Fault("bomb")
    with pytest.raises(ValueError):
        Fault("explode")
    emu.inject(Fault("status", status=503, times=-1))
    assert [generate(emu, {"model": V40, "prompt": "cat"})[0] for _ in range(3)] == [503, 503, 503]
    emu.reset()
    assert generate(emu, {"model": V40, "prompt": "cat", "size": "1K"})[0] == 200
