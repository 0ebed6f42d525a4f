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


def _check_key(key: str, source: str) -> None:
    if not key:
        raise ConfigurationError(f"The CometAPI key from {source} is empty.")
    if any(ch.isspace() for ch in key) or not key.isascii() or len(key) > 512:
        raise ConfigurationError(
            f"The CometAPI key from {source} contains spaces, line breaks or non-ASCII characters: "
            "paste the key alone."
        )


def _check_base_url(base_url: str) -> str:
    base_url = base_url.strip().rstrip("/")
    parts = urlsplit(base_url)
    local = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not parts.hostname or (parts.scheme != "https" and not local):
        raise ConfigurationError(
            f"The CometAPI base URL must start with https:// (got {base_url!r}; plain http only to this "
            f"machine), or the key would travel in clear text. Fix {ENV_BASE_URL} or remove it to use "
            f"{DEFAULT_BASE_URL}."
        )
    return base_url


def write_private(path: Path, text: str) -> None:
    """Atomic, readable by the server's user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def save_api_key(key: str) -> None:
    """Store a key in the key file (settings dialog); it is never sent back anywhere."""
    key = key.strip()
    _check_key(key, "the settings dialog")
    write_private(key_file(), key + "\n")
    register_secret(key)


def delete_api_key() -> bool:
    path = key_file()
    if not path.is_file():
        return False
    path.unlink()
    return True


def save_base_url(base_url: str | None) -> None:
    """Store the base URL in config.json; None or "" goes back to the default."""
    data = read_config_file()
    if base_url:
        data["base_url"] = _check_base_url(base_url)
    else:
        data.pop("base_url", None)
    write_private(config_dir() / CONFIG_FILE_NAME, json.dumps(data, indent=2) + "\n")


def _configured_base_url() -> str:
    return str(os.environ.get(ENV_BASE_URL) or read_config_file().get("base_url") or DEFAULT_BASE_URL)


def _find_key() -> tuple[str, str]:
    """(key, where it came from); the key is "" when none is configured. The environment wins."""
    key = os.environ.get(ENV_KEY, "").strip()
    if key:
        return key, f"${ENV_KEY}"
    path = key_file()
    return (_read_key_file(path) if path.is_file() else ""), str(path)


def key_status() -> dict[str, Any]:
    """What the settings dialog may show: where the key comes from and its last 4 characters."""
    key, source = _find_key()
    from_env = source == f"${ENV_KEY}"
    return {
        "key_file": str(key_file()),
        "base_url": _configured_base_url(),
        "base_url_source": "environment" if os.environ.get(ENV_BASE_URL) else "settings",
        "configured": bool(key),
        "source": "environment" if from_env else "file" if key else None,
        "ends_with": key[-4:] if len(key) >= 12 else None,
    }


def load_settings() -> Settings:
    """Read the base URL and the API key; raise `ConfigurationError` when there is no key."""
    base_url = _check_base_url(_configured_base_url())
    key, source = _find_key()
    if not key:
        raise ConfigurationError(
            f"No CometAPI key is configured. Set the environment variable {ENV_KEY} before "
            f"starting ComfyUI, or put the key alone in the file {key_file()} "
            "(get a key at cometapi.com, Console > API keys). Nothing was sent."
        )
    _check_key(key, source)
    register_secret(key)
    return Settings(base_url=base_url, api_key=key, key_source=source)
