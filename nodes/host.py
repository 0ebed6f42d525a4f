"""The few ComfyUI services the pack uses, imported lazily; outside ComfyUI each does nothing.

Nothing else in the pack imports ComfyUI, so the pack loads and is tested without it.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")
INTERRUPT_POLL_SECONDS = 0.25


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def interrupted() -> bool:
    management = _module("comfy.model_management")
    return bool(management and management.processing_interrupted())


def _raise_interrupt() -> None:
    """ComfyUI's interrupt exception, even when another waiting node already cleared the flag:
    anything else (a bare CancelledError) would escape ComfyUI's handlers and stop its worker."""
    management = _module("comfy.model_management")
    management.throw_exception_if_processing_interrupted()
    raise management.InterruptProcessingException()


async def interruptible(awaitable: Awaitable[T]) -> T:
    """Await while watching ComfyUI's Cancel; on Cancel the work is cancelled (its connection
    closed) and the interrupt exception raised."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=INTERRUPT_POLL_SECONDS)
            if done:
                return task.result()
            if interrupted():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                _raise_interrupt()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _prompt_server() -> Any:
    """ComfyUI's running `PromptServer`, or None."""
    return getattr(getattr(_module("server"), "PromptServer", None), "instance", None)


class Progress:
    """A node's progress bar and the text shown under it; silent outside ComfyUI."""

    def __init__(self, node_id: str | None, total: int = 100) -> None:
        self.node_id = node_id
        utils = _module("comfy.utils")
        self._bar = utils.ProgressBar(total, node_id=node_id) if utils and node_id else None

    @property
    def active(self) -> bool:
        """Whether anything is shown (inside ComfyUI, for a node): previews are made only then."""
        return self._bar is not None

    def update(self, value: int, total: int | None = None, preview: Any = None) -> None:
        """Move the bar; `preview` is ComfyUI's preview tuple `(format, PIL image, max side)`."""
        if self._bar:
            self._bar.update_absolute(value, total, preview)

    def text(self, message: str) -> None:
        server = _prompt_server()
        if server is not None and self.node_id:
            server.send_progress_text(message, self.node_id)


def user_directory() -> Path | None:
    """ComfyUI's user directory (`ComfyUI/user` unless moved), or None outside ComfyUI."""
    folder_paths = _module("folder_paths")
    return Path(folder_paths.get_user_directory()) if folder_paths else None


def add_server_routes(add: Callable[[Any], None]) -> None:
    """Give ComfyUI's route table to `add`; nothing happens outside ComfyUI."""
    server = _prompt_server()
    if server is not None:
        add(server.routes)
