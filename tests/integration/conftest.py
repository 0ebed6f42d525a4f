"""A real ComfyUI for the tests in this folder, which skip unless `COMFYUI_DIR` names a ComfyUI
source tree. The emulator runs in this process and stands in for CometAPI; ComfyUI runs as its own
process with the pack linked into a custom_nodes folder. Every folder ComfyUI writes to (input,
output, user, temp, custom_nodes, its database) lives in a temporary base directory, so the user's
COMFYUI_DIR is only read.

Fixtures: `comfyui` (the server: URL, log, folders, HTTP helpers), `cometapi` (the emulator behind
it, reset for each test), `text_to_image` (a small API prompt), `browser` and `ui_page` (the
frontend in headless Chromium, for tests of the web extension).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PACK_DIR
from emulator import SeedreamEmulator

HERE = Path(__file__).resolve().parent
API_KEY = "sk-integration-5f3a9c1e7b2d4086"
PACK_FOLDER = "seedream-cometapi"  # the folder name a git clone gets (README, Install)
STARTUP_TIMEOUT_S = 180.0  # ComfyUI needs 10-20 s on an idle machine, far more on a busy one
RUN_TIMEOUT_S = 120.0
# The pack's own settings in the caller's environment must not reach the server under test.
PACK_ENV = (
    "COMETAPI_KEY", "COMETAPI_KEY_FILE", "COMETAPI_BASE_URL",
    "SEEDREAM_COMETAPI_CONFIG_DIR", "SEEDREAM_COMETAPI_LEDGER_DIR",
)  # fmt: skip
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
_seeds = itertools.count(1000)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The key check reads everything the session wrote (history, images, log, ledger): run it last.
    last = [item for item in items if item.path.parent == HERE and item.path.name == "test_secrets.py"]
    moved = {id(item) for item in last}
    items[:] = [item for item in items if id(item) not in moved] + last


@pytest.fixture(scope="session", autouse=True)
def comfyui_dir() -> Path:
    value = os.environ.get("COMFYUI_DIR")
    if not value:
        pytest.skip("COMFYUI_DIR is not set: these tests run a real ComfyUI from that source tree (see README)")
    path = Path(value).expanduser().resolve()
    if not (path / "main.py").is_file():
        pytest.fail(f"COMFYUI_DIR={value} has no main.py: point it at a ComfyUI source tree")
    return path


@dataclass
class ComfyUIServer:
    """A running ComfyUI: where it listens, where it keeps its files, and a few API calls."""

    url: str
    process: subprocess.Popen[bytes]
    base_dir: Path
    log_path: Path
    pack_path: Path  # the pack's link inside custom_nodes
    config_dir: Path
    ledger_dir: Path
    api_key: str
    http: httpx.Client = field(repr=False)
    startup_log: str = ""

    @property
    def pack_folder(self) -> str:
        return self.pack_path.name

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def versions(self) -> dict[str, str]:
        """ComfyUI's and the frontend's versions, as ComfyUI printed them at startup."""
        found = re.findall(r"^ComfyUI (version|frontend version): (\S+)", self.startup_log, re.MULTILINE)
        return {name: version for name, version in found}

    def wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"ComfyUI exited with code {self.process.returncode} at startup:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if self.http.get("/system_stats", timeout=2).status_code == 200:
                    self.startup_log = self.log_text()
                    return
            time.sleep(0.25)
        pytest.fail(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)

    def object_info(self) -> dict[str, Any]:
        return self.http.get("/object_info").json()

    def node_defs(self) -> dict[str, dict[str, Any]]:
        """Each node type's inputs, as `ui_to_api_prompt` takes them."""
        return {name: info["input"] for name, info in self.object_info().items()}

    def queue(self, prompt: dict[str, Any]) -> httpx.Response:
        return self.http.post("/prompt", json={"prompt": prompt, "client_id": "seedream-integration"})

    def queue_ok(self, prompt: dict[str, Any]) -> str:
        response = self.queue(prompt)
        assert response.status_code == 200, response.text
        return response.json()["prompt_id"]

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The prompt's history entry once it has finished (succeeded, failed or was interrupted)."""
        entry = self.http.get(f"/history/{prompt_id}").json().get(prompt_id)
        return entry if entry and entry.get("status", {}).get("status_str") else None

    def wait(self, prompt_id: str, timeout: float = RUN_TIMEOUT_S, interval: float = 0.05) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry:
                return entry
            time.sleep(interval)
        pytest.fail(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict[str, Any], timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
        return self.wait(self.queue_ok(prompt), timeout)

    @staticmethod
    def problems(entry: dict[str, Any]) -> str:
        """What went wrong in a finished prompt, for assertion messages."""
        return "\n".join(
            f"{kind}: {data.get('node_type')}: {data.get('exception_message', '')}"
            for kind, data in entry["status"]["messages"]
            if kind in ("execution_error", "execution_interrupted")
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def cometapi_server() -> Iterator[SeedreamEmulator]:
    with SeedreamEmulator(api_key=API_KEY) as server:
        yield server


@pytest.fixture(scope="session")
def comfyui(
    comfyui_dir: Path, cometapi_server: SeedreamEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComfyUIServer]:
    base = tmp_path_factory.mktemp("comfyui")
    pack_path = base / "custom_nodes" / PACK_FOLDER
    pack_path.parent.mkdir()
    pack_path.symlink_to(PACK_DIR, target_is_directory=True)
    config_dir, ledger_dir = base / "seedream-config", base / "seedream-ledger"
    config_dir.mkdir()
    ledger_dir.mkdir()
    env = {name: value for name, value in os.environ.items() if name not in PACK_ENV}
    env.update(
        COMETAPI_KEY=API_KEY,
        COMETAPI_BASE_URL=cometapi_server.base_url,
        SEEDREAM_COMETAPI_CONFIG_DIR=str(config_dir),
        SEEDREAM_COMETAPI_LEDGER_DIR=str(ledger_dir),
        PYTHONUNBUFFERED="1",
    )
    port = _free_port()
    command = [
        os.environ.get("COMFYUI_PYTHON") or sys.executable, "main.py", "--cpu",
        "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
        # --base-directory moves models, custom_nodes, input, output, temp and user; the database
        # defaults to COMFYUI_DIR/user whatever the base, so it is moved separately.
        "--base-directory", str(base), "--database-url", f"sqlite:///{base / 'comfyui.db'}",
    ]  # fmt: skip
    log_path = base / "comfyui.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=comfyui_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    server = ComfyUIServer(
        url=url, process=process, base_dir=base, log_path=log_path, pack_path=pack_path,
        config_dir=config_dir, ledger_dir=ledger_dir, api_key=API_KEY,
        http=httpx.Client(base_url=url, timeout=30),
    )  # fmt: skip
    try:
        server.wait_until_ready(STARTUP_TIMEOUT_S)
        yield server
    finally:
        server.stop()


@pytest.fixture
def cometapi(cometapi_server: SeedreamEmulator, comfyui: ComfyUIServer) -> SeedreamEmulator:
    """The emulator behind the running ComfyUI, reset: no requests recorded, no faults, no delay."""
    cometapi_server.reset()
    return cometapi_server


@pytest.fixture
def text_to_image() -> Callable[..., dict[str, dict[str, Any]]]:
    """Builds an API prompt: Seedream Text to Image (node `first_id`) into Save Image (`first_id` + 1).

    Small 1024x1024 images keep runs fast. Each prompt gets a seed no other prompt of the session
    used: ComfyUI would answer an unchanged node from its cache, with no request at all.
    """

    def build(prefix: str, first_id: int = 1, **inputs: Any) -> dict[str, dict[str, Any]]:
        values = {
            "prompt": "A lighthouse on a rocky cliff at dusk, photograph.",
            "model": "doubao-seedream-4-0-250828",
            "size": "1024x1024 (1:1)",
            "width": 2048,
            "height": 2048,
            "seed": next(_seeds),
            "watermark": False,
        } | inputs
        node, save = str(first_id), str(first_id + 1)
        return {
            node: {"class_type": "CometAPISeedreamTextToImage", "inputs": values},
            save: {"class_type": "SaveImage", "inputs": {"images": [node, 0], "filename_prefix": prefix}},
        }

    return build


# --- the frontend -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Playwright (optional: the test skips without them)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    chromium = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    if not chromium.is_file():
        pytest.skip(f"no Chromium at {chromium}: install Debian's chromium package or set CHROMIUM")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@dataclass
class OpenedUI:
    """The ComfyUI frontend in a browser page, with what the page reported while it ran."""

    page: Any
    console_errors: list[tuple[str, str]] = field(default_factory=list)  # (text, source URL)
    page_errors: list[tuple[str, str]] = field(default_factory=list)  # (message, stack)
    responses: list[tuple[str, int]] = field(default_factory=list)  # (URL, status)

    def errors_from_pack(self, folder: str) -> list[str]:
        """Console errors, page errors and failed responses that come from the pack's files or routes."""

        def ours(*texts: str) -> bool:
            return any(f"/extensions/{folder}/" in text or "seedream" in text.lower() for text in texts)

        return (
            [f"console: {text} ({url})" for text, url in self.console_errors if ours(text, url)]
            + [f"page error: {message}\n{stack}" for message, stack in self.page_errors if ours(message, stack)]
            + [f"HTTP {status}: {url}" for url, status in self.responses if status >= 400 and ours(url)]
        )


@pytest.fixture
def ui_page(browser: Any, comfyui: ComfyUIServer) -> Iterator[OpenedUI]:
    """A fresh page with the ComfyUI app loaded. Requests to anything but this machine are aborted:
    the frontend asks comfy.org for release news, and a test must not depend on the network."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    opened = OpenedUI(page)

    def local_only(route: Any) -> None:
        if route.request.url.startswith(comfyui.url):
            route.continue_()
        else:
            route.abort()

    def on_console(message: Any) -> None:
        if message.type == "error":
            opened.console_errors.append((message.text, message.location.get("url", "")))

    page.route("**/*", local_only)
    page.on("console", on_console)
    page.on("pageerror", lambda error: opened.page_errors.append((error.message, error.stack or "")))
    page.on("response", lambda response: opened.responses.append((response.url, response.status)))
    page.goto(comfyui.url)
    page.wait_for_function("() => window.app?.graph && window.app.vueAppReady", timeout=60_000)
    page.wait_for_load_state("networkidle")
    try:
        yield opened
    finally:
        context.close()
