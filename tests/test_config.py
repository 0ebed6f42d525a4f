"""Where the key comes from, and that it never shows."""

from __future__ import annotations

import importlib
import logging

import pytest
from conftest import PACK_NAME

config = importlib.import_module(f"{PACK_NAME}.nodes.config")
errors = importlib.import_module(f"{PACK_NAME}.nodes.errors")


def test_missing_key_says_where_to_put_it(isolated_config):
    with pytest.raises(errors.ConfigurationError) as caught:
        config.load_settings()
    assert "COMETAPI_KEY" in str(caught.value) and str(isolated_config / "cometapi_key") in str(caught.value)


def test_env_wins_over_key_file(isolated_config, monkeypatch):
    (isolated_config / "cometapi_key").write_text("sk-fromfile-aaaaaaaaaaaaaaaa\n")
    assert config.load_settings().api_key == "sk-fromfile-aaaaaaaaaaaaaaaa"
    monkeypatch.setenv("COMETAPI_KEY", "sk-fromenv-bbbbbbbbbbbbbbbbbb")
    settings = config.load_settings()
    assert settings.api_key == "sk-fromenv-bbbbbbbbbbbbbbbbbb" and settings.base_url == config.DEFAULT_BASE_URL
    assert "bbbbbbbb" not in repr(settings)


def test_base_url_from_env_or_config_file(isolated_config, monkeypatch):
    monkeypatch.setenv("COMETAPI_KEY", "k-123456")
    (isolated_config / "config.json").write_text('{"base_url": "http://127.0.0.1:9/v1/"}')
    assert config.load_settings().base_url == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("COMETAPI_BASE_URL", "ftp://example")
    with pytest.raises(errors.ConfigurationError, match="https://"):
        config.load_settings()


def test_key_file_path_override(tmp_path, monkeypatch):
    key = tmp_path / "elsewhere"
    key.write_text("custom-key-file-value")
    monkeypatch.setenv("COMETAPI_KEY_FILE", str(key))
    assert config.load_settings().key_source == str(key)


def test_registered_and_token_shaped_secrets_are_redacted(monkeypatch, caplog):
    monkeypatch.setenv("COMETAPI_KEY", "plainsecretvalue42")
    config.load_settings()
    text = errors.redact("key plainsecretvalue42, Bearer abcdefghijk, sk-ABCDEFGHIJKLMNOPQRSTUV")
    assert text == "key ***, Bearer ***, ***"
    assert "plainsecretvalue42" not in str(errors.ServiceError("echo plainsecretvalue42"))
    with caplog.at_level(logging.INFO, logger="seedream_cometapi"):
        errors.logger.info("sent %s", "plainsecretvalue42")
    assert "plainsecretvalue42" not in caplog.text and "sent ***" in caplog.text


def test_key_file_from_notepad_and_non_ascii_keys(isolated_config):
    (isolated_config / "cometapi_key").write_bytes("\ufeffsk-notepad-key-1234567890".encode("utf-8"))
    assert config.load_settings().api_key == "sk-notepad-key-1234567890"
    (isolated_config / "cometapi_key").write_text("sk-k\u00e9y-1234567890", encoding="utf-8")
    with pytest.raises(errors.ConfigurationError, match="non-ASCII"):
        config.load_settings()


def test_plain_http_only_to_this_machine(monkeypatch):
    monkeypatch.setenv("COMETAPI_KEY", "k-123456")
    monkeypatch.setenv("COMETAPI_BASE_URL", "http://localhost:8080/v1")
    assert config.load_settings().base_url == "http://localhost:8080/v1"
    monkeypatch.setenv("COMETAPI_BASE_URL", "http://api.cometapi.com/v1")
    with pytest.raises(errors.ConfigurationError, match="clear text"):
        config.load_settings()
