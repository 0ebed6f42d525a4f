"""The Simplified Chinese translations in `locales/zh/` match the nodes and settings as they are now.

ComfyUI serves `<pack>/locales/<lang>/nodeDefs.json` and `settings.json` at `/i18n` (under the
keys `nodeDefs` and `settings`); the frontend looks node strings up as
`nodeDefs.<node id>.{display_name, description, inputs.<input>.{name, tooltip}, outputs.<index>.{name, tooltip}}`
and settings as `settings.<setting id with "." replaced by "_">.{name, tooltip}`."""

from __future__ import annotations

import importlib
import json
import re

import pytest
from conftest import PACK_DIR, PACK_NAME

ZH_DIR = PACK_DIR / "locales" / "zh"
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
# Labels deliberately left as identifiers (none at present): (node id, key path) pairs.
KEPT_IDENTIFIERS: set[tuple[str, str]] = set()
# The widget the frontend adds after an INT input declared with `control_after_generate`.
CONTROL_WIDGET = "control_after_generate"
SETTINGS_SCRIPT = PACK_DIR / "web" / "seedream_cometapi.js"

seedream = importlib.import_module(f"{PACK_NAME}.nodes.seedream")
NODE_IDS = sorted(seedream.NODE_CLASS_MAPPINGS)


def load(name: str) -> dict:
    return json.loads((ZH_DIR / name).read_text(encoding="utf-8"))


def visible_inputs(node_id: str) -> dict[str, tuple]:
    types = seedream.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
    return {name: spec for section in ("required", "optional") for name, spec in types.get(section, {}).items()}


def assert_chinese(node_id: str, path: str, value: object) -> None:
    assert isinstance(value, str) and value.strip(), f"{node_id}: {path} is empty"
    if (node_id, path) not in KEPT_IDENTIFIERS:
        assert CJK.search(value), f"{node_id}: {path} has no Chinese: {value!r}"


def test_every_node_and_no_stale_node():
    node_defs = load("nodeDefs.json")
    assert sorted(node_defs) == NODE_IDS


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_node_title_and_description(node_id: str):
    entry = load("nodeDefs.json")[node_id]
    assert_chinese(node_id, "display_name", entry.get("display_name"))
    if getattr(seedream.NODE_CLASS_MAPPINGS[node_id], "DESCRIPTION", None):
        assert_chinese(node_id, "description", entry.get("description"))


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_every_input_and_no_stale_input(node_id: str):
    inputs = visible_inputs(node_id)
    translated = load("nodeDefs.json")[node_id].get("inputs", {})
    expected = set(inputs)
    if any(len(spec) > 1 and spec[1].get(CONTROL_WIDGET) for spec in inputs.values()):
        expected.add(CONTROL_WIDGET)
    assert set(translated) == expected
    for name, spec in inputs.items():
        assert_chinese(node_id, f"inputs.{name}.name", translated[name].get("name"))
        # Every input carries an English tooltip, so each one needs its Chinese counterpart.
        assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no English tooltip"
        assert_chinese(node_id, f"inputs.{name}.tooltip", translated[name].get("tooltip"))
    if CONTROL_WIDGET in expected:
        assert_chinese(node_id, f"inputs.{CONTROL_WIDGET}.name", translated[CONTROL_WIDGET].get("name"))


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_every_output(node_id: str):
    cls = seedream.NODE_CLASS_MAPPINGS[node_id]
    outputs = load("nodeDefs.json")[node_id].get("outputs", {})
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    assert sorted(outputs, key=int) == [str(i) for i in range(len(cls.RETURN_NAMES))]
    for index in outputs:
        assert_chinese(node_id, f"outputs.{index}.name", outputs[index].get("name"))
        if getattr(cls, "OUTPUT_TOOLTIPS", None):
            assert_chinese(node_id, f"outputs.{index}.tooltip", outputs[index].get("tooltip"))


def test_only_known_keys():
    for node_id, entry in load("nodeDefs.json").items():
        assert set(entry) <= {"display_name", "description", "inputs", "outputs"}, node_id
        for part in ("inputs", "outputs"):
            for key, value in entry.get(part, {}).items():
                assert set(value) <= {"name", "tooltip"}, f"{node_id}.{part}.{key}"


def test_settings():
    setting_ids = set(re.findall(r"""\bid:\s*["'](SeedreamCometAPI\.[\w.]+)["']""", SETTINGS_SCRIPT.read_text("utf-8")))
    assert {"SeedreamCometAPI.ApiKey", "SeedreamCometAPI.BaseUrl"} <= setting_ids
    settings = load("settings.json")
    assert set(settings) == {setting_id.replace(".", "_") for setting_id in setting_ids}
    for key, entry in settings.items():
        assert set(entry) == {"name", "tooltip"}, key
        for field, value in entry.items():
            assert_chinese("settings", f"{key}.{field}", value)
