"""Lint is part of the test run: ruff with the rules in pyproject.toml (which include the ones
`comfy node validate` enforces: S102, S307, E702)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PACK_DIR


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -r requirements-dev.txt)")
    result = subprocess.run([ruff, "check", "--no-cache", str(PACK_DIR)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
