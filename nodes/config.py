"""Where the API key, base URL and user model table come from.

The key lives on the server side only: the environment, or a key file in the pack's config
folder outside ComfyUI (its `/userdata` routes serve `ComfyUI/user/<user>/` to any browser, so
nothing secret goes there). Nothing here is ever a node widget.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError, logger, register_secret

DEFAULT_BASE_URL = "https://api.cometapi.com/v1"
ENV_KEY = "COMETAPI_KEY"
ENV_KEY_FILE = "COMETAPI_KEY_FILE"
ENV_BASE_URL = "COMETAPI_BASE_URL"
ENV_CONFIG_DIR = "SEEDREAM_COMETAPI_CONFIG_DIR"
APP_DIR_NAME = "seedream-cometapi"
KEY_FILE_NAME = "cometapi_key"
CONFIG_FILE_NAME = "config.json"
MODELS_FILE_NAME = "models.json"


def config_dir() -> Path:
    """The pack's config folder: `$SEEDREAM_COMETAPI_CONFIG_DIR`, else the platform's user config
    folder (`~/.config/seedream-cometapi`, `%APPDATA%\\seedream-cometapi`)."""
    explicit = os.environ.get(ENV_CONFIG_DIR)
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / APP_DIR_NAME
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / APP_DIR_NAME


def key_file() -> Path:
    explicit = os.environ.get(ENV_KEY_FILE)
    return Path(explicit).expanduser() if explicit else config_dir() / KEY_FILE_NAME


def read_config_file() -> dict[str, Any]:
    """The optional `config.json` of the config folder (base URL, timeouts); {} when absent."""
    path = config_dir() / CONFIG_FILE_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} must hold a JSON object.")
    return data


@dataclass(frozen=True)
class Settings:
    base_url: str
    api_key: str = field(repr=False)
    key_source: str


def _read_key_file(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8-sig").strip()  # -sig: Notepad's byte order mark
    except OSError as exc:
        raise ConfigurationError(f"The key file {path} cannot be read ({exc.strerror}).") from None
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("The key file %s is readable by other users: run chmod 600 on it.", path)
    return key


def load_settings() -> Settings:
    """Read the base URL and the API key; raise `ConfigurationError` when there is no key."""
    base_url = os.environ.get(ENV_BASE_URL) or read_config_file().get("base_url") or DEFAULT_BASE_URL
    base_url = str(base_url).strip().rstrip("/")
    parts = urlsplit(base_url)
    local = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not local:
        raise ConfigurationError(
            f"The CometAPI base URL must start with https:// (got {base_url!r}; plain http only to this "
            f"machine), or the key would travel in clear text. Fix {ENV_BASE_URL} or remove it to use "
            f"{DEFAULT_BASE_URL}."
        )

    key, source = os.environ.get(ENV_KEY, "").strip(), f"${ENV_KEY}"
    if not key:
        path = key_file()
        source = str(path)
        key = _read_key_file(path) if path.is_file() else ""
    if not key:
        raise ConfigurationError(
            f"No CometAPI key is configured. Set the environment variable {ENV_KEY} before "
            f"starting ComfyUI, or put the key alone in the file {key_file()} "
            "(get a key at cometapi.com, Console > API keys). Nothing was sent."
        )
    if any(ch.isspace() for ch in key) or not key.isascii():
        raise ConfigurationError(
            f"The CometAPI key from {source} contains spaces, line breaks or non-ASCII characters: "
            "paste the key alone."
        )
    register_secret(key)
    return Settings(base_url=base_url, api_key=key, key_source=source)
