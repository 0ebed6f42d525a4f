"""Test setup: the pack is loaded the way ComfyUI loads it (its folder's `__init__.py` as a
package, the folder itself off `sys.path`), under a name that is not the folder's, so any absolute
import inside the pack fails here as it would in ComfyUI."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from emulator import SeedreamEmulator

PACK_DIR = Path(__file__).resolve().parents[1]
PACK_NAME = "seedream_pack_under_test"
TESTS_DIR = Path(__file__).resolve().parent


def load_pack(name: str = PACK_NAME):
    spec = importlib.util.spec_from_file_location(
        name, PACK_DIR / "__init__.py", submodule_search_locations=[str(PACK_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != PACK_DIR]
sys.path.insert(0, str(TESTS_DIR))
pack = load_pack()

TEST_KEY = "sk-emulator-0123456789abcdef"


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets an empty config folder and no key unless it asks for one."""
    config = tmp_path / "config"
    config.mkdir()
    monkeypatch.setenv("SEEDREAM_COMETAPI_CONFIG_DIR", str(config))
    for name in ("COMETAPI_KEY", "COMETAPI_KEY_FILE", "COMETAPI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    pack.nodes.models.load_table.cache_clear()
    yield config
    pack.nodes.models.load_table.cache_clear()


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[SeedreamEmulator]:
    from emulator import SeedreamEmulator

    with SeedreamEmulator(api_key=TEST_KEY) as server:
        yield server


@pytest.fixture
def service(emulator_server: SeedreamEmulator, monkeypatch: pytest.MonkeyPatch) -> SeedreamEmulator:
    """The emulator, reset, with the pack configured to talk to it as it would to CometAPI."""
    emulator_server.reset()
    monkeypatch.setenv("COMETAPI_KEY", TEST_KEY)
    monkeypatch.setenv("COMETAPI_BASE_URL", emulator_server.base_url)
    return emulator_server
