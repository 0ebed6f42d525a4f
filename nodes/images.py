"""Tensors to request images and answers back to tensors. Knows nothing of ComfyUI or HTTP.

ComfyUI's IMAGE is a float tensor [B, H, W, C] in 0..1, C = 3 (sometimes 1 or 4), possibly
fp16/bf16 or on a GPU. Each image of a batch is one reference.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .errors import DownloadError
from .models import ReferenceLimits

JPEG_QUALITY = 95
# JPEG qualities tried, in order, when a reference is over the byte limit; then it is downscaled.
_FALLBACK_QUALITIES = (90, 85)
_DOWNSCALE_STEP = 0.85
# Results are at most ~16.8 MP; anything declaring far more is refused before decoding.
MAX_RESULT_PIXELS = 40_000_000


def tensor_to_arrays(images: torch.Tensor) -> list[np.ndarray]:
    """Split an IMAGE tensor into uint8 arrays [H, W, C] with C in (1, 3, 4)."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"expected an IMAGE tensor [B, H, W, C], got shape {tuple(images.shape)}")
    channels = images.shape[-1]
    if channels == 2:  # grey + alpha: expand to RGBA
        images = torch.cat([images[..., :1].expand(*images.shape[:-1], 3), images[..., 1:]], dim=-1)
    elif channels > 4:
        images = images[..., :3]
    # clamp (not clamp_) makes the copy: the caller's tensor is shared with other nodes and cached.
    data = images.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return [np.ascontiguousarray(frame) for frame in data.numpy()]


def _pil_image(array: np.ndarray) -> Image.Image:
    if array.shape[-1] == 1:
        return Image.fromarray(array[..., 0], "L")
    if array.shape[-1] == 4:
        if array[..., 3].min() == 255:  # an opaque alpha channel carries nothing: drop it
            return Image.fromarray(np.ascontiguousarray(array[..., :3]), "RGB")
        return Image.fromarray(array, "RGBA")
    return Image.fromarray(array, "RGB")


@dataclass
class EncodedReference:
    data_uri: str
    width: int
    height: int
    source_width: int
    source_height: int
    encoded_bytes: int
    notes: list[str] = field(default_factory=list)


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=1)
    else:
        image.save(buffer, "JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def encode_reference(array: np.ndarray, limits: ReferenceLimits, number: int) -> EncodedReference:
    """Encode one reference as a data URI within the service's limits.

    Opaque images become JPEG (quality 95, no chroma subsampling); images with real
    transparency become PNG. An image is downscaled only when a limit requires it, and the
    returned notes say so.
    """
    image = _pil_image(array)
    source_width, source_height = image.size
    notes: list[str] = []
    if image.width * image.height > limits.max_pixels:
        image = _scaled(image, math.sqrt(limits.max_pixels / (image.width * image.height)))
        notes.append(
            f"Reference {number} was downscaled from {source_width}x{source_height} to "
            f"{image.width}x{image.height} (the service takes at most {limits.max_pixels:,} pixels)."
        )
    fmt = "png" if image.mode == "RGBA" else "jpeg"
    quality = JPEG_QUALITY
    data = _encode(image, fmt, quality)
    fallbacks = list(_FALLBACK_QUALITIES) if fmt == "jpeg" else []
    over_byte_limit = len(data) > limits.max_bytes
    while len(data) > limits.max_bytes:
        if fallbacks:
            quality = fallbacks.pop(0)
        else:
            image = _scaled(image, _DOWNSCALE_STEP)
        data = _encode(image, fmt, quality)
    if over_byte_limit:
        notes.append(
            f"Reference {number} was re-encoded to {image.width}x{image.height} "
            f"{fmt.upper()}{f' quality {quality}' if fmt == 'jpeg' else ''} to stay under the "
            f"service's {limits.max_bytes / 1e6:g} MB per image."
        )
    return EncodedReference(
        data_uri=f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}",
        width=image.width,
        height=image.height,
        source_width=source_width,
        source_height=source_height,
        encoded_bytes=len(data),
        notes=notes,
    )


def decode_result(data: bytes, max_pixels: int = MAX_RESULT_PIXELS) -> np.ndarray:
    """Decode a result image into uint8 RGB [H, W, 3]; refuse non-images and decompression bombs."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DownloadError(
                    f"The result declares {width}x{height} pixels, more than any Seedream image: refused."
                )
            image.load()
            rgb = image.convert("RGB") if image.mode != "RGB" else image
            return np.array(rgb)  # a writable copy: torch refuses read-only buffers
    except DownloadError:
        raise
    except Image.DecompressionBombError:
        raise DownloadError("The result declares an enormous pixel count (a decompression bomb): refused.") from None
    except (OSError, ValueError) as exc:
        head = data[:16]
        raise DownloadError(f"The result is not a readable image ({exc}; first bytes {head!r}).") from None


def array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 IMAGE [1, H, W, 3] in 0..1."""
    return torch.from_numpy(array).to(torch.float32).div_(255.0).unsqueeze(0)


def batch_images(images: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """Stack [1, H, W, 3] images into one batch; return it and the indices that were resized.

    Images that differ from the first in size are scaled to cover its size and center-cropped,
    as ComfyUI's own Batch Images node does; the originals stay available through the list output.
    """
    height, width = images[0].shape[1:3]
    resized: list[int] = []
    frames = []
    for index, image in enumerate(images):
        if image.shape[1:3] != (height, width):
            image = _cover_resize(image, height, width)
            resized.append(index)
        frames.append(image)
    return torch.cat(frames, dim=0), resized


def _cover_resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    src_h, src_w = image.shape[1:3]
    scale = max(height / src_h, width / src_w)
    scaled_h, scaled_w = max(height, round(src_h * scale)), max(width, round(src_w * scale))
    chw = image.movedim(-1, 1)
    chw = torch.nn.functional.interpolate(chw, size=(scaled_h, scaled_w), mode="bilinear", antialias=True)
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return chw[:, :, top : top + height, left : left + width].movedim(1, -1).clamp_(0.0, 1.0)
