"""The pack's server routes: the settings dialog stores the key and base URL here, server-side,
and the nodes read the model table (sizes, limits, prices) to adapt their widgets.

The key goes into the key file (readable by the server's user only) and is never sent back:
the dialog sees only where a key comes from and its last four characters. An environment
variable, when set, still wins over what the dialog stores.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from .config import delete_api_key, key_status, save_api_key, save_base_url
from .errors import ConfigurationError, SeedreamError, logger
from .models import load_table

SETTINGS_ROUTE = "/seedream_cometapi/settings"
KEY_ROUTE = f"{SETTINGS_ROUTE}/key"
MODELS_ROUTE = "/seedream_cometapi/models"


async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(key_status())


async def post_settings(request: web.Request) -> web.Response:
    """Body: {"api_key": "..."} and/or {"base_url": "..." | null}. Answers with the status."""
    try:
        body: Any = await request.json()
    except ValueError:
        return web.json_response({"error": "The body must be JSON."}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "The body must be a JSON object."}, status=400)
    try:
        if "api_key" in body:
            save_api_key(str(body["api_key"] or ""))
            logger.info("CometAPI key stored in the key file by the settings dialog.")
        if "base_url" in body:
            save_base_url(body["base_url"] or None)
    except ConfigurationError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(key_status())


async def delete_key(request: web.Request) -> web.Response:
    removed = delete_api_key()
    return web.json_response(key_status() | {"removed": removed})


async def get_models(request: web.Request) -> web.Response:
    """The model table as the nodes check it, the user's models.json included. A broken user
    file is reported (the nodes say so) rather than failing the page."""
    try:
        table = load_table()
    except SeedreamError as exc:
        return web.json_response({"error": str(exc)})
    return web.json_response(dataclasses.asdict(table))


def add_routes(routes: web.RouteTableDef) -> None:
    routes.get(MODELS_ROUTE)(get_models)
    routes.get(SETTINGS_ROUTE)(get_settings)
    routes.post(SETTINGS_ROUTE)(post_settings)
    routes.delete(KEY_ROUTE)(delete_key)
