"""The web extension's plain-JS logic, through Node's own test runner, so that the README's one
test command covers it too."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import PACK_DIR


def test_web_logic_with_node_test_runner():
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the web extension's logic tests need it")
    result = subprocess.run(
        [node, "--test", str(PACK_DIR / "tests" / "js")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout


def test_browser_modules_carry_no_secret_storage():
    """The key must never go into ComfyUI's settings store or the browser's storage."""
    for path in (PACK_DIR / "web").rglob("*.js"):
        text = path.read_text(encoding="utf-8")
        assert "localStorage" not in text and "sessionStorage" not in text, path
        assert "setSetting" not in text and ".settings.set" not in text, path
