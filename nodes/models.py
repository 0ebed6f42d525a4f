"""The model table: what each Seedream model accepts, and the size choices offered.

The built-in table is `models.json` beside this file. A user adds or corrects a model without a
code change in `models.json` of the config folder (see README): an entry may name an existing
model under `"like"` and override only what differs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from .config import MODELS_FILE_NAME, config_dir
from .errors import ConfigurationError, InputError

_TABLE_PATH = Path(__file__).with_name("models.json")


@dataclass(frozen=True)
class ModelSpec:
    id: str
    label: str
    max_references: int
    size_presets: tuple[str, ...]
    min_pixels: int
    max_pixels: int
    min_side: int
    max_side: int
    min_aspect: float
    max_aspect: float
    sequential: bool
    max_images_total: int
    output_format: bool
    guidance_scale: bool
    seed: bool
    optimize_prompt_modes: tuple[str, ...]
    web_search: bool
    stream: bool  # answers as server-sent events, one per image as it is done
    price_per_image: float | None  # USD, an estimate; None: unknown


@dataclass(frozen=True)
class ReferenceLimits:
    min_side_exclusive: int
    min_aspect: float
    max_aspect: float
    max_pixels: int
    max_bytes: int


@dataclass(frozen=True)
class ModelTable:
    models: dict[str, ModelSpec]
    recommended_sizes: dict[str, tuple[str, ...]]
    reference_limits: ReferenceLimits

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(self.models)
            raise InputError(
                f"Unknown model {model_id!r}. Known models: {known}. A new model id can be added "
                f"in {config_dir() / MODELS_FILE_NAME} (see README)."
            ) from None


_SPEC_FIELDS = {f.name for f in fields(ModelSpec)} - {"id"}


def _build_spec(model_id: str, entry: dict[str, Any], defaults: dict[str, Any], where: str) -> ModelSpec:
    unknown = set(entry) - _SPEC_FIELDS - {"like"}
    if unknown:
        raise ConfigurationError(f"{where}: model {model_id!r} has unknown fields {sorted(unknown)}.")
    values = {**defaults, "label": model_id, **entry}
    price = values["price_per_image"]
    if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0):
        raise ConfigurationError(f"{where}: model {model_id!r} has price_per_image {price!r}: a number of USD or null.")
    values.pop("like", None)
    for name in ("size_presets", "optimize_prompt_modes"):
        values[name] = tuple(values[name])
    return ModelSpec(id=model_id, **{k: values[k] for k in _SPEC_FIELDS})


def _merge_user_models(builtin: dict[str, dict[str, Any]], path: Path) -> dict[str, dict[str, Any]]:
    try:
        user = json.loads(path.read_text(encoding="utf-8"))
        user_models = user["models"]
        if not isinstance(user_models, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigurationError(
            f'{path} must be JSON like {{"models": {{"<model id>": {{"like": "<known id>", ...}}}}}}.'
        ) from None
    merged = dict(builtin)
    for model_id, entry in user_models.items():
        base = merged.get(entry.get("like") or model_id, {})
        if entry.get("like") and entry["like"] not in merged:
            raise ConfigurationError(f"{path}: model {model_id!r} is like unknown model {entry['like']!r}.")
        merged[model_id] = {**base, **{k: v for k, v in entry.items() if k != "like"}}
    return merged


@lru_cache(maxsize=1)
def load_table() -> ModelTable:
    """The built-in table merged with the user's `models.json`; read once per process."""
    data = json.loads(_TABLE_PATH.read_text(encoding="utf-8"))
    entries: dict[str, dict[str, Any]] = data["models"]
    user_path = config_dir() / MODELS_FILE_NAME
    if user_path.is_file():
        entries = _merge_user_models(entries, user_path)
    where = str(user_path) if user_path.is_file() else str(_TABLE_PATH)
    return ModelTable(
        models={mid: _build_spec(mid, e, data["defaults"], where) for mid, e in entries.items()},
        recommended_sizes={k: tuple(v) for k, v in data["recommended_sizes"].items()},
        reference_limits=ReferenceLimits(**data["reference_limits"]),
    )


# --- size choices -------------------------------------------------------------------------

CUSTOM_SIZE = "custom"
_NAMED_RATIOS = ((1, 1), (3, 4), (4, 3), (16, 9), (9, 16), (2, 3), (3, 2), (21, 9), (9, 21))


def aspect_label(width: int, height: int) -> str:
    """The nearest common ratio name, e.g. 2848x1600 -> '16:9'."""
    ratio = width / height
    w, h = min(_NAMED_RATIOS, key=lambda r: abs(math.log(ratio * r[1] / r[0])))
    return f"{w}:{h}"


def size_choices(table: ModelTable | None = None) -> list[str]:
    """The `size` widget's options: preset keywords, the recommended sizes, then `custom`."""
    table = table or load_table()
    presets = list(table.recommended_sizes)
    default_first = sorted(presets, key=lambda p: p != "2K")
    choices = list(default_first)
    for preset in default_first:
        for wxh in table.recommended_sizes[preset]:
            w, h = (int(v) for v in wxh.split("x"))
            choices.append(f"{wxh} ({aspect_label(w, h)})")
    choices.append(CUSTOM_SIZE)
    return choices


DEFAULT_SIZE = "2048x2048 (1:1)"


def parse_size_choice(choice: str, width: int, height: int) -> tuple[str | None, int, int]:
    """Split a `size` widget value into (preset keyword or None, width, height).

    For a preset keyword width and height are 0; `custom` takes the width and height inputs.
    """
    choice = choice.strip()
    if choice == CUSTOM_SIZE:
        return None, int(width), int(height)
    head = choice.split(" ", 1)[0]
    if "x" in head:
        w, _, h = head.partition("x")
        if w.isdigit() and h.isdigit():
            return None, int(w), int(h)
    if head.upper().endswith("K") and head[:-1].isdigit():
        return head.upper(), 0, 0
    raise InputError(
        f"Size {choice!r} is not understood: choose a preset such as 2K, a size such as "
        "2048x2048, or 'custom' with width and height."
    )
