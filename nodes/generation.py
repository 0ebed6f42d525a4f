"""One Seedream run from inputs to output tensors: check, encode, call, fetch, decode.

Plain logic: ComfyUI's services are reached only through `host`, so this runs (and is tested)
without ComfyUI.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from .client import CometAPIClient, GenerationAnswer, ResultItem, decode_b64_item, link_expiry
from .config import Settings, load_settings
from .errors import DownloadError, SeedreamError, ServiceError, logger, redact
from .host import Progress, interruptible
from .images import EncodedReference, array_to_tensor, batch_images, decode_result, encode_reference, tensor_to_arrays
from .models import load_table
from .request import GenerationOptions, build_body, check_request


@dataclass
class GenerationResult:
    images: torch.Tensor  # one batch; images of another size are fitted to the first
    image_list: list[torch.Tensor]  # every image at its own size, [1, H, W, 3] each
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def info_json(self) -> str:
        return redact(json.dumps(self.info, indent=2, ensure_ascii=False))


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _fetch_image(client: CometAPIClient, item: ResultItem) -> np.ndarray:
    data = decode_b64_item(item) if item.b64_json else await client.download(item.url or "")
    return await asyncio.to_thread(decode_result, data)


def _describe_failures(items: list[ResultItem]) -> str:
    return "; ".join(f"image {i.index + 1}: {i.error_code} {i.error_message}".strip() for i in items)


def _info(
    opts: GenerationOptions,
    body: dict[str, Any],
    answer: GenerationAnswer,
    references: list[EncodedReference],
    fetch_errors: dict[int, str],
    notes: list[str],
) -> dict[str, Any]:
    images = []
    for item in answer.items:
        entry: dict[str, Any] = {"index": item.index, "size": item.size}
        if item.url:
            entry["url"] = item.url
            entry["expires_at"] = _iso(link_expiry(item.url, answer.created))
        if not item.ok:
            entry["error"] = {"code": item.error_code, "message": item.error_message}
        elif item.index in fetch_errors:
            entry["error"] = {"code": "DownloadFailed", "message": fetch_errors[item.index]}
        images.append(entry)
    generated = sum(item.ok for item in answer.items)
    return {
        "model": answer.model or body["model"],
        "created": _iso(answer.created),
        "prompt": opts.prompt,
        "request": {key: value for key, value in body.items() if key not in ("prompt", "image", "model")},
        "references": [
            {"sent": f"{r.width}x{r.height}", "source": f"{r.source_width}x{r.source_height}", "bytes": r.encoded_bytes}
            for r in references
        ],
        "requested_images": opts.max_images or 1,
        "generated_images": generated,
        "failed_images": len(answer.items) - generated,
        "images": images,
        "usage": answer.usage,
        "notes": notes,
    }


async def generate(
    opts: GenerationOptions,
    references: list[torch.Tensor],
    *,
    node_id: str | None = None,
    settings: Settings | None = None,
) -> GenerationResult:
    """Run one generation. Raises `SeedreamError` subclasses with user-facing messages."""
    table = load_table()
    arrays = [array for batch in references for array in tensor_to_arrays(batch)]
    checked = check_request(opts, table, [(a.shape[1], a.shape[0]) for a in arrays])
    settings = settings or load_settings()
    progress = Progress(node_id)
    notes = list(checked.notes)

    if arrays:
        progress.text(f"Preparing {len(arrays)} reference image{'s' * (len(arrays) > 1)}")
        limits = table.reference_limits
        encoded = await asyncio.to_thread(
            lambda: [encode_reference(a, limits, n) for n, a in enumerate(arrays, start=1)]
        )
        notes += [note for ref in encoded for note in ref.notes]
    else:
        encoded = []
    body = build_body(opts, checked, [ref.data_uri for ref in encoded])

    client = CometAPIClient(settings)
    progress.text(f"Generating with {checked.spec.label}")
    progress.update(1, 100)
    answer = await interruptible(client.generate(body))

    good = [item for item in answer.items if item.ok]
    failed = [item for item in answer.items if not item.ok]
    if not good:
        raise ServiceError(f"No image was generated ({_describe_failures(failed) or 'empty answer'}).")
    if opts.max_images and len(good) < opts.max_images:
        notes.append(
            f"{len(good)} of up to {opts.max_images} images came back: in sequential mode the model "
            "decides how many to make; say the number in the prompt (e.g. 'a series of 4 images')."
        )
    if failed:
        notes.append(f"Failed and not billed: {_describe_failures(failed)}.")

    results: dict[int, np.ndarray] = {}
    fetch_errors: dict[int, str] = {}

    async def fetch(item: ResultItem) -> None:
        try:
            results[item.index] = await _fetch_image(client, item)
        except SeedreamError as exc:
            fetch_errors[item.index] = str(exc)
            logger.warning("Result %d of %s could not be fetched: %s", item.index + 1, answer.model, exc)
        progress.text(f"Downloaded {len(results) + len(fetch_errors)} of {len(good)}")
        progress.update(len(results) + len(fetch_errors), len(good))

    progress.text(f"Downloading {len(good)} image{'s' * (len(good) > 1)}")
    await interruptible(asyncio.gather(*(fetch(item) for item in good)))
    if not results:
        links = "; ".join(item.url for item in good if item.url)
        raise DownloadError(
            f"{len(good)} image(s) were generated (and billed) but none could be fetched: "
            f"{'; '.join(fetch_errors.values())}. "
            + (f"The links stay valid for 24 hours: {links}" if links else "")
        )

    if fetch_errors:
        notes.append(
            f"{len(fetch_errors)} generated (billed) image(s) could not be fetched; their links are "
            "in `images` below and stay valid for 24 hours."
        )
    image_list = [array_to_tensor(results[index]) for index in sorted(results)]
    batch, resized = batch_images(image_list)
    if resized:
        notes.append(
            f"Images {', '.join(str(i + 1) for i in resized)} differ in size from the first and were "
            "fitted to it in the `images` batch; `image_list` has them at their own size."
        )
    info = _info(opts, body, answer, encoded, fetch_errors, notes)
    progress.text(f"Done: {len(results)} image{'s' * (len(results) > 1)}")
    return GenerationResult(images=batch, image_list=image_list, info=info)
