"""Small previews of results, shown on the node while the run goes on."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

PREVIEW_SIDE = 512


def preview_tuple(data: bytes) -> tuple[str, Image.Image, int] | None:
    """ComfyUI's preview `(format, image, max side)` for an encoded result, or None if it will not
    open (the full decode reports why). JPEG is decoded at a reduced scale: a few milliseconds."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (PREVIEW_SIDE, PREVIEW_SIDE))
            small: Any = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return "JPEG", small, PREVIEW_SIDE
