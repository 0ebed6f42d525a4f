"""One Seedream run from inputs to output tensors: check, encode, call, record, fetch, decode.

Plain logic: ComfyUI's services are reached only through `host`, so this runs (and is tested)
without ComfyUI.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from . import ledger
from .client import (
    CometAPIClient,
    GenerationAnswer,
    ResultItem,
    decode_b64,
    download,
    generation_timeout,
)
from .config import Settings, load_settings
from .errors import InputError, SeedreamError, ServiceError, logger, redact
from .host import Progress, interruptible
from .images import REFERENCE_FORMATS, WORKERS, EncodedReference, ResultBatch, encode_reference, split_frames
from .models import ModelSpec, ReferenceLimits, load_table
from .preview import preview_tuple
from .request import CheckedRequest, GenerationOptions, build_body, check_request

DISPLAYED_INFO = ("model", "seconds", "requested_images", "generated_images", "failed_images", "images", "usage",
                  "estimated_cost_usd", "ledger_entry", "notes")


@dataclass
class GenerationResult:
    images: torch.Tensor  # one batch; images of another size are fitted to the first
    image_list: list[torch.Tensor]  # every image at its own size, [1, H, W, 3] each
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def info_json(self) -> str:
        return redact(json.dumps(self.info, indent=2, ensure_ascii=False))

    def node_output(self) -> dict[str, Any]:
        """What the node returns: the outputs, and (under `ui`) what the web extension shows on
        the node after the run: count, sizes, usage, cost, links and when they expire, notes."""
        info = json.loads(self.info_json)
        shown = {key: info[key] for key in DISPLAYED_INFO if key in info}
        return {"ui": {"seedream": [shown]}, "result": (self.images, self.image_list, self.info_json)}


@dataclass
class RunSettings:
    """How one run behaves, beyond what is sent."""

    timeout_seconds: float | None = None  # None: grows with the number of images asked for
    fail_on_partial: bool = False
    reference_format: str = "jpeg"  # or "png": lossless, larger and slower


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' * (count != 1)}"


def _describe_failures(items: list[ResultItem], fetch_errors: dict[int, str] | None = None) -> str:
    """'image 2: Code message; image 3: message' without trailing full stops."""
    parts = {i.index: f"{i.error_code} {i.error_message}" for i in items} | (fetch_errors or {})
    return "; ".join(f"image {index + 1}: {text.strip().rstrip('.')}" for index, text in sorted(parts.items()))


class _StatusLine:
    """A node's `Progress` whose text also says how long the run has taken, refreshed every second
    by `tick` while the service works (it sends nothing for up to minutes)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.phase = ""
        self.started = time.monotonic()
        self.active = progress.active
        self.update = progress.update

    def text(self, phase: str) -> None:
        self.phase = phase
        self.progress.text(f"{phase} · {time.monotonic() - self.started:.0f} s")

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.text(self.phase)


async def fetch_images(
    sources: dict[int, str | bytes],
    declared_sizes: dict[int, str | None],
    progress: Progress | _StatusLine,
    previews: bool = True,
) -> tuple[ResultBatch, dict[int, str]]:
    """Download (links) or take (bytes) every image at once, decoding each on a worker thread as
    soon as it arrives; return the collected images and the errors by index. One failure does not
    stop the others. With `previews`, each image is shown on the node as it is done."""
    collected = ResultBatch(declared_sizes)
    errors: dict[int, str] = {}
    loop = asyncio.get_running_loop()

    async def fetch(index: int, source: str | bytes) -> None:
        preview = None
        try:
            data = source if isinstance(source, bytes) else await download(source)
            await loop.run_in_executor(WORKERS, collected.add, index, data)
            if previews:
                preview = await _preview(progress, data)
        except Exception as exc:  # whatever fails, the answer stays recoverable from the ledger
            errors[index] = _error_text(exc)
            logger.warning("Result %d could not be fetched: %s", index + 1, errors[index])
        done = len(collected) + len(errors)
        progress.text(f"{'Downloaded' if links else 'Decoded'} {done} of {len(sources)}")
        progress.update(done, len(sources), preview)

    links = any(isinstance(source, str) for source in sources.values())
    progress.text(f"{'Downloading' if links else 'Decoding'} {_plural(len(sources), 'image')}")
    await interruptible(asyncio.gather(*(fetch(index, source) for index, source in sources.items())))
    return collected, errors


async def _preview(progress: Progress | _StatusLine, data: bytes) -> tuple[str, Any, int] | None:
    """The node's preview of a result, made (on a worker) only when something shows it."""
    if not progress.active:
        return None
    return await asyncio.get_running_loop().run_in_executor(WORKERS, preview_tuple, data)


def _error_text(exc: Exception) -> str:
    return str(exc) if isinstance(exc, SeedreamError) else f"{type(exc).__name__}: {exc}"


class _Arrivals:
    """The images of an answer as they arrive (all at once, or one by one from a stream): each is
    written to the ledger before anything else happens to it; a streamed link is downloaded at once
    and shown as a preview while the rest of the group is still being made."""

    def __init__(self, summary: dict[str, Any], prompt: str, notes: list[str], status: _StatusLine,
                 expected: int, label: str) -> None:
        self.summary, self.prompt, self.notes = summary, prompt, notes
        self.status, self.expected, self.label = status, expected, label
        self.entry: ledger.LedgerEntry | None = None
        self.seen = 0
        self.inline: dict[int, bytes | str] = {}
        self.sources: dict[int, str | bytes] = {}
        self.errors: dict[int, str] = {}
        self.early: dict[int, asyncio.Task[bytes]] = {}
        self.fetched_early = 0

    def streamed(self, answer: GenerationAnswer, item: ResultItem) -> None:
        """One image of a stream, as soon as its event arrives."""
        self._take(answer)
        if item.index in self.sources:
            self.early[item.index] = asyncio.ensure_future(self._fetch_early(self.sources[item.index]))
        made = sum(i.ok for i in answer.items)
        self.status.text(f"Generating with {self.label}: {made} of up to {self.expected} done")

    def complete(self, answer: GenerationAnswer) -> None:
        """The whole answer: anything a stream did not hand over one by one (all of a plain answer)."""
        if len(answer.items) > self.seen:
            self._take(answer)

    def _take(self, answer: GenerationAnswer) -> None:
        for item in answer.items[self.seen :]:
            if item.url:
                self.sources[item.index] = item.url
            elif item.ok:
                try:
                    self.sources[item.index] = self.inline[item.index] = decode_b64(item.b64_json or "")
                except SeedreamError as exc:
                    self.inline[item.index] = item.b64_json or ""  # kept as received: paid for, maybe recoverable
                    self.errors[item.index] = str(exc)
        self.seen = len(answer.items)
        if any(item.ok for item in answer.items):
            self.entry = _record(answer, self.summary, self.prompt, self.inline, self.notes, self.entry)

    async def _fetch_early(self, source: str | bytes) -> bytes:
        data = source if isinstance(source, bytes) else await download(source)
        preview = await _preview(self.status, data)
        self.fetched_early += 1
        self.status.update(self.fetched_early, self.expected, preview)
        return data

    async def settle_early_downloads(self) -> None:
        """Replace streamed links by their downloaded bytes (or errors)."""
        for index, task in self.early.items():
            try:
                self.sources[index] = await task
            except Exception as exc:  # the link is in the ledger (download() already retried it)
                self.errors[index] = _error_text(exc)
                del self.sources[index]

    async def abandon(self) -> None:
        for task in self.early.values():
            task.cancel()
        await asyncio.gather(*self.early.values(), return_exceptions=True)


def _outputs(collected: ResultBatch, info: dict[str, Any]) -> GenerationResult:
    batch, image_list, resized = collected.finish()
    if resized:
        info["notes"].append(
            f"Images {', '.join(str(i + 1) for i in resized)} differ in size from the first and were "
            "fitted to it in the `images` batch; `image_list` has them at their own size."
        )
    return GenerationResult(images=batch, image_list=image_list, info=info)


def _recovery_hint(entry: ledger.LedgerEntry | None, links: list[str]) -> str:
    if entry is None:
        return f" The ledger could not be written; the links (valid 24 hours): {' '.join(links)}" if links else ""
    return (
        f" The answer is saved in the ledger as {entry.id} ({entry.path}): load it with "
        "'Seedream Load from Ledger' while its links live (24 hours)."
    )


def _request_summary(body: dict[str, Any], references: list[EncodedReference]) -> dict[str, Any]:
    summary = {key: value for key, value in body.items() if key not in ("prompt", "image")}
    if references:
        summary["references"] = [
            {"sent": f"{r.width}x{r.height}", "source": f"{r.source_width}x{r.source_height}", "bytes": r.encoded_bytes}
            for r in references
        ]
    return summary


def _record(
    answer: GenerationAnswer,
    summary: dict[str, Any],
    prompt: str,
    inline: dict[int, bytes | str],
    notes: list[str],
    entry: ledger.LedgerEntry | None,
) -> ledger.LedgerEntry | None:
    try:
        return ledger.record_answer(answer, summary, prompt, inline, entry)
    except OSError as exc:
        links = [item.url for item in answer.items if item.url]
        note = f"The answer could not be written to the ledger ({exc}): keep `info`, it has the links."
        if note not in notes:  # a stream records once per image
            notes.append(note)
        logger.error("Could not write the Seedream ledger in %s (%s). Links: %s", ledger.ledger_dir(), exc, links)
        return entry


def estimated_cost(spec: ModelSpec, images: int) -> float | None:
    """USD, from the model table's price per image; None when the price is unknown."""
    return None if spec.price_per_image is None else round(spec.price_per_image * images, 4)


async def _encode_references(frames: list[torch.Tensor], run: RunSettings, status: _StatusLine,
                             limits: ReferenceLimits) -> list[EncodedReference]:
    if not frames:
        return []
    status.text(f"Preparing {_plural(len(frames), 'reference image')}")
    loop = asyncio.get_running_loop()
    return await interruptible(
        asyncio.gather(
            *(
                loop.run_in_executor(WORKERS, encode_reference, frame, limits, number, run.reference_format)
                for number, frame in enumerate(frames, start=1)
            )
        )
    )


async def generate(
    opts: GenerationOptions,
    references: list[torch.Tensor],
    *,
    node_id: str | None = None,
    settings: Settings | None = None,
    run: RunSettings | None = None,
) -> GenerationResult:
    """Run one generation. Raises `SeedreamError` subclasses with user-facing messages."""
    run = run or RunSettings()
    table = load_table()
    frames = [frame for batch in references for frame in split_frames(batch)]
    checked = check_request(opts, table, [(frame.shape[1], frame.shape[0]) for frame in frames])
    settings = settings or load_settings()
    if settings.api_key in opts.prompt:
        raise InputError("The prompt contains your CometAPI key: remove it (nothing was sent).")
    if run.reference_format not in REFERENCE_FORMATS:
        raise InputError(f"reference_format must be one of {', '.join(REFERENCE_FORMATS)}.")
    progress = Progress(node_id)
    status = _StatusLine(progress)
    ticker = asyncio.ensure_future(status.tick())
    try:
        return await _generate(opts, checked, frames, settings, run, status)
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)


async def _generate(opts: GenerationOptions, checked: CheckedRequest, frames: list[torch.Tensor],
                    settings: Settings, run: RunSettings, status: _StatusLine) -> GenerationResult:
    spec = checked.spec
    notes = list(checked.notes)
    encoded = await _encode_references(frames, run, status, load_table().reference_limits)
    notes += [note for ref in encoded for note in ref.notes]
    body = build_body(opts, checked, [ref.data_uri for ref in encoded])
    expected = opts.max_images or 1
    generating = f"Generating with {spec.label}"
    if encoded:
        megabytes = sum(ref.encoded_bytes for ref in encoded) / 1e6
        status.text(f"Uploading {_plural(len(encoded), 'reference')} ({megabytes:.1f} MB)")
    else:
        status.text(generating)
    summary = _request_summary(body, encoded)
    arrivals = _Arrivals(summary, opts.prompt, notes, status, expected, spec.label)
    client = CometAPIClient(settings)
    try:
        answer = await interruptible(
            client.generate(body, generation_timeout(expected, run.timeout_seconds),
                            on_item=arrivals.streamed, on_sent=lambda: status.text(generating))
        )
        arrivals.complete(answer)
        await interruptible(arrivals.settle_early_downloads())
    except BaseException as exc:
        await arrivals.abandon()
        if client.sent and not isinstance(exc, SeedreamError):  # Cancel while the service worked
            logger.warning("Seedream run cancelled after the request was sent: CometAPI may still bill it.%s",
                           f" Received so far: ledger entry {arrivals.entry.id}." if arrivals.entry else "")
        raise

    good = [item for item in answer.items if item.ok]
    failed = [item for item in answer.items if not item.ok]
    entry = arrivals.entry
    links = [item.url for item in good if item.url]
    if answer.broken:
        notes.append(
            f"The answer stopped early ({answer.broken}) after {_plural(len(answer.items), 'image')}: any "
            f"later image may still have been made and billed; check the usage log.{_recovery_hint(entry, links)}"
        )
        logger.warning("Seedream answer incomplete: %s", answer.broken)
    if not good:
        raise ServiceError(
            f"No image was generated, so nothing was billed ({_describe_failures(failed) or 'empty answer'})."
        )
    if opts.max_images and len(good) < opts.max_images:
        notes.append(
            f"{len(good)} of up to {opts.max_images} images came back: in sequential mode the model "
            "decides how many to make; say the number in the prompt (e.g. 'a series of 4 images')."
        )
    if failed:
        notes.append(f"Failed and not billed: {_describe_failures(failed)}.")

    results, download_errors = await fetch_images(
        arrivals.sources, {item.index: item.size for item in good if item.index in arrivals.sources},
        status, previews=not arrivals.early,
    )
    fetch_errors = arrivals.errors | download_errors
    if entry:
        try:
            ledger.record_outcome(entry, answer, fetch_errors)
        except OSError as exc:
            notes.append(f"The ledger entry {entry.id} could not be updated ({exc}); it still has the answer.")
    if not results:
        raise SeedreamError(
            f"{_plural(len(good), 'image')} {'was' if len(good) == 1 else 'were'} generated (and billed) but "
            f"could not be fetched: {_describe_failures([], fetch_errors)}.{_recovery_hint(entry, links)}"
        )
    if fetch_errors:
        lost = _plural(len(fetch_errors), "generated (billed) image")
        notes.append(f"{lost} could not be fetched.{_recovery_hint(entry, links)}")
    if run.fail_on_partial and (failed or fetch_errors):
        raise SeedreamError(
            f"fail_on_partial is on and {len(failed) + len(fetch_errors)} of {len(answer.items)} images failed: "
            f"{_describe_failures(failed, fetch_errors)}.{_recovery_hint(entry, links)}"
        )

    billed = int(answer.usage.get("generated_images", len(good)) or 0)
    info = {
        "model": answer.model or body["model"],
        "created": ledger.iso_time(answer.created),
        "seconds": round(time.monotonic() - status.started, 1),
        "prompt": opts.prompt,
        "request": summary,
        "requested_images": expected,
        "generated_images": len(good),
        "failed_images": len(failed),
        "images": entry.data["images"] if entry else ledger.image_records(answer),
        "usage": answer.usage,
        "estimated_cost_usd": estimated_cost(spec, billed),
        "ledger_entry": entry.id if entry else None,
        "notes": notes,
    }
    status.text(f"Done: {_plural(len(results), 'image')}")
    return _outputs(results, info)


async def load_from_ledger(entry_id: str, *, node_id: str | None = None) -> GenerationResult:
    """Turn a ledger entry back into images: saved files, and links that have not expired."""
    entry = ledger.load_entry(entry_id)
    progress = Progress(node_id)
    now = time.time()
    sources: dict[int, str | bytes] = {}
    notes: list[str] = []
    for image in entry.data["images"]:
        if "file" in image:
            path = entry.image_file(image["file"])
            try:
                data = path.read_bytes()
                sources[image["index"]] = decode_b64(data.decode("ascii", "replace")) if path.suffix == ".txt" else data
            except (OSError, SeedreamError) as exc:
                notes.append(f"Image {image['index'] + 1}: {path} could not be used ({exc}).")
        elif "url" in image:
            expires = calendar.timegm(time.strptime(image["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
            if expires <= now:
                notes.append(f"Image {image['index'] + 1}: its link expired at {image['expires_at']}.")
            else:
                sources[image["index"]] = image["url"]
    declared = {image["index"]: image.get("size") for image in entry.data["images"] if image["index"] in sources}
    results, errors = await fetch_images(sources, declared, progress)
    notes += [f"Image {index + 1}: {message}" for index, message in errors.items()]
    if not results:
        raise SeedreamError(
            f"Nothing could be recovered from ledger entry {entry.id}: {' '.join(notes) or 'it holds no image'}"
        )
    return _outputs(results, {**entry.data, "ledger_entry": entry.id, "notes": notes})
