"""The web extension's plain-JS logic, through Node's own test runner, so that the README's one
test command covers it too."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import subprocess

import pytest
from conftest import PACK_DIR, PACK_NAME

models = importlib.import_module(f"{PACK_NAME}.nodes.models")
request = importlib.import_module(f"{PACK_NAME}.nodes.request")
errors = importlib.import_module(f"{PACK_NAME}.nodes.errors")


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


def test_the_node_warnings_agree_with_the_server_checks():
    """The browser warns before queueing with the same table the server checks against: over a
    grid of models, sizes, references and max_images, both accept or both refuse."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    table = models.load_table()
    cases = [
        {"model": spec.id, "size": size, "width": w, "height": h, "references": refs, "max_images": n}
        for spec in table.models.values()
        for size, w, h in [("2K", 0, 0), ("1K", 0, 0), ("4K", 0, 0), ("2048x2048 (1:1)", 0, 0),
                           ("custom", 1024, 1024), ("custom", 6000, 2800), ("custom", 4096, 200), ("custom", 512, 512)]
        for refs in (0, 3, 11)
        for n in (None, 4, 13)
    ]  # fmt: skip
    script = f"""
        import {{ problems }} from {json.dumps((PACK_DIR / "web" / "lib" / "node_rules.js").as_uri())};
        const table = {json.dumps(dataclasses.asdict(table))};
        const cases = {json.dumps(cases)};
        console.log(JSON.stringify(cases.map((c) => problems(table.models[c.model],
            {{ size: c.size, width: c.width, height: c.height, prompt: "x", max_images: c.max_images ?? undefined }},
            c.references).length === 0)));
    """
    result = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    browser = json.loads(result.stdout)
    for case, accepted in zip(cases, browser, strict=True):
        opts = request.GenerationOptions(model=case["model"], prompt="x", size=case["size"], width=case["width"],
                                         height=case["height"], max_images=case["max_images"])
        try:
            request.check_request(opts, table, [(64, 64)] * case["references"])
            server = True
        except errors.InputError:
            server = False
        assert accepted == server, case
