"""The three Seedream nodes. Thin: inputs become `GenerationOptions`, `generation` does the rest.

Node ids and input names are a public contract (saved workflows refer to them): never rename.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import SeedreamError
from .generation import RunSettings, generate, load_from_ledger
from .images import REFERENCE_FORMATS
from .ledger import LATEST, entry_ids, load_entry
from .models import DEFAULT_SIZE, ModelSpec, load_table, size_choices
from .request import (
    MAX_SEED,
    OPTIMIZE_PROMPT_MODES,
    OUTPUT_FORMATS,
    RESPONSE_FORMATS,
    GenerationOptions,
    check_request,
)

CATEGORY = "api node/image/Seedream (CometAPI)"
MAX_REFERENCE_INPUTS = 14
DEFAULT_MODEL = "doubao-seedream-4-5-251128"
DEFAULT_MAX_IMAGES = 4


def _model_input(models: list[str]) -> tuple[list[str], dict[str, Any]]:
    default = DEFAULT_MODEL if DEFAULT_MODEL in models else models[0]
    return models, {
        "default": default,
        "tooltip": "CometAPI model id. Limits (sizes, references, options) follow the model; "
        "new ids can be added in the pack's models.json (see README).",
    }


def _reference_inputs(numbers: range) -> dict[str, Any]:
    return {
        f"image_{n}": ("IMAGE", {
            "tooltip": f"Reference image {n}. A batch counts as several references; all references "
            "together may not exceed the model's limit (14 for most models, 10 for 5.0 pro)."
        })
        for n in numbers
    }


def _widgets_before_images(models: list[str]) -> dict[str, Any]:
    return {
        "prompt": ("STRING", {
            "multiline": True,
            "default": "",
            "tooltip": "What to generate or how to edit, in English or Chinese "
            "(about 1000 English or 300 Chinese characters at most).",
        }),
        "model": _model_input(models),
        "size": (size_choices(), {
            "default": DEFAULT_SIZE,
            "tooltip": "Output size. A preset (1K to 4K) lets the model choose the aspect ratio from "
            "the prompt; WxH is exact; 'custom' uses width and height. Not every model takes every size.",
        }),
        "width": ("INT", {"default": 2048, "min": 64, "max": 16384, "step": 8,
                          "tooltip": "Output width in pixels, used when size is 'custom'."}),
        "height": ("INT", {"default": 2048, "min": 64, "max": 16384, "step": 8,
                           "tooltip": "Output height in pixels, used when size is 'custom'."}),
    }


def _seed_and_watermark() -> dict[str, Any]:
    return {
        "seed": ("INT", {
            "default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
            "tooltip": "Same seed and inputs: ComfyUI reuses the last result at no cost. A new seed runs "
            "(and bills) again. Only Seedream 3.0 uses it for generation.",
        }),
        "watermark": ("BOOLEAN", {
            "default": False,
            "tooltip": "Add the 'AI generated' mark in the corner. Always sent (the service's default is on).",
        }),
    }


def _service_options() -> dict[str, Any]:
    return {
        "response_format": (list(RESPONSE_FORMATS), {
            "default": "url", "advanced": True,
            "tooltip": "url: the service returns 24-hour links, downloaded at once (the links are in `info`). "
            "b64_json: the images come inside the answer, no links.",
        }),
        "output_format": (list(OUTPUT_FORMATS), {
            "default": "jpeg", "advanced": True,
            "tooltip": "File format of the results; only Seedream 5.0 models honour it (4.x return JPEG).",
        }),
        "guidance_scale": ("FLOAT", {
            "default": 2.5, "min": 1.0, "max": 10.0, "step": 0.1, "advanced": True,
            "tooltip": "How closely to follow the prompt; only Seedream 3.0 uses it (not sent to others).",
        }),
        "optimize_prompt": (list(OPTIMIZE_PROMPT_MODES), {
            "default": "standard", "advanced": True,
            "tooltip": "Prompt optimisation: 'fast' is quicker and only offered by Seedream 4.0 and 5.0 pro.",
        }),
        "web_search": ("BOOLEAN", {
            "default": False, "advanced": True,
            "tooltip": "Let the model search the web for up-to-date facts (Seedream 5.0 lite only).",
        }),
    }


def _reference_format() -> dict[str, Any]:
    return {
        "reference_format": (list(REFERENCE_FORMATS), {
            "default": "jpeg", "advanced": True,
            "tooltip": "How references are sent. jpeg: quality 90 without chroma subsampling, several times "
            "smaller and 20x faster than PNG (PSNR near 50 dB on photos); png: lossless. "
            "Transparent images are always sent as PNG.",
        }),
    }


def _run_options() -> dict[str, Any]:
    return {
        "timeout": ("INT", {
            "default": 0, "min": 0, "max": 3600, "step": 10, "advanced": True,
            "tooltip": "Seconds to wait for the answer; 0 = automatic (2 minutes + 1 per image asked for). "
            "A request that times out may still be billed, so it is never sent again by itself.",
        }),
        "fail_on_partial": ("BOOLEAN", {
            "default": False, "advanced": True,
            "tooltip": "Off: images that succeeded come out and failures are listed in `info`. "
            "On: any failed image stops the graph with an error (the answer stays in the ledger).",
        }),
    }


SERVICE_OPTIONS = tuple(_service_options())


def _models(predicate: Callable[[ModelSpec], bool]) -> list[str]:
    return [spec.id for spec in load_table().models.values() if predicate(spec)]


class _SeedreamNode:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("images", "image_list", "info")
    OUTPUT_IS_LIST = (False, True, False)
    OUTPUT_TOOLTIPS = (
        "Every generated image as one batch; images of another size are fitted to the first.",
        "Every generated image at its own size, as a list.",
        "JSON: sizes, usage, the links and when they expire, per-image errors and notes.",
    )
    FUNCTION = "run"

    @classmethod
    def VALIDATE_INPUTS(cls, prompt: str | None = None, model: str | None = None, size: str | None = None,
                        width: int | None = None, height: int | None = None) -> bool | str:
        """Checked when the prompt is queued, before any node runs (and before anything upstream is
        billed). Linked inputs arrive as None and are checked when the node runs."""
        if None in (model, size, width, height):
            return True
        opts = GenerationOptions(model=model, prompt="-" if prompt is None else prompt, size=size,
                                 width=width, height=height)
        try:
            table = load_table()
            # Naming `model` here skips ComfyUI's own check that it is one of this node's models.
            spec = table.get(model)
            if not cls.takes_model(spec):
                return f"{spec.label} cannot be used in this node: choose one of {', '.join(_models(cls.takes_model))}."
            check_request(opts, table, [])
        except SeedreamError as exc:
            return str(exc)
        return True

    @staticmethod
    def takes_model(spec: ModelSpec) -> bool:
        """Which models this node offers."""
        return True

    async def run(self, prompt: str, model: str, size: str, width: int, height: int, seed: int,
                  watermark: bool, max_images: int | None = None, unique_id: str | None = None,
                  **optional: Any) -> dict[str, Any]:
        references = [optional[f"image_{n}"] for n in range(1, MAX_REFERENCE_INPUTS + 1)
                      if optional.get(f"image_{n}") is not None]
        opts = GenerationOptions(
            model=model, prompt=prompt, size=size, width=width, height=height, seed=seed,
            watermark=watermark, max_images=max_images,  # only the Sequential node has this input
            **{name: optional[name] for name in SERVICE_OPTIONS if name in optional},
        )
        run = RunSettings(timeout_seconds=optional.get("timeout") or None,
                          fail_on_partial=bool(optional.get("fail_on_partial", False)),
                          reference_format=optional.get("reference_format", "jpeg"))
        result = await generate(opts, references, node_id=unique_id, run=run)
        return result.node_output()


_HIDDEN = {"unique_id": "UNIQUE_ID"}


class SeedreamTextToImage(_SeedreamNode):
    DESCRIPTION = "Generate one image from a text prompt with ByteDance Seedream on CometAPI."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": _widgets_before_images(_models(cls.takes_model)) | _seed_and_watermark(),
            "optional": _service_options() | _run_options(),
            "hidden": _HIDDEN,
        }


class SeedreamImageToImage(_SeedreamNode):
    DESCRIPTION = ("Edit, restyle or combine reference images with a prompt (Seedream on CometAPI). "
                   "Refer to them in the prompt as 'image 1', 'image 2', ...")

    @staticmethod
    def takes_model(spec: ModelSpec) -> bool:
        return spec.max_references > 0

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": _reference_inputs(range(1, 2))
            | _widgets_before_images(_models(cls.takes_model))
            | _seed_and_watermark(),
            "optional": _reference_inputs(range(2, MAX_REFERENCE_INPUTS + 1)) | _service_options() | _run_options()
            | _reference_format(),
            "hidden": _HIDDEN,
        }


class SeedreamSequential(_SeedreamNode):
    DESCRIPTION = ("Generate a group of related images (storyboard, product set, variations) from one "
                   "prompt, with or without references (Seedream on CometAPI).")
    @staticmethod
    def takes_model(spec: ModelSpec) -> bool:
        return spec.sequential

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": _widgets_before_images(_models(cls.takes_model))
            | {"max_images": ("INT", {
                "default": DEFAULT_MAX_IMAGES, "min": 1, "max": 15,
                "tooltip": "The most images to make (each is billed). The model decides how many up to "
                "this: name the number in the prompt. References + max_images must be 15 or less.",
            })}
            | _seed_and_watermark(),
            "optional": _reference_inputs(range(1, MAX_REFERENCE_INPUTS + 1)) | _service_options() | _run_options()
            | _reference_format(),
            "hidden": _HIDDEN,
        }


class SeedreamLedger:
    """Recovers the images of an earlier answer from the ledger: saved files and live links."""

    CATEGORY = CATEGORY
    RETURN_TYPES = _SeedreamNode.RETURN_TYPES
    RETURN_NAMES = _SeedreamNode.RETURN_NAMES
    OUTPUT_IS_LIST = _SeedreamNode.OUTPUT_IS_LIST
    OUTPUT_TOOLTIPS = _SeedreamNode.OUTPUT_TOOLTIPS
    FUNCTION = "run"
    DESCRIPTION = ("Load the images of an earlier Seedream answer from the ledger (no new request, no cost): "
                   "after a failed download, a crash or a closed browser. Links live 24 hours.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"entry": ([LATEST, *entry_ids()], {
                "default": LATEST,
                "tooltip": "A ledger entry (date-time-id, newest first), or 'latest'. Entries named in an "
                "error message can be typed in a workflow even before the list is refreshed.",
            })},
            "hidden": _HIDDEN,
        }

    @classmethod
    def VALIDATE_INPUTS(cls, entry: str) -> bool | str:
        try:
            load_entry(entry)
        except SeedreamError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, entry: str, **hidden: Any) -> str:
        """'latest' means a different entry whenever a new answer was recorded."""
        ids = entry_ids() if entry == LATEST else []
        return ids[0] if ids else entry

    async def run(self, entry: str, unique_id: str | None = None) -> dict[str, Any]:
        result = await load_from_ledger(entry, node_id=unique_id)
        return result.node_output()


NODE_CLASS_MAPPINGS = {
    "CometAPISeedreamTextToImage": SeedreamTextToImage,
    "CometAPISeedreamImageToImage": SeedreamImageToImage,
    "CometAPISeedreamSequential": SeedreamSequential,
    "CometAPISeedreamLedger": SeedreamLedger,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CometAPISeedreamTextToImage": "Seedream Text to Image (CometAPI)",
    "CometAPISeedreamImageToImage": "Seedream Image to Image (CometAPI)",
    "CometAPISeedreamSequential": "Seedream Sequential Images (CometAPI)",
    "CometAPISeedreamLedger": "Seedream Load from Ledger (CometAPI)",
}
