"""What the user asked for, checked against the model table, and the JSON body sent for it.

Everything the service would reject, and everything that would waste money, is caught here,
before any network call, with a message that says what to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .models import ModelSpec, ModelTable, parse_size_choice

RESPONSE_FORMATS = ("url", "b64_json")
OUTPUT_FORMATS = ("jpeg", "png")
OPTIMIZE_PROMPT_MODES = ("standard", "fast")
MAX_SEED = 2147483647
# The service recommends at most about 1000 English or 300 Chinese characters.
PROMPT_SOFT_LIMIT_LATIN = 1000
PROMPT_SOFT_LIMIT_CJK = 300


@dataclass(frozen=True)
class GenerationOptions:
    """The node's inputs that shape one request (references travel separately)."""

    model: str
    prompt: str
    size: str
    width: int = 2048
    height: int = 2048
    seed: int = 0
    watermark: bool = False
    response_format: str = "url"
    output_format: str = "jpeg"
    guidance_scale: float = 2.5
    optimize_prompt: str = "standard"
    web_search: bool = False
    max_images: int | None = None  # set: sequential generation of up to this many images


@dataclass
class CheckedRequest:
    spec: ModelSpec
    size: str  # as sent: a preset keyword or "WxH"
    notes: list[str] = field(default_factory=list)


def _ratio_text(value: float) -> str:
    return f"1/{1 / value:g}" if value < 1 else f"{value:g}"


def _aspect_problem(width: int, height: int, lowest: float, highest: float) -> str | None:
    aspect = width / height
    if lowest <= aspect <= highest:
        return None
    return f"a width/height ratio of {aspect:.3g}; accepted: {_ratio_text(lowest)} to {_ratio_text(highest)}"


def _check_size(opts: GenerationOptions, spec: ModelSpec) -> str:
    preset, width, height = parse_size_choice(opts.size, opts.width, opts.height)
    if preset:
        if preset not in spec.size_presets:
            accepted = ", ".join(spec.size_presets) or "none (give an exact size such as 1024x1024)"
            raise InputError(
                f"{spec.label} does not accept size {preset}. Its presets: {accepted}; or choose "
                f"an exact size between {spec.min_pixels:,} and {spec.max_pixels:,} pixels."
            )
        return preset
    if width <= 0 or height <= 0:
        raise InputError("With size 'custom', set width and height.")
    pixels = width * height
    where = f"Size {width}x{height} ({pixels:,} pixels)"
    if not spec.min_pixels <= pixels <= spec.max_pixels:
        side_lo, side_hi = math.isqrt(spec.min_pixels - 1) + 1, math.isqrt(spec.max_pixels)
        raise InputError(
            f"{where} is outside what {spec.label} accepts: {spec.min_pixels:,} to "
            f"{spec.max_pixels:,} pixels (for a square, {side_lo}x{side_lo} to {side_hi}x{side_hi})."
        )
    if not (spec.min_side <= width <= spec.max_side and spec.min_side <= height <= spec.max_side):
        raise InputError(
            f"{where}: {spec.label} takes width and height from {spec.min_side} to {spec.max_side}."
        )
    problem = _aspect_problem(width, height, spec.min_aspect, spec.max_aspect)
    if problem:
        raise InputError(f"{where} has {problem} ({spec.label}).")
    return f"{width}x{height}"


def _check_prompt(prompt: str, notes: list[str]) -> None:
    if not prompt.strip():
        raise InputError("The prompt is empty: describe the image to generate.")
    cjk = sum(1 for ch in prompt if "\u3400" <= ch <= "\u9fff")
    if cjk > PROMPT_SOFT_LIMIT_CJK or len(prompt) - cjk > PROMPT_SOFT_LIMIT_LATIN:
        notes.append(
            "The prompt is longer than the service recommends (about 300 Chinese or 1000 English "
            "characters); details at the end may be ignored."
        )


def _check_references(
    spec: ModelSpec, table: ModelTable, reference_sizes: list[tuple[int, int]], max_images: int | None
) -> None:
    count = len(reference_sizes)
    if count > spec.max_references:
        if spec.max_references == 0:
            raise InputError(f"{spec.label} takes no reference images: disconnect them or choose another model.")
        raise InputError(
            f"{count} reference images are connected, but {spec.label} takes at most "
            f"{spec.max_references}. Each image of a batch counts as one reference."
        )
    outputs = max_images if max_images is not None else 1
    if count + outputs > spec.max_images_total:
        raise InputError(
            f"{count} references + max_images {outputs} = {count + outputs}, but references and "
            f"generated images together may be at most {spec.max_images_total}: set max_images to "
            f"{max(spec.max_images_total - count, 0)} or fewer, or use fewer references."
        )
    limits = table.reference_limits
    for number, (width, height) in enumerate(reference_sizes, start=1):
        if min(width, height) <= limits.min_side_exclusive:
            raise InputError(
                f"Reference image {number} is {width}x{height}: each side must be larger than "
                f"{limits.min_side_exclusive} pixels."
            )
        problem = _aspect_problem(width, height, limits.min_aspect, limits.max_aspect)
        if problem:
            raise InputError(f"Reference image {number} is {width}x{height}, {problem}. Crop or pad it first.")


def check_request(
    opts: GenerationOptions, table: ModelTable, reference_sizes: list[tuple[int, int]]
) -> CheckedRequest:
    """Check `opts` and the reference sizes against the model; raise `InputError` on a problem."""
    spec = table.get(opts.model)
    checked = CheckedRequest(spec=spec, size=_check_size(opts, spec))
    _check_prompt(opts.prompt, checked.notes)
    if opts.max_images is not None:
        if not spec.sequential:
            capable = [m.id for m in table.models.values() if m.sequential]
            raise InputError(
                f"{spec.label} cannot generate image sequences. Choose one of: {', '.join(capable)}."
            )
        if not 1 <= opts.max_images <= spec.max_images_total:
            raise InputError(f"max_images must be between 1 and {spec.max_images_total}.")
    _check_references(spec, table, reference_sizes, opts.max_images)
    if opts.response_format not in RESPONSE_FORMATS:
        raise InputError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}.")
    if opts.output_format not in OUTPUT_FORMATS:
        raise InputError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}.")
    if opts.optimize_prompt not in OPTIMIZE_PROMPT_MODES:
        raise InputError(f"optimize_prompt must be one of {', '.join(OPTIMIZE_PROMPT_MODES)}.")
    if opts.optimize_prompt != "standard" and opts.optimize_prompt not in spec.optimize_prompt_modes:
        raise InputError(
            f"{spec.label} does not offer optimize_prompt {opts.optimize_prompt!r}: set it to 'standard'."
        )
    if opts.web_search and not spec.web_search:
        raise InputError(f"{spec.label} has no web search: turn web_search off.")
    if not 0 <= opts.seed <= MAX_SEED:
        raise InputError(f"seed must be between 0 and {MAX_SEED}.")
    if opts.output_format != "jpeg" and not spec.output_format:
        checked.notes.append(f"{spec.label} always returns JPEG; output_format {opts.output_format} was not sent.")
    return checked


def build_body(opts: GenerationOptions, checked: CheckedRequest, images: list[str]) -> dict[str, Any]:
    """The JSON body for `POST /images/generations`: only fields this model accepts.

    `watermark` is always sent because the provider's default is true; in sequential mode
    `max_images` is always sent because the provider's default is 15.
    """
    spec = checked.spec
    body: dict[str, Any] = {
        "model": spec.id,
        "prompt": opts.prompt,
        "size": checked.size,
        "response_format": opts.response_format,
        "watermark": bool(opts.watermark),
    }
    if images:
        body["image"] = images
    if opts.max_images is not None:
        body["sequential_image_generation"] = "auto"
        body["sequential_image_generation_options"] = {"max_images": opts.max_images}
    elif spec.sequential:
        body["sequential_image_generation"] = "disabled"
    if spec.output_format:
        body["output_format"] = opts.output_format
    if spec.guidance_scale:
        body["guidance_scale"] = round(float(opts.guidance_scale), 2)
    if spec.seed:
        body["seed"] = int(opts.seed)
    if spec.optimize_prompt_modes:
        body["optimize_prompt_options"] = {"mode": opts.optimize_prompt}
    if opts.web_search and spec.web_search:
        body["tools"] = [{"type": "web_search"}]
    if spec.stream:
        body["stream"] = True  # each image of a group arrives (and is saved) as soon as it is done
    return body
