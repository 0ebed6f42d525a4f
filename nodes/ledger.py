"""The ledger: every answer that holds paid images is written to disk before anything is
downloaded, so a failed download, a crash or a closed browser never loses what was billed.

An entry is one JSON file (links, sizes, usage, model, prompt, time); images that came inside the
answer (`b64_json`) are saved beside it, since they have no link. The folder is in ComfyUI's user
directory but outside `user/<name>/`, which ComfyUI serves to browsers. "Seedream Load from
Ledger" turns an entry back into images while its links live (24 hours).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import host
from .client import GenerationAnswer, link_expiry
from .config import config_dir, write_private
from .errors import InputError, redact

ENV_LEDGER_DIR = "SEEDREAM_COMETAPI_LEDGER_DIR"
LATEST = "latest"
_MAGIC_EXTENSIONS = ((b"\x89PNG", "png"), (b"\xff\xd8", "jpeg"), (b"RIFF", "webp"))


def ledger_dir() -> Path:
    """`$SEEDREAM_COMETAPI_LEDGER_DIR`, else `ComfyUI/user/seedream-cometapi/ledger`, else (outside
    ComfyUI) `ledger/` in the pack's config folder."""
    explicit = os.environ.get(ENV_LEDGER_DIR)
    if explicit:
        return Path(explicit).expanduser()
    user = host.user_directory()
    return user / "seedream-cometapi" / "ledger" if user else config_dir() / "ledger"


def iso_time(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


@dataclass
class LedgerEntry:
    id: str
    path: Path
    data: dict[str, Any]

    def image_file(self, name: str) -> Path:
        return self.path.parent / name


def _write(path: Path, data: dict[str, Any]) -> None:
    """Atomic, private and redacted: a half-written entry never replaces a good one."""
    write_private(path, redact(json.dumps(data, indent=2, ensure_ascii=False)))


def _extension(data: bytes) -> str:
    return next((ext for magic, ext in _MAGIC_EXTENSIONS if data.startswith(magic)), "bin")


def image_records(answer: GenerationAnswer) -> list[dict[str, Any]]:
    """What the answer says of each image: size, link and its expiry, or the error."""
    records = []
    for item in answer.items:
        record: dict[str, Any] = {"index": item.index, "size": item.size}
        if item.url:
            record["url"] = item.url
            record["expires_at"] = iso_time(link_expiry(item.url, answer.created))
        if not item.ok:
            record["error"] = {"code": item.error_code, "message": item.error_message}
        records.append(record)
    return records


def _new_id() -> str:
    now = time.time()  # ids sort by when they were recorded, to the millisecond
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}{int(now * 1000) % 1000:03d}-{secrets.token_hex(3)}"


def record_answer(
    answer: GenerationAnswer,
    request: dict[str, Any],
    prompt: str,
    inline_images: dict[int, bytes | str],
    entry: LedgerEntry | None = None,
) -> LedgerEntry:
    """Write the answer before any download starts; with `entry`, rewrite that entry with the
    answer so far (a stream adds one image at a time). `inline_images` are the `b64_json` images:
    decoded bytes, or the text as received when it would not decode (kept all the same)."""
    folder = ledger_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if entry is None:
        entry_id = _new_id()
        entry = LedgerEntry(id=entry_id, path=folder / f"{entry_id}.json", data={"images": []})
    saved = {image["index"]: image["file"] for image in entry.data["images"] if "file" in image}
    images = image_records(answer)
    for record in images:
        data = inline_images.get(record["index"])
        if record["index"] in saved:
            record["file"] = saved[record["index"]]
        elif isinstance(data, str):
            record["file"] = f"{entry.id}-{record['index'] + 1}.b64.txt"
            (folder / record["file"]).write_text(data, encoding="ascii", errors="replace")
        elif data is not None:
            record["file"] = f"{entry.id}-{record['index'] + 1}.{_extension(data)}"
            (folder / record["file"]).write_bytes(data)
    entry.data = {
        "id": entry.id,
        "created": iso_time(answer.created),
        "model": answer.model or request.get("model", ""),
        "prompt": prompt,
        "request": request,
        "usage": answer.usage,
        "images": images,
        "status": "downloading",
    }
    _write(entry.path, entry.data)
    return entry


def record_outcome(entry: LedgerEntry, answer: GenerationAnswer, fetch_errors: dict[int, str]) -> None:
    """Mark which images reached ComfyUI, so a later look shows what is still to recover; keep the
    final usage (a stream reports it last) and whether the answer ended early."""
    entry.data["usage"] = answer.usage
    if answer.broken:
        entry.data["answer_incomplete"] = answer.broken
    for image in entry.data["images"]:
        if image["index"] in fetch_errors:
            image["download_error"] = fetch_errors[image["index"]]
    entry.data["status"] = "incomplete" if fetch_errors else "complete"
    _write(entry.path, entry.data)


def entry_ids() -> list[str]:
    """Every entry, newest first."""
    folder = ledger_dir()
    if not folder.is_dir():
        return []
    return sorted((path.stem for path in folder.glob("*.json")), reverse=True)


def load_entry(entry_id: str) -> LedgerEntry:
    ids = entry_ids()
    if entry_id == LATEST:
        if not ids:
            raise InputError(f"The ledger ({ledger_dir()}) is empty: no Seedream answer was recorded yet.")
        entry_id = ids[0]
    path = ledger_dir() / f"{Path(entry_id).name}.json"
    if not path.is_file():
        raise InputError(f"There is no ledger entry {entry_id!r} in {ledger_dir()}.")
    return LedgerEntry(id=path.stem, path=path, data=json.loads(path.read_text(encoding="utf-8")))
