"""Errors the user sees, and the redaction that keeps secrets out of them.

The text of an exception raised in a node is ComfyUI's user interface (a red node and a dialog),
so every message says what happened and what to change. Every message passes through `redact`,
which removes the API key wherever it came from (our code, the service echoing it, a prompt).
"""

from __future__ import annotations

import logging
import re
import threading

_secrets: set[str] = set()
_secrets_lock = threading.Lock()

# Bearer tokens and CometAPI-style keys that were never registered (a key pasted into a prompt
# and echoed by the service, say) are masked by shape.
_TOKEN_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),
)
MASK = "***"


def register_secret(secret: str) -> None:
    """Remember a secret so that `redact` removes it from any text from now on."""
    if secret and len(secret) >= 4:
        with _secrets_lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    """Return `text` with every registered secret and every token-shaped string masked."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = _TOKEN_PATTERNS[0].sub(lambda m: m.group(1) + MASK, text)
    return _TOKEN_PATTERNS[1].sub(MASK, text)


class RedactingFilter(logging.Filter):
    """Masks secrets in log records of the pack's loggers, arguments included."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


logger = logging.getLogger("seedream_cometapi")
logger.addFilter(RedactingFilter())


class SeedreamError(Exception):
    """Base of every error the pack raises on purpose; its text is shown to the user as is."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        return str(self)


class ConfigurationError(SeedreamError):
    """The key or base URL is missing or unusable. Nothing was sent."""


class InputError(SeedreamError):
    """An input the service would reject or that would waste money. Nothing was sent."""


class ServiceError(SeedreamError):
    """The service answered with an error, or with something that is not a valid answer."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "",
        param: str = "",
        request_id: str = "",
        structured: bool = False,
        maybe_billed: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param
        self.request_id = request_id
        self.structured = structured  # the service answered with its JSON error object
        self.maybe_billed = maybe_billed  # the request reached the service and may have been billed


class DownloadError(SeedreamError):
    """A result image could not be fetched or decoded."""
