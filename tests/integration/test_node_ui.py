"""The Seedream nodes on the real canvas (headless Chromium): they follow the chosen model, say
before a run what would be refused and what it should cost, show phase, elapsed time and previews
while running, and the outcome afterwards; workflows saved before all this load unchanged."""

from __future__ import annotations

import json

from conftest import PACK_DIR

EXAMPLES = sorted((PACK_DIR / "examples" / "workflows").glob("*.json"))

# Runs in the page: a few helpers the scripts below share.
HELPERS = """
    window.seedreamTest = {
      widget: (node, name) => node.widgets.find((w) => w.name === name),
      set(node, name, value) { const w = this.widget(node, name); w.value = value; w.callback?.(value); },
      visible: (node) => node.widgets.filter((w) => !w.hidden).map((w) => w.name),
      references: (node) => node.inputs.filter((i) => i.type === "IMAGE")
        .map((i) => i.name + (i.link != null ? "*" : "")),
      status(node) { return this.widget(node, "seedream_status").value; },
      settle: () => new Promise((resolve) => setTimeout(resolve, 150)),
    };
"""


def open_canvas(ui_page) -> None:
    page = ui_page.page
    page.keyboard.press("Escape")  # the first-run template browser would hide the canvas
    page.wait_for_function("() => !document.querySelector('.p-dialog')")
    page.evaluate(HELPERS)


def test_the_nodes_follow_the_model(comfyui, ui_page, tmp_path_factory):
    open_canvas(ui_page)
    page = ui_page.page
    seen = page.evaluate(
        """async () => {
            const t = window.seedreamTest;
            app.graph.clear();
            const text = LiteGraph.createNode("CometAPISeedreamTextToImage");
            const edit = LiteGraph.createNode("CometAPISeedreamImageToImage");
            const group = LiteGraph.createNode("CometAPISeedreamSequential");
            const load = LiteGraph.createNode("LoadImage");
            for (const [node, x] of [[text, 40], [edit, 480], [group, 920]]) {
              node.pos = [x, 60];
              app.graph.add(node);
            }
            load.pos = [480, 700];
            app.graph.add(load);
            await t.settle();
            const seen = {
              sizes45: t.widget(text, "size").options.values, visible45: t.visible(text), status45: t.status(text),
              editSockets: t.references(edit), groupSockets: t.references(group),
            };
            t.set(text, "model", "bytedance-seedream-3.0-t2i");
            Object.assign(seen, { size30: t.widget(text, "size").value, visible30: t.visible(text) });
            t.set(text, "size", "custom");
            t.set(text, "width", 4000);
            t.set(text, "prompt", "a lighthouse");
            Object.assign(seen, { visibleCustom: t.visible(text), statusCustom: t.status(text) });
            load.connect(0, edit, edit.inputs.findIndex((i) => i.name === "image_1")); await t.settle();
            load.connect(0, edit, edit.inputs.findIndex((i) => i.name === "image_2")); await t.settle();
            seen.editAfterTwo = t.references(edit);
            edit.disconnectInput(edit.inputs.findIndex((i) => i.name === "image_2")); await t.settle();
            seen.editAfterDisconnect = t.references(edit);
            t.set(group, "prompt", "a storyboard");
            t.set(group, "max_images", 15);
            load.connect(0, group, group.inputs.findIndex((i) => i.name === "image_1")); await t.settle();
            seen.statusGroup = t.status(group);
            const prompt = await app.graphToPrompt();
            seen.sentInputs = Object.keys(prompt.output[String(text.id)].inputs);
            seen.savedValues = text.serialize().widgets_values;
            app.canvas.setDirty(true, true);
            return seen;
        }"""
    )
    assert "1K" not in seen["sizes45"] and "2K" in seen["sizes45"] and seen["sizes45"][-1] == "custom"
    for hidden in ("width", "height", "guidance_scale", "output_format", "web_search"):
        assert hidden not in seen["visible45"]
    assert "≈ $0.032 for 1 image" in seen["status45"] and "prompt is empty" in seen["status45"]
    assert seen["editSockets"] == ["image_1"] and seen["groupSockets"] == ["image_1"]
    assert seen["size30"] == "2048x2048 (1:1)" and "guidance_scale" in seen["visible30"]
    assert {"width", "height"} <= set(seen["visibleCustom"])
    assert "Size 4000x2048 (8,192,000 pixels) is outside what Seedream 3.0" in seen["statusCustom"]
    assert seen["editAfterTwo"] == ["image_1*", "image_2*", "image_3"]
    assert seen["editAfterDisconnect"] == ["image_1*", "image_2"]
    assert "1 references + max_images 15 = 16" in seen["statusGroup"]
    assert "seedream_status" not in seen["sentInputs"] and len(seen["savedValues"]) == 15  # no status value saved
    screenshot = tmp_path_factory.mktemp("browser") / "nodes.png"
    page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}")
    assert ui_page.errors_from_pack(comfyui.pack_folder) == []


def test_workflows_saved_before_load_with_their_values(comfyui, ui_page):
    open_canvas(ui_page)
    for path in EXAMPLES:
        workflow = json.loads(path.read_text(encoding="utf-8"))
        loaded = ui_page.page.evaluate(
            """async (workflow) => {
                await app.loadGraphData(workflow);
                await window.seedreamTest.settle();
                return app.graph._nodes.filter((n) => n.comfyClass.startsWith("CometAPISeedream")).map((node) => ({
                  id: node.id, values: node.serialize().widgets_values,
                  references: window.seedreamTest.references(node),
                }));
            }""",
            workflow,
        )
        for node in loaded:
            saved = next(n for n in workflow["nodes"] if n["id"] == node["id"])
            assert node["values"] == saved["widgets_values"], path.name
            connected = [name for name in node["references"] if name.endswith("*")]
            free = [name for name in node["references"] if not name.endswith("*")]
            assert len(free) <= 1, (path.name, node["references"])  # one free socket, not 14
            linked = [i for i in saved["inputs"] if i["type"] == "IMAGE" and i.get("link")]
            assert len(connected) == len(linked), path.name
    assert ui_page.errors_from_pack(comfyui.pack_folder) == []


def test_a_run_shows_phases_previews_and_the_outcome(comfyui, cometapi, ui_page, tmp_path_factory):
    cometapi.time_scale = 0.05  # a second or so per image: the stream delivers them one by one
    open_canvas(ui_page)
    page = ui_page.page
    page.evaluate(
        """async () => {
            const { api } = await import("/scripts/api.js");
            window.seedreamEvents = [];
            api.addEventListener("progress_text", (e) => window.seedreamEvents.push(["text", e.detail.text]));
            api.addEventListener("b_preview_with_metadata", () => window.seedreamEvents.push(["preview"]));
            api.addEventListener("b_preview", () => window.seedreamEvents.push(["preview"]));
            api.addEventListener("executed", (e) => window.seedreamEvents.push(["executed", e.detail.node]));
            const t = window.seedreamTest;
            app.graph.clear();
            const group = LiteGraph.createNode("CometAPISeedreamSequential");
            const preview = LiteGraph.createNode("PreviewImage");
            group.pos = [40, 60]; preview.pos = [520, 60];
            app.graph.add(group); app.graph.add(preview);
            group.connect(1, preview, 0);
            await t.settle();
            t.set(group, "prompt", "a storyboard of 3 panels");
            t.set(group, "max_images", 3);
            t.set(group, "size", "2K");
            t.widget(group, "seed").value = Date.now() % 100000;  // a new run, not a cached one
            await app.queuePrompt(0, 1);
        }"""
    )
    page.wait_for_function("() => window.seedreamEvents.some((e) => e[0] === 'executed')", timeout=120_000)
    page.wait_for_timeout(500)
    events = page.evaluate("() => window.seedreamEvents")
    status = page.evaluate(
        "() => window.seedreamTest.status(app.graph._nodes.find((n) => n.comfyClass === 'CometAPISeedreamSequential'))"
    )
    texts = [event[1] for event in events if event[0] == "text"]
    assert any(text.startswith("Generating with Seedream 4.5: 1 of up to 3 done · ") for text in texts), texts
    assert texts[-1].startswith("Done: 3 images · "), texts
    previews = [n for n, event in enumerate(events) if event[0] == "preview"]
    first_done = next(n for n, event in enumerate(events) if event[0] == "text" and "3 of up to 3" in event[1])
    assert previews and previews[0] < first_done  # the first image was shown while the group went on
    assert "Last run: 3 of 3 image(s) · 2048x2048" in status and "≈ $0.096" in status
    assert status.count(f"{cometapi.storage_origin}/") == 3 and "h 59 min left" in status
    screenshot = tmp_path_factory.mktemp("browser") / "after_run.png"
    page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}")
    assert ui_page.errors_from_pack(comfyui.pack_folder) == []
