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
import json
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from .config import ENV_BASE_URL, ENV_KEY, Settings
from .errors import DownloadError, ServiceError, logger

GENERATION_TIMEOUT = httpx.Timeout(connect=20.0, read=900.0, write=120.0, pool=900.0)
DOWNLOAD_TIMEOUT = httpx.Timeout(connect=20.0, read=60.0, write=20.0, pool=60.0)
MAX_DOWNLOAD_BYTES = 80 * 1024 * 1024
DOWNLOAD_ATTEMPTS = 3
MAX_CONCURRENT_REQUESTS = 4
LINK_LIFETIME_SECONDS = 24 * 3600
MODERATION_CODES = frozenset(
    {"InputTextSensitiveContentDetected", "InputImageSensitiveContentDetected", "OutputImageSensitiveContentDetected"}
)
_REQUEST_ID = re.compile(r"request id:?\s*([A-Za-z0-9_-]+)", re.IGNORECASE)


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


# --- one shared HTTP client per event loop --------------------------------------------------
# httpx connections belong to the loop that opened them; ComfyUI may run prompts on different
# loops, so the client (and the concurrency limit) is shared per loop, not per call.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def shared_http_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(
            follow_redirects=False,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
            headers={"User-Agent": "seedream-cometapi-comfyui"},
        )
        _clients[loop] = client
    return client


def request_slots() -> asyncio.Semaphore:
    """Limits generation requests in flight so a list of 50 prompts does not open 50 at once."""
    loop = asyncio.get_running_loop()
    if loop not in _slots:
        _slots[loop] = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
    return _slots[loop]


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
        if request_id and request_id not in text:
            text += f" (request id {request_id})"
        return ServiceError(
            text + _hint(status, code),
            status=status,
            code=code,
            param=str(error.get("param") or ""),
            request_id=request_id,
        )
    if 300 <= status < 400 or "html" in content_type or body.lstrip()[:1] == b"<":
        return ServiceError(
            f"CometAPI answered HTTP {status} with "
            f"{'a redirect' if 300 <= status < 400 else 'a web page'} instead of JSON: the base URL "
            f"{base_url} is probably wrong (it should end in /v1, e.g. https://api.cometapi.com/v1).",
            status=status,
        )
    snippet = body[:200].decode("utf-8", "replace")
    return ServiceError(f"CometAPI answered HTTP {status}: {snippet or '(empty body)'}", status=status)


def parse_answer(payload: Any) -> GenerationAnswer:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ServiceError("CometAPI's answer has no image list (`data`): it may still have been billed.")
    items = []
    for index, entry in enumerate(payload["data"]):
        entry = entry if isinstance(entry, dict) else {}
        error = entry.get("error") if isinstance(entry.get("error"), dict) else {}
        items.append(
            ResultItem(
                index=index,
                url=entry.get("url") or None,
                b64_json=entry.get("b64_json") or None,
                size=entry.get("size"),
                error_code=str(error.get("code") or ("" if entry.get("url") or entry.get("b64_json") else "Empty")),
                error_message=str(error.get("message") or ""),
            )
        )
    return GenerationAnswer(
        model=str(payload.get("model") or ""),
        created=int(payload.get("created") or time.time()),
        items=items,
        usage=payload.get("usage") if isinstance(payload.get("usage"), dict) else {},
    )


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


class CometAPIClient:
    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._http = http

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http or shared_http_client()

    async def generate(self, body: dict[str, Any]) -> GenerationAnswer:
        """POST the body once. Never retried here: a request that reached the service may be billed."""
        url = f"{self.settings.base_url}/images/generations"
        async with request_slots():
            try:
                response = await self.http.post(
                    url,
                    content=encode_body(body),
                    headers={"Authorization": f"Bearer {self.settings.api_key}", "Content-Type": "application/json"},
                    timeout=GENERATION_TIMEOUT,
                )
            except httpx.ConnectError as exc:
                raise ServiceError(
                    f"Cannot connect to {self.settings.base_url} ({type(exc).__name__}). Nothing was "
                    "sent: check the network and the base URL."
                ) from None
            except httpx.TimeoutException as exc:
                raise ServiceError(
                    f"CometAPI did not answer in time ({type(exc).__name__}). The request may have "
                    "been billed: check your CometAPI usage log before running again."
                ) from None
            except httpx.TransportError as exc:
                raise ServiceError(
                    f"The connection to CometAPI broke ({type(exc).__name__}). The request may have "
                    "been billed: check your CometAPI usage log before running again."
                ) from None
        content_type = response.headers.get("content-type", "")
        if response.status_code != 200:
            raise service_error(response.status_code, content_type, response.content, self.settings.base_url)
        try:
            payload = response.json()
        except ValueError:
            raise ServiceError(
                "CometAPI answered 200 with something that is not JSON "
                f"({response.content[:80]!r}); the request may have been billed."
            ) from None
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict) and not payload.get("data"):
            raise service_error(400, "application/json", response.content, self.settings.base_url)
        answer = parse_answer(payload)
        logger.info(
            "Seedream %s: %d of %d images generated, usage %s",
            answer.model, sum(i.ok for i in answer.items), len(answer.items), answer.usage,
        )
        return answer

    async def download(self, url: str) -> bytes:
        """GET a result link exactly as received, without the key; retried on transient faults."""
        delay = 1.0
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                return await self._download_once(url)
            except _TransientDownloadError as exc:
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise DownloadError(f"Downloading a result failed {attempt} times: {exc}") from None
                logger.warning("Result download failed (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _download_once(self, url: str) -> bytes:
        try:
            async with self.http.stream("GET", url, timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as response:
                if response.status_code != 200:
                    body = await response.aread()
                    if response.status_code >= 500 or response.status_code == 429:
                        raise _TransientDownloadError(f"HTTP {response.status_code}")
                    raise _download_refused(response.status_code, body)
                declared = int(response.headers.get("content-length") or 0)
                if declared > MAX_DOWNLOAD_BYTES:
                    raise DownloadError(f"The result is {declared:,} bytes, more than any image should be: refused.")
                chunks, total = [], 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > MAX_DOWNLOAD_BYTES:
                        raise DownloadError(f"The result grew past {MAX_DOWNLOAD_BYTES:,} bytes: refused.")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TransportError as exc:
            raise _TransientDownloadError(type(exc).__name__) from None


class _TransientDownloadError(Exception):
    pass


def _download_refused(status: int, body: bytes) -> DownloadError:
    text = body[:300].decode("utf-8", "replace")
    if b"AccessDenied" in body or status == 403:
        return DownloadError(
            f"The result link was refused (HTTP {status}: {text}). Links expire 24 hours after "
            "generation and break if altered in any way."
        )
    return DownloadError(f"The result link answered HTTP {status}: {text}")


def decode_b64_item(item: ResultItem) -> bytes:
    try:
        return base64.b64decode(item.b64_json or "", validate=True)
    except (binascii.Error, ValueError):
        raise DownloadError(f"Image {item.index + 1} of the answer has invalid base64 data.") from None
