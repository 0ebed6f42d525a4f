"""An emulator of CometAPI's Seedream endpoint and of the object storage that serves its result links.

Its rules come only from /work/shared/API_NOTES.md, never from the pack's code, so that it stays an
independent oracle of the service. Two real HTTP/1.1 servers run on 127.0.0.1: the API (`base_url`)
and the storage host (`storage_origin`), on different ports so a test can prove that the API key
never reaches the storage host.

Prompt markers let a test trigger per-image behaviour without touching emulator state:
`[[moderate:K]]` (item K fails moderation, generation goes on), `[[internal:K]]` (item K fails with an
internal error, generation stops), `[[input_moderation]]` (the whole request is refused) and
`[[size:K=WxH]]` (item K comes back with another size, as a group can on the real service).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import io
import itertools
import json
import re
import secrets
import socket
import struct
import sys
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image

GENERATIONS_PATH = "/v1/images/generations"
BUCKET = "ark-content-generation-cn-beijing"
LINK_LIFETIME_S = 86400
MAX_TOTAL_IMAGES = 15  # references + outputs, and the provider's max_images default in auto mode
MAX_REF_BYTES = 10 * 1024 * 1024
MAX_REF_PIXELS = 36_000_000
MIN_REF_SIDE = 15  # "more than 14 px a side"
MAX_ASPECT = 16
SEED_RANGE = (-1, 2_147_483_647)
DEFAULT_SIZE = (2048, 2048)
REF_FORMATS = frozenset({"jpeg", "jpg", "png", "webp", "bmp", "tiff", "gif"})
HTML_ERROR_STATUSES = frozenset({502, 503, 504, 524})


@dataclass(frozen=True)
class ModelSpec:
    """What one model accepts; tests may add their own to `SeedreamEmulator.models` (new ids appear often)."""

    generation: str
    max_refs: int
    keywords: tuple[str, ...]
    min_pixels: int
    max_pixels: int
    sequential: bool
    stream: bool
    output_formats: tuple[str, ...] = ()  # empty: `output_format` is rejected and the answer is jpeg
    guidance_scale: bool = False
    fast_prompt_mode: bool = False
    web_search: bool = False
    side_range: tuple[int, int] | None = None  # 3.0 t2i limits each side, not only the area


MODELS: dict[str, ModelSpec] = {
    "doubao-seedream-5-0-260128": ModelSpec(
        "5.0 lite", 14, ("2K", "3K", "4K"), 3_686_400, 16_777_216, True, True, ("jpeg", "png"), web_search=True
    ),
    "seedream-5-0-pro-260628": ModelSpec(
        "5.0 pro", 10, ("1K", "2K"), 921_600, 4_624_220, False, False, ("jpeg", "png"), fast_prompt_mode=True
    ),
    "doubao-seedream-4-5-251128": ModelSpec("4.5", 14, ("2K", "4K"), 3_686_400, 16_777_216, True, True),
    "doubao-seedream-4-0-250828": ModelSpec(
        "4.0", 14, ("1K", "2K", "4K"), 921_600, 16_777_216, True, True, fast_prompt_mode=True
    ),
    "bytedance-seedream-3.0-t2i": ModelSpec(
        "3.0 t2i", 0, (), 512 * 512, 2048 * 2048, False, False, guidance_scale=True, side_range=(512, 2048)
    ),
}

# With a keyword the model picks the aspect from the prompt: square, 16:9 or 9:16 of that tier.
TIER_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "1K": {"square": (1024, 1024), "wide": (1312, 736), "tall": (736, 1312)},
    "2K": {"square": (2048, 2048), "wide": (2848, 1600), "tall": (1600, 2848)},
    "3K": {"square": (3072, 3072), "wide": (4096, 2304), "tall": (2304, 4096)},
    "4K": {"square": (4096, 4096), "wide": (5504, 3040), "tall": (3040, 5504)},
}

_DATA_URI = re.compile(r"data:image/([A-Za-z]+);base64,(.*)", re.DOTALL)
_WXH = re.compile(r"([1-9][0-9]{0,5})x([1-9][0-9]{0,5})")
_ITEM_MARKER = re.compile(r"\[\[(moderate|internal):(\d+)\]\]")
_SIZE_MARKER = re.compile(r"\[\[size:(\d+)=([1-9][0-9]*)x([1-9][0-9]*)\]\]")
_INPUT_MODERATION_MARKER = "[[input_moderation]]"
_EXTRA_REASONS = {524: "A Timeout Occurred"}

FAULT_KINDS = frozenset(
    {
        "status", "delay", "drop_before", "drop_after", "refuse", "truncate", "bad_json", "html", "redirect",
        "hang", "slow_body", "not_image", "bomb", "endless", "expire",
    }
)  # fmt: skip
DOWNLOAD_ONLY_KINDS = frozenset({"not_image", "bomb", "endless", "expire"})


@dataclass
class RecordedRequest:
    """One request as a server saw it; `status` is 0 while unanswered or when the connection was dropped."""

    method: str
    path: str
    raw_target: str
    headers: dict[str, str]
    body: bytes = b""
    json: Any | None = None
    status: int = 0


@dataclass
class Fault:
    """A misbehaviour applied to the next `times` requests of `target` ("generate" or "download"; -1 = forever).

    kind: status | delay | drop_before | drop_after | refuse | truncate | bad_json | html | redirect | hang |
    slow_body, and for downloads also not_image | bomb | endless | expire. `delay` seconds are slept first
    with every kind; `headers` are added to whatever is answered.
    """

    kind: str
    target: str = "generate"
    times: int = 1
    delay: float = 0.0
    status: int | None = None  # status: default 500; redirect: default 302
    body: bytes | str | None = None  # status/bad_json/html/not_image: replaces the default body
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    code: str = ""  # CometAPI error code in the default body of a generate `status` fault
    nbytes: int = 1024  # truncate: body bytes sent (always short of the whole); slow_body: bytes per second
    events: int = 0  # truncate of a stream: when set, the connection drops after this many events instead
    location: str | None = None  # redirect target; default: the same request target

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.target not in ("generate", "download"):
            raise ValueError(f"unknown fault target {self.target!r}")
        if self.kind in DOWNLOAD_ONLY_KINDS and self.target != "download":
            raise ValueError(f"fault kind {self.kind!r} only applies to downloads")
        if self.times == 0 or self.times < -1:
            raise ValueError("times must be positive or -1")
        if self.kind in ("truncate", "slow_body") and self.nbytes <= 0:
            raise ValueError("nbytes must be positive")


@dataclass
class _QueuedFault:
    fault: Fault
    remaining: int


@dataclass
class _Response:
    status: int
    body: bytes | Iterator[bytes]  # an iterator is sent chunked, headers once its first chunk exists
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Job:
    model: str
    prompt: str
    seed: int
    width: int
    height: int
    count: int
    fmt: str
    watermark: bool
    response_format: str
    stream: bool
    moderated: frozenset[int]
    internal: frozenset[int]
    sizes: dict[int, tuple[int, int]]


@dataclass
class _Item:
    index: int
    payload: dict[str, Any]
    tokens: int  # 0 for a failed item

    @property
    def ok(self) -> bool:
        return "error" not in self.payload


class _Stopped(Exception):
    """The emulator is stopping: abandon the connection."""


class _Invalid(Exception):
    """A parameter the provider refuses with 400 InvalidParameter."""

    def __init__(self, param: str, detail: str) -> None:
        super().__init__(param, detail)
        self.param = param
        self.detail = detail


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _as_utc(moment: datetime) -> datetime:
    # Tests may hand in naive datetimes; the service's clock is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_REASONS.get(status, "Error")


def _json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(payload).encode(), "application/json", headers or {})


def _comet_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + secrets.token_hex(8)


def _comet_error(status: int, message: str, code: str) -> _Response:
    error = {"message": f"{message} (request id: {_comet_id()})", "type": "comet_api_error", "param": "", "code": code}
    return _json_response(status, {"error": error})


def _provider_error(status: int, code: str, message: str, param: str, type_: str, request_id: str) -> _Response:
    error = {"code": code, "message": f"{message} Request id: {request_id}", "param": param, "type": type_}
    return _json_response(status, {"error": error})


def _provider_id() -> str:
    return f"021{int(datetime.now(timezone.utc).timestamp())}{secrets.token_hex(10)}"


def _tos_error(status: int, code: str, message: str, ec: str) -> _Response:
    return _json_response(status, {"Code": code, "Message": message, "EC": ec})


def _access_denied(message: str = "Access Denied") -> _Response:
    return _tos_error(403, "AccessDenied", message, "0003-00000015")


def _html_page(status: int) -> bytes:
    title = f"{status} {_reason(status)}"
    return (
        f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center>"
        "<hr><center>nginx</center></body></html>"
    ).encode()


def _html_response(status: int, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, _html_page(status), "text/html; charset=utf-8", headers or {})


def _sse(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n".encode()


def keyword_size(keyword: str, prompt: str) -> tuple[int, int]:
    """The size the emulated model picks for a keyword: 16:9 for "16:9"/"wide", 9:16 for "9:16"/"tall"."""
    text = prompt.lower()
    if "16:9" in text or "wide" in text:
        return TIER_SIZES[keyword]["wide"]
    if "9:16" in text or "tall" in text:
        return TIER_SIZES[keyword]["tall"]
    return TIER_SIZES[keyword]["square"]


def image_color(prompt: str, seed: int, index: int) -> tuple[int, int, int]:
    """Background colour of output `index`; channels stay in 40..215, apart from the black marks and white watermark."""
    digest = hashlib.sha256(f"{seed}\x00{index}\x00{prompt}".encode()).digest()
    return (40 + digest[0] % 176, 40 + digest[1] % 176, 40 + digest[2] % 176)


def _mark_side(width: int, height: int) -> int:
    # A multiple of 8 keeps each mark on whole JPEG blocks, so it survives compression crisply.
    return max(8, min(width, height) // 40 // 8 * 8)


def _watermark_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    margin = _mark_side(width, height)
    box_w, box_h = max(16, side // 6), max(8, side // 24)
    return (width - margin - box_w, height - margin - box_h, width - margin, height - margin)


@functools.lru_cache(maxsize=32)
def render_image(
    prompt: str,
    seed: int,
    index: int,
    width: int,
    height: int,
    *,
    watermark: bool,
    fmt: str = "jpeg",
    textured: bool = False,
) -> bytes:
    """A deterministic output image: a flat colour from (prompt, seed, index), index+1 black squares in the
    top-left corner and, if `watermark`, a white box bottom-right. `textured` adds photo-like gradients and
    grain (for benchmarks: flat images decode unrealistically fast). Cached: the same request renders once."""
    image = Image.new("RGB", (width, height), image_color(prompt, seed, index))
    if textured:
        rng = np.random.default_rng((seed * 1009 + index) & 0xFFFFFFFF)
        y, x = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height)
        shade = (np.sin(7 * x + index) * np.cos(5 * y) * 40)[..., None]
        grain = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
        pixels = np.asarray(image, np.float32) + shade + grain
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    side = _mark_side(width, height)
    for k in range(index + 1):
        left = side + 2 * side * k
        image.paste((0, 0, 0), (left, side, left + side, 2 * side))
    if watermark:
        left, top, right, bottom = _watermark_box(width, height)
        image.paste((255, 255, 255), (left, top, right, bottom))
        line = top + (bottom - top) // 2
        image.paste((0, 0, 0), (left + 2, line, right - 2, line + max(1, (bottom - top) // 6)))
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=1)
    else:
        image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def decode_index(data: bytes) -> int:
    """Which output index an emulator image shows (count of its black squares, minus one)."""
    pixels = _pixels(data)
    height, width = pixels.shape[:2]
    side = _mark_side(width, height)
    count = 0
    while count < MAX_TOTAL_IMAGES:
        left = side + 2 * side * count
        patch = pixels[side + side // 4 : 2 * side - side // 4, left + side // 4 : left + side - side // 4]
        if patch.size == 0 or patch.mean() > 20:
            break
        count += 1
    return count - 1


def has_watermark(data: bytes) -> bool:
    """Whether an emulator image carries the bottom-right mark drawn when `watermark` was true or missing."""
    pixels = _pixels(data)
    height, width = pixels.shape[:2]
    left, top, right, bottom = _watermark_box(width, height)
    box_w, box_h = right - left, bottom - top
    strip = pixels[top + box_h // 8 : top + box_h // 3, left + box_w // 8 : right - box_w // 8]
    return bool(strip.size) and bool(strip.mean() > 220)


def _png_bomb(side: int = 100_000) -> bytes:
    """A small, well-formed PNG whose header declares `side` x `side` pixels."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * side) * 4, 9)  # a few black rows: decoders start, then run dry
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _reference_problem(ref: Any) -> str | None:
    """Why one `image` entry would be refused, or None when it is acceptable."""
    if not isinstance(ref, str):
        return "each image must be a URL or a data URI string"
    if ref.startswith(("http://", "https://")):
        return None  # the real service fetches it; the emulator only accepts it
    match = _DATA_URI.fullmatch(ref)
    if match is None:
        return "each image must be an http(s) URL or data:image/<format>;base64,<data>"
    fmt = match.group(1)
    if fmt != fmt.lower():
        return f"the image format `image/{fmt}` must be lowercase"
    if fmt not in REF_FORMATS:
        return f"the image format `image/{fmt}` is not supported"
    try:
        raw = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return "the image data is not valid base64"
    if len(raw) > MAX_REF_BYTES:
        return "each image must be at most 10 MB"
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            if width * height > MAX_REF_PIXELS:
                return f"each image must be at most {MAX_REF_PIXELS} pixels"
            image.load()
    except Exception:  # Pillow raises many types (OSError, SyntaxError, DecompressionBombError...) for bad data
        return "the image data cannot be decoded"
    if min(width, height) < MIN_REF_SIDE:
        return "each image side must be more than 14 px"
    if max(width / height, height / width) > MAX_ASPECT:
        return "the image aspect ratio must be between 1/16 and 16"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, emulator: SeedreamEmulator, role: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.emulator = emulator
        self.role = role  # "api" or "storage"
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        # Wakes handlers blocked reading an idle keep-alive connection or writing to a stalled client.
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanishing mid-answer are part of the tests, not emulator bugs.
        if not isinstance(sys.exc_info()[1], (OSError, _Stopped)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so pooled clients such as httpx reuse connections
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (OSError, _Stopped):
            self.close_connection = True

    def log_message(self, *args: Any) -> None:
        """Quiet: tests read `SeedreamEmulator.requests` instead of a log."""

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        emulator = self.server.emulator
        path = self.path.split("?", 1)[0]
        record = RecordedRequest(
            method=self.command,
            path=path,
            raw_target=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
        )
        target = emulator._fault_target(self.server.role, self.command, path)
        fault = emulator._take_fault(target) if target else None
        kind = fault.kind if fault else ""
        if kind == "refuse":
            emulator._record(self.server.role, record)
            self._abort()
            return
        length = self.headers.get("Content-Length", "")
        record.body = self.rfile.read(int(length)) if length.isdigit() else b""
        with contextlib.suppress(ValueError):
            record.json = json.loads(record.body)
        emulator._record(self.server.role, record)
        if fault and fault.delay and emulator._stop.wait(fault.delay):
            raise _Stopped
        if kind == "drop_before":
            self._abort()
            return
        if kind == "hang":
            emulator._stop.wait()
            raise _Stopped
        response = emulator._fault_response(fault, record) if fault else None
        if response is None:
            response = emulator._answer(self.server.role, record)
        if fault:
            response.headers.update(fault.headers)
        self._send(response, record, fault)

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, response: _Response, record: RecordedRequest, fault: Fault | None) -> None:
        kind = fault.kind if fault else ""
        body = response.body
        if kind == "drop_after":
            if not isinstance(body, bytes):
                for _ in body:  # a stream does its (billed) work even though nobody hears it
                    pass
            self._abort()
            return
        rest: Iterator[bytes]
        if isinstance(body, bytes):
            chunked, first, rest = False, body, iter(())
        else:  # blocks until the first chunk exists: a stream's headers wait for its first image
            chunked, first, rest = True, next(body, b""), body
        record.status = response.status
        self.send_response(response.status, _reason(response.status))
        self.send_header("Content-Type", response.content_type)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(first)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        rate = fault.nbytes if fault and kind == "slow_body" else 0
        budget = None
        if fault and kind == "truncate" and chunked and fault.events:
            for chunk in itertools.islice(itertools.chain([first], rest), fault.events):
                self._write(chunk, chunked, rate)
            self._abort()
            return
        if fault and kind == "truncate":
            budget = fault.nbytes if chunked else min(fault.nbytes, max(len(first) - 1, 0))
        for chunk in itertools.chain([first], rest):
            if budget is not None and len(chunk) >= budget:
                self._write(chunk[:budget], chunked, rate)
                self._abort()
                return
            self._write(chunk, chunked, rate)
            if budget is not None:
                budget -= len(chunk)
        if budget is not None:  # a truncated stream never gets its closing chunk
            self._abort()
        elif chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _write(self, data: bytes, chunked: bool, rate: int) -> None:
        if not data:
            return  # an empty chunk would end a chunked body
        if chunked:
            data = b"%x\r\n" % len(data) + data + b"\r\n"
        if not rate:
            self.wfile.write(data)
            return
        step = max(1, rate // 20)
        for start in range(0, len(data), step):
            self.wfile.write(data[start : start + step])
            if self.server.emulator._stop.wait(step / rate):
                raise _Stopped


def _usage(items: list[_Item]) -> dict[str, int]:
    tokens = sum(item.tokens for item in items)
    return {"generated_images": sum(item.ok for item in items), "output_tokens": tokens, "total_tokens": tokens}


def _size(value: Any, spec: ModelSpec, prompt: str) -> tuple[int, int]:
    if value is None:
        return DEFAULT_SIZE
    if not isinstance(value, str):
        raise _Invalid("size", "must be a string")
    if value in spec.keywords:
        return keyword_size(value, prompt)
    match = _WXH.fullmatch(value)
    if match is None:
        if value in TIER_SIZES or value == "adaptive":
            raise _Invalid("size", f"{value} is not supported by this model")
        raise _Invalid("size", "must be a preset such as 2K or WIDTHxHEIGHT")
    width, height = int(match.group(1)), int(match.group(2))
    if spec.side_range:
        low, high = spec.side_range
        if not (low <= width <= high and low <= height <= high):
            raise _Invalid("size", f"width and height must each be between {low} and {high}")
    if width * height < spec.min_pixels:
        raise _Invalid("size", f"must be at least {spec.min_pixels} pixels")
    if width * height > spec.max_pixels:
        raise _Invalid("size", f"must be at most {spec.max_pixels} pixels")
    if max(width / height, height / width) > MAX_ASPECT:
        raise _Invalid("size", "the aspect ratio must be between 1/16 and 16")
    return width, height


def _optional(body: dict[str, Any], key: str, default: Any) -> Any:
    # JSON null counts as absent, as for most JSON APIs.
    value = body.get(key)
    return default if value is None else value


class SeedreamEmulator:
    """CometAPI's Seedream endpoint (`base_url`) and the storage host of its result links (`storage_origin`).

    Latency: every image, succeeded or failed, takes `time_scale * (20 + 3 * index)` seconds (index
    0-based); a plain answer comes after all of them, a stream sends each event as its image is done.
    """

    def __init__(self, api_key: str = "sk-emulator-0123456789abcdef", *, time_scale: float = 0.0) -> None:
        self.api_key = api_key
        self._default_time_scale = time_scale
        self.base_url = ""
        self.storage_origin = ""
        self.requests: list[RecordedRequest] = []
        self.downloads: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._secret = secrets.token_bytes(32)
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._faults: list[_QueuedFault] = []
        self._objects: dict[str, tuple[bytes, str]] = {}
        self.time_scale = time_scale
        self.textured = False  # photo-like result images (benchmarks)
        self.stream_passthrough = True  # False: a gateway that drops `stream` and answers plain JSON
        self.sequential_count: int | None = None
        self.now: Callable[[], datetime] = _utc_now
        self.models: dict[str, ModelSpec] = dict(MODELS)
        self.billed_images = 0  # images the service produced, whether or not any client received them

    def __enter__(self) -> SeedreamEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> SeedreamEmulator:
        if self._servers:
            return self
        self._stop.clear()
        self._servers = [_Server(self, "api"), _Server(self, "storage")]
        self.base_url = f"http://127.0.0.1:{self._servers[0].server_address[1]}/v1"
        self.storage_origin = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"emulator-{server.role}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes every delayed, hanging, dripping or generating handler
        for server in self._servers:
            server.shutdown()
            server.close_connections()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=2)
        self._servers, self._threads = [], []

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.downloads.clear()
            self._faults.clear()
            self._objects.clear()
            self.billed_images = 0
        self.time_scale = self._default_time_scale
        self.textured = False
        self.stream_passthrough = True
        self.sequential_count = None
        self.now = _utc_now
        self.models = dict(MODELS)

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(_QueuedFault(fault, fault.times))

    def generation_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path == GENERATIONS_PATH]

    def latency(self, index: int) -> float:
        return self.time_scale * (20 + 3 * index)

    # --- plumbing used by the request handler ---

    def _record(self, role: str, record: RecordedRequest) -> None:
        with self._lock:
            (self.downloads if role == "storage" else self.requests).append(record)

    @staticmethod
    def _fault_target(role: str, method: str, path: str) -> str | None:
        if role == "storage":
            return "download" if method == "GET" else None
        return "generate" if method == "POST" and path == GENERATIONS_PATH else None

    def _take_fault(self, target: str) -> Fault | None:
        with self._lock:
            for queued in self._faults:
                if queued.fault.target != target:
                    continue
                if queued.remaining > 0:
                    queued.remaining -= 1
                    if queued.remaining == 0:
                        self._faults.remove(queued)
                return queued.fault
        return None

    def _fault_response(self, fault: Fault, record: RecordedRequest) -> _Response | None:
        """The answer a fault substitutes, or None when the normal answer is sent (perhaps altered)."""
        body = fault.body.encode() if isinstance(fault.body, str) else fault.body
        kind = fault.kind
        if kind == "status":
            status = fault.status or 500
            if body is not None:
                return _Response(status, body, fault.content_type or "application/json")
            if status in HTML_ERROR_STATUSES:
                response = _html_response(status)
            elif fault.target == "download":
                response = _tos_error(status, _reason(status).replace(" ", ""), _reason(status), "0000-00000000")
            else:
                response = _comet_error(status, _reason(status).lower(), fault.code)
            response.content_type = fault.content_type or response.content_type
            return response
        substitutes = {
            "bad_json": (b'{"model": "seedream", "data": [{"url": "http', "application/json"),
            "html": (b"<html><body><h1>Welcome</h1><p>Sign in to continue.</p></body></html>", "text/html"),
            "not_image": (b"This is not an image.\n" * 16, "image/jpeg"),
        }
        if kind in substitutes:
            default_body, default_type = substitutes[kind]
            return _Response(200, default_body if body is None else body, fault.content_type or default_type)
        if kind == "redirect":
            return _Response(fault.status or 302, b"", "text/html", {"Location": fault.location or record.raw_target})
        if kind == "bomb":
            return _Response(200, _png_bomb(), "image/png")
        if kind == "endless":
            return _Response(200, self._endless(), fault.content_type or "image/jpeg")
        if kind == "expire":
            return _access_denied("Request has expired")
        return None  # delay, truncate, slow_body, drop_after

    def _endless(self) -> Iterator[bytes]:
        chunk = b"\xff\xd8\xff\xe0" + bytes(65532)
        while not self._stop.wait(0.001):  # the pause keeps a greedy client from pinning a CPU
            yield chunk
        raise _Stopped

    def _answer(self, role: str, record: RecordedRequest) -> _Response:
        if role == "storage":
            return self._download(record)
        if record.path == GENERATIONS_PATH:
            return self._generate(record) if record.method == "POST" else _html_response(405, {"Allow": "POST"})
        if record.path == "/images/generations":  # a base URL without /v1, as the real host redirects
            query = record.raw_target[len(record.path) :]
            return _html_response(301, {"Location": f"{self.base_url}/images/generations{query}"})
        return _html_response(404)

    # --- the generation endpoint ---

    def _generate(self, record: RecordedRequest) -> _Response:
        if record.headers.get("authorization") != f"Bearer {self.api_key}":
            return _comet_error(401, "invalid token", "")
        body = record.json
        if not isinstance(body, dict):
            return _comet_error(400, "invalid request: the body must be a JSON object", "invalid_request")
        model, prompt = body.get("model"), body.get("prompt")
        if not isinstance(model, str) or not model:
            return _comet_error(400, "invalid request: model is required", "invalid_request")
        if not isinstance(prompt, str) or not prompt.strip():
            return _comet_error(400, "invalid request: prompt is required", "invalid_request")
        request_id = _provider_id()
        spec = self.models.get(model)
        if spec is None:
            message = f"The model or endpoint {model} does not exist or you do not have access to it."
            return _provider_error(404, "UnsupportedModel", message, "model", "NotFound", request_id)
        try:
            job = self._job(body, model, spec, prompt)
        except _Invalid as invalid:
            message = f"The parameter `{invalid.param}` specified in the request is not valid: {invalid.detail}."
            return _provider_error(400, "InvalidParameter", message, invalid.param, "BadRequest", request_id)
        if _INPUT_MODERATION_MARKER in prompt:
            message = "The request failed because the input text may contain sensitive information."
            return _provider_error(
                400, "InputTextSensitiveContentDetected", message, "prompt", "BadRequest", request_id
            )
        created = int(_as_utc(self.now()).timestamp())
        if job.stream:
            return _Response(200, self._events(job, created), "text/event-stream", {"Cache-Control": "no-cache"})
        items = list(self._produce(job))
        if not any(item.ok for item in items):
            error = items[0].payload["error"]
            return _provider_error(400, error["code"], error["message"], "", "BadRequest", request_id)
        answer = {"model": model, "created": created, "data": [item.payload for item in items], "usage": _usage(items)}
        return _json_response(200, answer)

    def _job(self, body: dict[str, Any], model: str, spec: ModelSpec, prompt: str) -> _Job:
        refs = _optional(body, "image", [])
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, list):
            raise _Invalid("image", "must be a string or a list of strings")
        if refs and not spec.max_refs:
            raise _Invalid("image", "this model does not accept reference images")
        if len(refs) > spec.max_refs:
            raise _Invalid("image", f"at most {spec.max_refs} reference images are supported")
        for ref in refs:
            problem = _reference_problem(ref)
            if problem:
                raise _Invalid("image", problem)
        width, height = _size(body.get("size"), spec, prompt)
        response_format = _optional(body, "response_format", "url")
        if response_format not in ("url", "b64_json"):
            raise _Invalid("response_format", "must be url or b64_json")
        seed = _optional(body, "seed", -1)
        if not _is_int(seed) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            raise _Invalid("seed", f"must be an integer between {SEED_RANGE[0]} and {SEED_RANGE[1]}")
        guidance = body.get("guidance_scale")
        if guidance is not None and not spec.guidance_scale:
            raise _Invalid("guidance_scale", "not supported by this model")
        if guidance is not None and not (_is_number(guidance) and 1 <= guidance <= 10):
            raise _Invalid("guidance_scale", "must be between 1 and 10")
        fmt = body.get("output_format")
        if fmt is not None and not spec.output_formats:
            raise _Invalid("output_format", "not supported by this model")
        if fmt is not None and fmt not in spec.output_formats:
            raise _Invalid("output_format", f"must be one of {', '.join(spec.output_formats)}")
        watermark = _optional(body, "watermark", True)  # the provider's default: a mark unless told otherwise
        if not isinstance(watermark, bool):
            raise _Invalid("watermark", "must be a boolean")
        stream = _optional(body, "stream", False)
        if not isinstance(stream, bool):
            raise _Invalid("stream", "must be a boolean")
        if stream and not spec.stream:
            raise _Invalid("stream", "streaming is not supported by this model")
        self._check_extras(body, spec)
        markers = _ITEM_MARKER.findall(prompt)
        return _Job(
            model=model,
            prompt=prompt,
            seed=seed,
            width=width,
            height=height,
            count=self._count(body, spec, len(refs)),
            fmt=fmt or "jpeg",
            watermark=watermark,
            response_format=response_format,
            stream=stream and self.stream_passthrough,
            moderated=frozenset(int(k) for kind, k in markers if kind == "moderate"),
            internal=frozenset(int(k) for kind, k in markers if kind == "internal"),
            sizes={int(k): (int(w), int(h)) for k, w, h in _SIZE_MARKER.findall(prompt)},
        )

    @staticmethod
    def _check_extras(body: dict[str, Any], spec: ModelSpec) -> None:
        options = body.get("optimize_prompt_options")
        if options is not None:
            mode = options.get("mode", "standard") if isinstance(options, dict) else None
            if mode not in ("standard", "fast"):
                raise _Invalid("optimize_prompt_options", "mode must be standard or fast")
            if mode == "fast" and not spec.fast_prompt_mode:
                raise _Invalid("optimize_prompt_options", "fast mode is not supported by this model")
        tools = body.get("tools")
        if tools is not None:
            if not spec.web_search:
                raise _Invalid("tools", "not supported by this model")
            if not isinstance(tools, list) or any(tool != {"type": "web_search"} for tool in tools):
                raise _Invalid("tools", "only web_search is supported")

    def _count(self, body: dict[str, Any], spec: ModelSpec, refs: int) -> int:
        mode = body.get("sequential_image_generation")
        options = body.get("sequential_image_generation_options")
        if (mode is not None or options is not None) and not spec.sequential:
            raise _Invalid("sequential_image_generation", "not supported by this model")
        if mode not in (None, "disabled", "auto"):
            raise _Invalid("sequential_image_generation", "must be disabled or auto")
        if options is not None and not isinstance(options, dict):
            raise _Invalid("sequential_image_generation_options", "must be an object")
        max_images = (options or {}).get("max_images")
        if max_images is not None and not (_is_int(max_images) and 1 <= max_images <= MAX_TOTAL_IMAGES):
            raise _Invalid("sequential_image_generation_options.max_images", "must be between 1 and 15")
        if mode != "auto":
            return 1  # max_images alone does nothing: the "I asked for 4 and got 1" trap
        if max_images is not None and refs + max_images > MAX_TOTAL_IMAGES:
            raise _Invalid("sequential_image_generation_options.max_images", "reference and output images exceed 15")
        # Without max_images the provider may make up to 15 (less the references): the cost trap.
        cap = MAX_TOTAL_IMAGES - refs if max_images is None else max_images
        return cap if self.sequential_count is None else max(1, min(self.sequential_count, cap))

    def _produce(self, job: _Job) -> Iterator[_Item]:
        for index in range(job.count):
            if self._stop.wait(self.latency(index)):
                raise _Stopped
            if index in job.moderated:
                message = "The request failed because the output image may contain sensitive information."
                yield _Item(index, {"error": {"code": "OutputImageSensitiveContentDetected", "message": message}}, 0)
                continue
            if index in job.internal:
                message = "The service encountered an unexpected internal error."
                yield _Item(index, {"error": {"code": "InternalServiceError", "message": message}}, 0)
                return
            width, height = job.sizes.get(index, (job.width, job.height))
            data = render_image(
                job.prompt, job.seed, index, width, height, watermark=job.watermark, fmt=job.fmt, textured=self.textured
            )
            with self._lock:
                self.billed_images += 1
            if job.response_format == "b64_json":
                payload = {"b64_json": base64.b64encode(data).decode()}
            else:
                payload = {"url": self._store(data, job.fmt)}
            payload["size"] = f"{width}x{height}"
            yield _Item(index, payload, width * height // 256)

    def _events(self, job: _Job, created: int) -> Iterator[bytes]:
        items: list[_Item] = []
        for item in self._produce(job):
            items.append(item)
            event = "image_generation.partial_succeeded" if item.ok else "image_generation.partial_failed"
            payload = {"type": event, "model": job.model, "created": created, "image_index": item.index}
            yield _sse(event, payload | item.payload)
        event = "image_generation.completed"
        yield _sse(event, {"type": event, "model": job.model, "created": created, "usage": _usage(items)})
        yield b"data: [DONE]\n\n"

    # --- the storage host ---

    def _sign(self, signed: str) -> str:
        return hmac.new(self._secret, signed.encode(), hashlib.sha256).hexdigest()

    def _store(self, data: bytes, fmt: str) -> str:
        now = _as_utc(self.now())
        extension = "png" if fmt == "png" else "jpeg"
        path = f"/{BUCKET}/{uuid.uuid4()}.{extension}"
        signed = (
            f"{path}?X-Tos-Algorithm=TOS4-HMAC-SHA256&X-Tos-Content-Sha256=UNSIGNED-PAYLOAD"
            f"&X-Tos-Credential=AKLTemulator%2F{now:%Y%m%d}%2Fcn-beijing%2Ftos%2Frequest"
            f"&X-Tos-Date={now:%Y%m%dT%H%M%SZ}&X-Tos-Expires={LINK_LIFETIME_S}&X-Tos-SignedHeaders=host"
        )
        with self._lock:
            self._objects[path] = (data, f"image/{extension}")
        return f"{self.storage_origin}{signed}&X-Tos-Signature={self._sign(signed)}"

    def _download(self, record: RecordedRequest) -> _Response:
        if record.method != "GET":
            return _tos_error(405, "MethodNotAllowed", "The specified method is not allowed", "0003-00000001")
        if "authorization" in record.headers:
            return _tos_error(400, "InvalidArgument", "Only one auth mechanism allowed", "0002-00000003")
        # The signature covers the raw target byte for byte: any re-encoding or reordering breaks it.
        signed, separator, signature = record.raw_target.rpartition("&X-Tos-Signature=")
        if not separator or not hmac.compare_digest(signature.encode(), self._sign(signed).encode()):
            return _access_denied()
        params = dict(parse_qsl(signed.partition("?")[2]))
        issued = datetime.strptime(params["X-Tos-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        if _as_utc(self.now()) > issued + timedelta(seconds=int(params["X-Tos-Expires"])):
            return _access_denied("Request has expired")
        with self._lock:
            stored = self._objects.get(record.path)
        if stored is None:
            return _tos_error(404, "NoSuchKey", "The specified key does not exist.", "0017-00000003")
        return _Response(200, stored[0], stored[1])
