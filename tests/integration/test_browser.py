"""The web extension in the real frontend (headless Chromium): it loads, registers and runs
without an error from its own code. Errors of the frontend itself are printed, not failed on
(frontend 1.27.10 throws "Cannot read properties of undefined (reading 'id')" in its settings
store with no custom nodes at all)."""

from __future__ import annotations

import importlib

from conftest import PACK_NAME

seedream = importlib.import_module(f"{PACK_NAME}.nodes.seedream")


def test_the_extension_loads_without_errors(comfyui, ui_page, tmp_path_factory):
    page = ui_page.page
    script = f"{comfyui.url}/extensions/{comfyui.pack_folder}/seedream_cometapi.js"
    assert (script, 200) in ui_page.responses, "the frontend did not load the extension's script"
    names = page.evaluate("() => window.app.extensions.map((extension) => extension.name)")
    assert [name for name in names if name.lower().startswith("seedream")], names
    node_ids = list(seedream.NODE_CLASS_MAPPINGS)
    missing = page.evaluate("(ids) => ids.filter((id) => !LiteGraph.registered_node_types[id])", node_ids)
    assert missing == []
    # The extension's nodeCreated hook ran: a new node's seed control starts on "fixed".
    control = page.evaluate(
        """() => {
            const node = LiteGraph.createNode("CometAPISeedreamTextToImage");
            node.pos = [60, 120];
            app.graph.add(node);
            const seed = node.widgets.find((widget) => widget.name === "seed");
            return seed.linkedWidgets?.find((widget) => widget.name === "control_after_generate")?.value;
        }"""
    )
    assert control == "fixed"
    page.wait_for_timeout(1000)  # errors thrown by late callbacks

    page.keyboard.press("Escape")  # the first-run template browser would hide the canvas
    page.wait_for_function("() => !document.querySelector('.p-dialog')")
    screenshot = tmp_path_factory.mktemp("browser") / "comfyui.png"
    page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}")
    reported = [message.splitlines()[0] for message, _ in ui_page.page_errors + ui_page.console_errors]
    print("errors the page reported:", *reported, sep="\n  ")
    assert ui_page.errors_from_pack(comfyui.pack_folder) == []


def test_the_settings_page_shows_where_the_key_comes_from_never_the_key(comfyui, ui_page, tmp_path_factory):
    page = ui_page.page
    page.evaluate("() => app.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
    page.get_by_text("Seedream (CometAPI)").first.click()
    status = page.locator(".seedream-key-status").first
    status.wait_for()
    page.wait_for_function("() => document.querySelector('.seedream-key-status').textContent !== '…'")
    text = status.text_content()
    assert "COMETAPI_KEY environment variable" in text and comfyui.api_key[-4:] in text, text
    screenshot = tmp_path_factory.mktemp("browser") / "settings.png"
    page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}")
    assert comfyui.api_key[:-4] not in page.content()
    assert ui_page.errors_from_pack(comfyui.pack_folder) == []
