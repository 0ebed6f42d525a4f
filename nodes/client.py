"""The CometAPI client: one generation call, result downloads, and readable errors.

The API key is sent only with requests to the base URL. Result links point at an object-storage
host: they are fetched exactly as received (re-encoding them breaks their signature) and never
with the key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import calendar
import email.utils
import json
import logging
import re
import socket
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from .config import ENV_BASE_URL, ENV_KEY, Settings
from .errors import DownloadError, ServiceError, logger

# A generation's answer arrives only when every image is done (20-45 s each, minutes for a group):
# the read timeout grows with the images asked for, and TCP keepalive notices a dead peer sooner.
CONNECT_TIMEOUT = 20.0
BASE_READ_TIMEOUT = 120.0
READ_TIMEOUT_PER_IMAGE = 60.0
DOWNLOAD_TIMEOUT = httpx.Timeout(connect=CONNECT_TIMEOUT, read=60.0, write=20.0, pool=60.0)
DOWNLOAD_DEADLINE = 300.0  # seconds for one result, however slowly it drips
MAX_DOWNLOAD_BYTES = 80 * 1024 * 1024
MAX_ANSWER_BYTES = 640 * 1024 * 1024  # 15 base64 4K images fit with room to spare
DOWNLOAD_ATTEMPTS = 4
POST_ATTEMPTS = 4
UPLOAD_CHUNK = 1024 * 1024
RETRY_BASE_DELAY = 2.0
MAX_RETRY_AFTER = 120.0
MAX_CONCURRENT_REQUESTS = 4
LINK_LIFETIME_SECONDS = 24 * 3600
MODERATION_CODES = frozenset(
    {"InputTextSensitiveContentDetected", "InputImageSensitiveContentDetected", "OutputImageSensitiveContentDetected"}
)
# Error codes that say the service turned the request away without working on it.
NOT_PROCESSED_CODES = ("RateLimitExceeded", "ServerOverloaded", "ServiceUnavailable", "QuotaExceeded.Concurrency")
MAYBE_BILLED = (
    " The request reached CometAPI and may have been billed, so it was not sent again: check your "
    "usage log at cometapi.com before running again (a rerun is a new, billed request)."
)
_REQUEST_ID = re.compile(r"request id:?\s*([A-Za-z0-9_-]+)", re.IGNORECASE)
_KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    *[
        (socket.IPPROTO_TCP, getattr(socket, name), value)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
        if hasattr(socket, name)
    ],
]


class _SignedLinkFilter(logging.Filter):
    """httpx logs every request line at INFO; a result link in a shared log would hand out the
    image for a day, so its signature is masked there (the links stay whole in `info`)."""

    _signature = re.compile(r"(X-Tos-Signature=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "X-Tos-Signature=" in message:
            record.msg, record.args = self._signature.sub(r"\1***", message), None
        return True


logging.getLogger("httpx").addFilter(_SignedLinkFilter())


def generation_timeout(expected_images: int, read_seconds: float | None = None) -> httpx.Timeout:
    """Timeouts for one generation: `read_seconds` if given, else 2 min + 1 min per image asked for."""
    read = read_seconds or BASE_READ_TIMEOUT + READ_TIMEOUT_PER_IMAGE * max(1, expected_images)
    return httpx.Timeout(connect=CONNECT_TIMEOUT, read=read, write=120.0, pool=read)


@dataclass
class ResultItem:
    """One entry of the answer's `data`: an image (link or base64) or a per-image error."""

    index: int
    url: str | None = None
    b64_json: str | None = None
    size: str | None = None
    error_code: str = ""
    error_message: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.url or self.b64_json)


@dataclass
class GenerationAnswer:
    model: str
    created: int
    items: list[ResultItem]
    usage: dict[str, Any] = field(default_factory=dict)
    broken: str = ""  # a stream that ended before its last event: why


# Called for each image of a streamed answer as soon as its event arrives (the answer so far, the item).
OnItem = Callable[[GenerationAnswer, ResultItem], None]


# --- one shared HTTP client per event loop --------------------------------------------------
# httpx connections belong to the loop that opened them, and ComfyUI runs each prompt on a new
# loop (one at a time): the client and the concurrency limit belong to the current loop and are
# replaced, not accumulated, when the loop changes. Connections are never kept alive: a reused
# idle connection that the server had closed makes a POST ambiguous (did it arrive?), while on a
# fresh one a failure to connect proves nothing was sent.


@dataclass
class _LoopResources:
    loop: weakref.ReferenceType[asyncio.AbstractEventLoop]
    http: httpx.AsyncClient
    slots: asyncio.Semaphore


_current: _LoopResources | None = None


def _resources() -> _LoopResources:
    global _current
    loop = asyncio.get_running_loop()
    if _current is None or _current.loop() is not loop or _current.http.is_closed:
        http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=0),
                socket_options=_KEEPALIVE,
            ),
            follow_redirects=False,
            headers={"User-Agent": "seedream-cometapi-comfyui"},
        )
        _current = _LoopResources(weakref.ref(loop), http, asyncio.Semaphore(MAX_CONCURRENT_REQUESTS))
    return _current


def shared_http_client() -> httpx.AsyncClient:
    return _resources().http


def request_slots() -> asyncio.Semaphore:
    """Limits generation requests in flight so a list of 50 prompts does not open 50 at once."""
    return _resources().slots


class _Cooldown:
    """Process-wide pause after a 429: every request waits, instead of each hammering alone."""

    def __init__(self) -> None:
        self.until = 0.0

    def push(self, seconds: float) -> None:
        self.until = max(self.until, time.monotonic() + seconds)

    async def wait(self) -> None:
        while (remaining := self.until - time.monotonic()) > 0:
            await asyncio.sleep(remaining)


cooldown = _Cooldown()


# --- errors -----------------------------------------------------------------------------------


def _hint(status: int, code: str) -> str:
    if status == 401:
        return f" Check the key ({ENV_KEY} or the key file) and the base URL ({ENV_BASE_URL})."
    if code in MODERATION_CODES:
        return " The content was refused by moderation: change the prompt or the references."
    if code == "UnsupportedModel" or status == 404:
        return " The model id may be wrong or not enabled for this key."
    if status == 429:
        return " Too many requests: wait a moment and run again."
    return ""


def service_error(status: int, content_type: str, body: bytes, base_url: str) -> ServiceError:
    """Turn an error answer (either JSON shape, an HTML page, or garbage) into a readable error."""
    payload: Any = None
    if "json" in content_type or body[:1] in (b"{", b"["):
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "").strip()
        code = str(error.get("code") or "")
        match = _REQUEST_ID.search(message)
        request_id = match.group(1) if match else ""
        label = code or str(error.get("type") or "error")
        text = f"CometAPI error {status} {label}: {message or '(no message)'}"
        text += "" if text.endswith((".", "!", "?", ")")) else "."
        if request_id and request_id not in text:
            text += f" (request id {request_id})"
        return ServiceError(
            text + _hint(status, code),
            status=status,
            code=code,
            param=str(error.get("param") or ""),
            request_id=request_id,
            structured=True,
        )
    is_page = "html" in content_type or body.lstrip()[:1] == b"<"
    if is_page and status >= 500:
        return ServiceError(f"CometAPI, or a gateway in front of it, failed with HTTP {status} (a web page, not JSON).",
                            status=status)
    if 300 <= status < 400 or is_page:
        return ServiceError(
            f"CometAPI answered HTTP {status} with "
            f"{'a redirect' if 300 <= status < 400 else 'a web page'} instead of JSON: the base URL "
            f"{base_url} is probably wrong (it should end in /v1, e.g. https://api.cometapi.com/v1).",
            status=status,
        )
    snippet = body[:200].decode("utf-8", "replace")
    return ServiceError(f"CometAPI answered HTTP {status}: {snippet or '(empty body)'}", status=status)


def _item(index: int, entry: Any) -> ResultItem:
    """One image of an answer (an entry of `data`, or a streamed event)."""
    entry = entry if isinstance(entry, dict) else {}
    error = entry.get("error") if isinstance(entry.get("error"), dict) else {}
    return ResultItem(
        index=index,
        url=entry.get("url") or None,
        b64_json=entry.get("b64_json") or None,
        size=entry.get("size"),
        error_code=str(error.get("code") or ("" if entry.get("url") or entry.get("b64_json") else "Empty")),
        error_message=str(error.get("message") or ""),
    )


def _answer_fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {"model": str(payload.get("model") or ""), "created": int(payload.get("created") or time.time())}


def parse_answer(payload: Any) -> GenerationAnswer:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ServiceError("CometAPI's answer has no image list (`data`): it may still have been billed.")
    return GenerationAnswer(
        **_answer_fields(payload),
        items=[_item(index, entry) for index, entry in enumerate(payload["data"])],
        usage=payload.get("usage") if isinstance(payload.get("usage"), dict) else {},
    )


class _EventStream:
    """Reads a streamed answer (server-sent events), handing each image on as it arrives.

    Events: `image_generation.partial_succeeded` / `partial_failed` (one per image, with
    `image_index`), `image_generation.completed` (usage), then `data: [DONE]`.
    """

    def __init__(self, on_item: OnItem | None) -> None:
        self.answer = GenerationAnswer(model="", created=0, items=[])
        self.on_item = on_item
        self.completed = False

    async def read(self, response: httpx.Response) -> GenerationAnswer:
        total, buffer = 0, ""
        async for text in response.aiter_text():
            total += len(text)
            if total > MAX_ANSWER_BYTES:
                raise DownloadError(f"CometAPI's answer grew past {MAX_ANSWER_BYTES:,} bytes: refused.")
            buffer += text.replace("\r\n", "\n")
            *events, buffer = buffer.split("\n\n")
            for event in events:
                self._event(event)
        if buffer.strip():
            self._event(buffer)
        if not self.completed:
            self.answer.broken = "the stream ended before its `completed` event"
        return self.answer

    def _event(self, block: str) -> None:
        data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
        if not data or data == "[DONE]":
            return
        try:
            payload = json.loads(data)
        except ValueError:
            logger.warning("Skipped an unreadable event in CometAPI's stream: %.80r", data)
            return
        if not isinstance(payload, dict):
            return
        if not self.answer.created:
            self.answer.model, self.answer.created = _answer_fields(payload).values()
        kind = str(payload.get("type") or "")
        if kind.endswith("completed"):
            self.completed = True
            self.answer.usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        elif kind.endswith(("partial_succeeded", "partial_failed")):
            index = payload.get("image_index")
            item = _item(index if isinstance(index, int) else len(self.answer.items), payload)
            self.answer.items.append(item)
            if self.on_item:
                self.on_item(self.answer, item)
        elif isinstance(payload.get("error"), dict):  # an error event: the group stops here
            error = payload["error"]
            self.answer.broken = f"the stream ended with an error: {error.get('message') or error.get('code')}"


def link_expiry(url: str, created: int) -> int:
    """Unix time at which a presigned result link stops working."""
    query = parse_qs(urlsplit(url).query)
    try:
        signed = time.strptime(query["X-Tos-Date"][0], "%Y%m%dT%H%M%SZ")
        return calendar.timegm(signed) + int(query["X-Tos-Expires"][0])
    except (KeyError, ValueError, IndexError):
        return created + LINK_LIFETIME_SECONDS


def encode_body(body: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON: the exact bytes sent (and checked byte for byte by the tests)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --- calls ------------------------------------------------------------------------------------


# The connection never opened, or the body never got through whole: nothing can be billed.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout)


class _Retry(Exception):
    """The service turned the request away without working on it: sending it again costs nothing."""

    def __init__(self, error: ServiceError, delay: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.delay = delay


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


async def _read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    declared = int(response.headers.get("content-length") or 0)
    if declared > limit:
        raise DownloadError(f"{what} is {declared:,} bytes, more than it can be: refused.")
    chunks, total = [], 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise DownloadError(f"{what} grew past {limit:,} bytes: refused.")
        chunks.append(chunk)
    return b"".join(chunks)


class CometAPIClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sent = False  # a request has left (or was leaving) for the service

    async def generate(
        self,
        body: dict[str, Any],
        timeout: httpx.Timeout,
        on_item: OnItem | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> GenerationAnswer:
        """POST the body. Sent again only when nothing can have been billed: the connection never
        opened, a 429 (after `Retry-After`, which pauses every request), or an error answer that
        says the request was not processed. Anything else after sending is final.

        A streamed answer calls `on_item` for each image as it arrives; a plain JSON answer to a
        streaming request is taken as it is. `on_sent` is called once the body is fully handed over.
        """
        content = encode_body(body)
        for attempt in range(1, POST_ATTEMPTS + 1):
            async with request_slots():
                await cooldown.wait()  # inside the slot: a 429 seen meanwhile pauses this one too
                self.sent = True
                try:
                    answer = await self._post_once(content, timeout, on_item, on_sent)
                    break
                except ServiceError as error:
                    if not (body.get("stream") and error.status == 400 and error.param == "stream"):
                        raise
                    # Refused before any work (a 400 is never billed): ask again without streaming.
                    logger.warning("CometAPI refused `stream` for %s; asking without it.", body.get("model"))
                    body = {key: value for key, value in body.items() if key != "stream"}
                    content, delay = encode_body(body), 0.0
                except _Retry as retry:
                    if attempt == POST_ATTEMPTS:
                        raise ServiceError(
                            f"{retry.error} Tried {attempt} times; nothing was billed. Wait a while and run again.",
                            status=retry.error.status, code=retry.error.code, request_id=retry.error.request_id,
                        ) from None
                    delay = retry.delay if retry.delay is not None else RETRY_BASE_DELAY * 2 ** (attempt - 1)
                    logger.warning("%s Not billed; sending again in %.1f s (try %d of %d).",
                                   retry.error, delay, attempt + 1, POST_ATTEMPTS)
            await asyncio.sleep(delay)
        logger.info(
            "Seedream %s: %d of %d images generated, usage %s",
            answer.model, sum(i.ok for i in answer.items), len(answer.items), answer.usage,
        )
        return answer

    async def _post_once(
        self, content: bytes, timeout: httpx.Timeout, on_item: OnItem | None, on_sent: Callable[[], None] | None
    ) -> GenerationAnswer:
        base_url = self.settings.base_url
        events: _EventStream | None = None
        try:
            async with shared_http_client().stream(
                "POST",
                f"{base_url}/images/generations",
                content=_chunks(content, on_sent),
                headers={
                    "Authorization": f"Bearer {self.settings.api_key}",
                    "Content-Type": "application/json",
                    "Content-Length": str(len(content)),  # not chunked: sent exactly as encoded
                },
                timeout=timeout,
            ) as response:
                if response.status_code == 200 and "event-stream" in response.headers.get("content-type", ""):
                    events = _EventStream(on_item)
                    return await events.read(response)
                data = await _read_capped(response, MAX_ANSWER_BYTES, "CometAPI's answer")
        except (httpx.TimeoutException, httpx.TransportError, DownloadError) as exc:
            if events and events.answer.items:  # the images that did arrive are kept, and were paid for
                events.answer.broken = f"the stream broke ({type(exc).__name__})"
                return events.answer
            raise self._failure(exc, base_url, timeout) from None
        return self._answer(response, data, base_url)

    @staticmethod
    def _failure(exc: Exception, base_url: str, timeout: httpx.Timeout) -> Exception:
        """The error to raise when no answer (or no image of a stream) arrived."""
        if isinstance(exc, _NOT_SENT):
            return _Retry(ServiceError(f"Could not send the request to {base_url} ({type(exc).__name__})."))
        if isinstance(exc, httpx.TimeoutException):
            return ServiceError(
                f"CometAPI sent no answer within {timeout.read:.0f} s (change `timeout` for longer groups)."
                + MAYBE_BILLED, maybe_billed=True,
            )
        if isinstance(exc, httpx.TransportError):
            return ServiceError(
                f"The connection to CometAPI broke before the answer was complete ({type(exc).__name__})."
                + MAYBE_BILLED, maybe_billed=True,
            )
        return ServiceError(str(exc) + MAYBE_BILLED, maybe_billed=True)

    @staticmethod
    def _answer(response: httpx.Response, data: bytes, base_url: str) -> GenerationAnswer:
        content_type = response.headers.get("content-type", "")
        if response.status_code != 200:
            error = service_error(response.status_code, content_type, data, base_url)
            if response.status_code == 429:
                cooldown.push(_retry_after(response) or RETRY_BASE_DELAY)
                raise _Retry(error, delay=0.0)
            if error.code.startswith(NOT_PROCESSED_CODES) or (
                error.structured and response.status_code >= 500 and error.code != "invalid_request"
            ):
                # A JSON error answer means no image was made, and only made images are billed.
                raise _Retry(error)
            if response.status_code >= 500 and not error.structured:
                raise ServiceError(str(error) + MAYBE_BILLED, status=error.status, maybe_billed=True)
            raise error
        try:
            payload = json.loads(data)
        except ValueError:
            if data.lstrip()[:1] == b"<":  # most likely the base URL points at a website
                error = service_error(200, "text/html", data, base_url)
                raise ServiceError(f"{error} If it is right: {MAYBE_BILLED.strip()}", maybe_billed=True) from None
            raise ServiceError(
                f"CometAPI answered 200 with something that is not JSON ({data[:80]!r})." + MAYBE_BILLED,
                maybe_billed=True,
            ) from None
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict) and not payload.get("data"):
            raise service_error(response.status_code, "application/json", data, base_url)
        try:
            return parse_answer(payload)
        except ServiceError as exc:
            raise ServiceError(str(exc) + MAYBE_BILLED, maybe_billed=True) from None


async def _chunks(content: bytes, on_sent: Callable[[], None] | None) -> AsyncIterator[bytes]:
    """The body in pieces, so that the caller learns when the upload is over."""
    for start in range(0, len(content), UPLOAD_CHUNK):
        yield content[start : start + UPLOAD_CHUNK]
    if on_sent:
        on_sent()


class _TransientDownloadError(Exception):
    pass


async def download(url: str) -> bytes:
    """GET a result link exactly as received, never with the key; retried with backoff on
    transient faults (a GET costs nothing), bounded in size and time."""
    delay = 1.0
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            return await asyncio.wait_for(_download_once(url), DOWNLOAD_DEADLINE)
        except (_TransientDownloadError, asyncio.TimeoutError) as exc:
            reason = str(exc) or f"no complete answer within {DOWNLOAD_DEADLINE:.0f} s"
            if attempt == DOWNLOAD_ATTEMPTS:
                raise DownloadError(f"Downloading the result failed {attempt} times ({reason}).") from None
            logger.warning("Result download failed (%s); trying again in %.0f s", reason, delay)
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


async def _download_once(url: str) -> bytes:
    try:
        async with shared_http_client().stream(
            "GET", url, timeout=DOWNLOAD_TIMEOUT, follow_redirects=True
        ) as response:
            if response.status_code != 200:
                body = await _read_capped(response, 64 * 1024, "The error page")
                if response.status_code >= 500 or response.status_code == 429:
                    raise _TransientDownloadError(f"HTTP {response.status_code}")
                raise _download_refused(response.status_code, body)
            return await _read_capped(response, MAX_DOWNLOAD_BYTES, "The result")
    except httpx.TransportError as exc:
        raise _TransientDownloadError(type(exc).__name__) from None


def _download_refused(status: int, body: bytes) -> DownloadError:
    text = body[:300].decode("utf-8", "replace")
    if b"AccessDenied" in body or status == 403:
        return DownloadError(
            f"The result link was refused (HTTP {status}: {text}). Links expire 24 hours after "
            "generation and break if altered in any way."
        )
    return DownloadError(f"The result link answered HTTP {status}: {text}")


def decode_b64(text: str) -> bytes:
    """Decode a `b64_json` image, tolerating a `data:` prefix and line breaks."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise DownloadError("The image in the answer is not valid base64.") from None
