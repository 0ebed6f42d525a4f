"""The settings routes: the key goes in, never comes out."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import stat
import sys
import types

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import PACK_NAME

routes = importlib.import_module(f"{PACK_NAME}.nodes.routes")
config = importlib.import_module(f"{PACK_NAME}.nodes.config")
host = importlib.import_module(f"{PACK_NAME}.nodes.host")
KEY = "sk-settings-dialog-0123456789abcdef"


def call(*requests):
    """Run (method, path, json) requests against the pack's routes on a real aiohttp server."""

    async def scenario():
        table = web.RouteTableDef()
        routes.add_routes(table)
        app = web.Application()
        app.add_routes(table)
        async with TestClient(TestServer(app)) as client:
            answers = []
            for method, path, body in requests:
                response = await client.request(method, path, json=body)
                answers.append((response.status, await response.text()))
            return answers

    return asyncio.run(scenario())


def test_key_is_stored_privately_and_never_returned(isolated_config):
    (status, text), (_, after) = call(
        ("POST", routes.SETTINGS_ROUTE, {"api_key": f"  {KEY}\n"}),
        ("GET", routes.SETTINGS_ROUTE, None),
    )
    assert status == 200 and KEY not in text and KEY not in after
    assert '"ends_with": "cdef"' in after and '"source": "file"' in after
    key_file = isolated_config / "cometapi_key"
    assert key_file.read_text().strip() == KEY
    if os.name == "posix":
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert config.load_settings().api_key == KEY


def test_environment_wins_and_is_reported(isolated_config, monkeypatch):
    monkeypatch.setenv("COMETAPI_KEY", "sk-from-the-environment-9999")
    ((_, text),) = call(("POST", routes.SETTINGS_ROUTE, {"api_key": KEY}))
    assert '"source": "environment"' in text and '"ends_with": "9999"' in text
    assert config.load_settings().api_key == "sk-from-the-environment-9999"


def test_bad_input_is_refused_without_echo(isolated_config):
    answers = call(
        ("POST", routes.SETTINGS_ROUTE, {"api_key": "two words"}),
        ("POST", routes.SETTINGS_ROUTE, {"base_url": "http://api.cometapi.com/v1"}),
        ("POST", routes.SETTINGS_ROUTE, ["not", "an", "object"]),
    )
    assert [status for status, _ in answers] == [400, 400, 400]
    assert "two words" not in answers[0][1] and "clear text" in answers[1][1]
    assert not (isolated_config / "cometapi_key").exists()


def test_base_url_and_removal(isolated_config):
    answers = call(
        ("POST", routes.SETTINGS_ROUTE, {"api_key": KEY, "base_url": "https://eu.cometapi.example/v1/"}),
        ("DELETE", routes.KEY_ROUTE, None),
        ("POST", routes.SETTINGS_ROUTE, {"base_url": None}),
    )
    assert '"base_url": "https://eu.cometapi.example/v1"' in answers[0][1]
    assert '"removed": true' in answers[1][1] and '"configured": false' in answers[1][1]
    assert config.DEFAULT_BASE_URL in answers[2][1]
    assert not (isolated_config / "cometapi_key").exists()


def test_routes_are_added_to_comfyuis_route_table(monkeypatch):
    table = web.RouteTableDef()
    server_module = types.ModuleType("server")
    server_module.PromptServer = types.SimpleNamespace(instance=types.SimpleNamespace(routes=table))
    monkeypatch.setitem(sys.modules, "server", server_module)
    host.add_server_routes(routes.add_routes)
    assert {(r.method, r.path) for r in table} == {
        ("GET", routes.SETTINGS_ROUTE), ("POST", routes.SETTINGS_ROUTE), ("DELETE", routes.KEY_ROUTE),
        ("GET", routes.MODELS_ROUTE),
    }


def test_the_model_table_is_served_to_the_nodes_user_models_included(isolated_config):
    (isolated_config / "models.json").write_text(
        json.dumps({"models": {"doubao-seedream-9-0-270101": {"like": "doubao-seedream-4-5-251128", "label": "S9"}}})
    )
    ((status, text),) = call(("GET", routes.MODELS_ROUTE, None))
    table = json.loads(text)
    assert status == 200 and table["models"]["doubao-seedream-9-0-270101"]["label"] == "S9"
    v45 = table["models"]["doubao-seedream-4-5-251128"]
    assert v45["size_presets"] == ["2K", "4K"] and v45["min_pixels"] == 3686400 and v45["price_per_image"] == 0.032
    assert table["recommended_sizes"]["2K"][0] == "2048x2048" and table["reference_limits"]["max_bytes"] == 10000000


def test_a_broken_user_model_file_is_reported_not_a_server_error(isolated_config):
    (isolated_config / "models.json").write_text("{not json")
    ((status, text),) = call(("GET", routes.MODELS_ROUTE, None))
    assert status == 200 and "must be JSON" in json.loads(text)["error"]
