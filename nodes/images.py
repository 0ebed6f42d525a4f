"""Tensors to request images and answers back to tensors. Knows nothing of ComfyUI or HTTP.

ComfyUI's IMAGE is a float tensor [B, H, W, C] in 0..1, C = 3 (sometimes 1 or 4), possibly
fp16/bf16 or on a GPU. Each image of a batch is one reference.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import io
import math
import mmap
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageFile

from .errors import DownloadError, logger
from .models import ReferenceLimits

# Measured (docs/performance.md): 4:4:4 at quality 90 keeps more than 4:2:0 at 95 (no chroma
# bleeding on coloured edges, higher PSNR) at about the same size, for a little more time.
JPEG_QUALITY = 90
JPEG_SUBSAMPLING = "4:4:4"
REFERENCE_FORMATS = ("jpeg", "png")
# JPEG qualities tried, in order, when a reference is over the byte limit; then it is downscaled.
_FALLBACK_QUALITIES = (85, 80)
_DOWNSCALE_STEP = 0.85
# Results are at most ~16.8 MP; anything declaring far more is refused before decoding.
MAX_RESULT_PIXELS = 40_000_000
# Encoding and decoding release the GIL: one worker per core runs them in parallel.
WORKERS = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="seedream-image")
# Decoded results are only read (copied into the output batch), never written.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
_scratch = threading.local()


def split_frames(images: torch.Tensor) -> list[torch.Tensor]:
    """The images of an IMAGE batch as [H, W, C] views (no copy)."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"expected an IMAGE tensor [B, H, W, C], got shape {tuple(images.shape)}")
    return list(images.unbind(0))


def _scratch_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A per-thread buffer reused across images: fresh 48 MB allocations cost more (page faults)
    than the arithmetic itself."""
    buffers: dict = _scratch.__dict__.setdefault("buffers", {})
    if (shape, dtype) not in buffers:
        for key in [key for key in buffers if key[1] == dtype]:  # keep one buffer per dtype
            del buffers[key]
        buffers[(shape, dtype)] = torch.empty(shape, dtype=dtype)
    return buffers[(shape, dtype)]


def frame_to_array(frame: torch.Tensor) -> np.ndarray:
    """One [H, W, C] image (any float dtype, any device) as uint8 [H, W, C], C in (1, 3, 4).

    The result lives in a per-thread buffer: use it before converting the next frame on the same
    thread. The caller's tensor is never modified (it is shared with other nodes and cached)."""
    frame = frame.detach()
    channels = frame.shape[-1]
    if channels == 2:  # grey + alpha: expand to RGBA
        frame = torch.cat([frame[..., :1].expand(*frame.shape[:-1], 3), frame[..., 1:]], dim=-1)
    elif channels > 4:
        frame = frame[..., :3]
    frame = frame.to("cpu")
    scaled = _scratch_buffer(tuple(frame.shape), torch.float32)
    torch.mul(frame, 255.0, out=scaled)
    scaled.add_(0.5).clamp_(0.0, 255.0)  # + 0.5 then truncation by the uint8 copy: rounding
    array = _scratch_buffer(tuple(frame.shape), torch.uint8)
    array.copy_(scaled)
    return array.numpy()


def _pil_image(array: np.ndarray) -> Image.Image:
    if array.shape[-1] == 1:
        return Image.fromarray(array[..., 0])  # L
    if array.shape[-1] == 4 and array[..., 3].min() == 255:  # an opaque alpha channel carries nothing
        return Image.fromarray(np.ascontiguousarray(array[..., :3]))
    return Image.fromarray(array)  # RGB or RGBA


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
        image.save(buffer, "JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING)
    return buffer.getvalue()


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def encode_reference(
    frame: torch.Tensor | np.ndarray, limits: ReferenceLimits, number: int, fmt: str = "jpeg"
) -> EncodedReference:
    """Encode one reference ([H, W, C] tensor or uint8 array) as a data URI within the limits.

    `jpeg`: opaque images become JPEG quality 90, 4:4:4; images with real transparency become PNG.
    `png`: lossless. An image is downscaled only when a limit requires it, and the notes say so.
    """
    array = frame if isinstance(frame, np.ndarray) else frame_to_array(frame)
    image = _pil_image(array)
    source_width, source_height = image.size
    notes: list[str] = []
    if image.width * image.height > limits.max_pixels:
        image = _scaled(image, math.sqrt(limits.max_pixels / (image.width * image.height)))
        notes.append(
            f"Reference {number} was downscaled from {source_width}x{source_height} to "
            f"{image.width}x{image.height} (the service takes at most {limits.max_pixels:,} pixels)."
        )
    fmt = "png" if image.mode == "RGBA" else fmt
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


@contextlib.contextmanager
def _opened_result(data: bytes, max_pixels: int) -> Iterator[Image.Image]:
    """The result as an unloaded Pillow image; refuse non-images and decompression bombs, here and
    while the caller decodes it."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DownloadError(
                    f"The result declares {width}x{height} pixels, more than any Seedream image: refused."
                )
            yield image
    except DownloadError:
        raise
    except Image.DecompressionBombError:
        raise DownloadError("The result declares an enormous pixel count (a decompression bomb): refused.") from None
    except (OSError, ValueError) as exc:
        head = data[:16]
        raise DownloadError(f"The result is not a readable image ({exc}; first bytes {head!r}).") from None


def decode_result(data: bytes, max_pixels: int = MAX_RESULT_PIXELS) -> np.ndarray:
    """Decode a result image into uint8 RGB [H, W, 3]; refuse non-images and decompression bombs."""
    with _opened_result(data, max_pixels) as image:
        image.load()
        return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)


def _decode_memory(size: tuple[int, int]) -> object:
    """Per-thread Pillow image memory (RGB) that results are decoded into, reused across images.
    A fresh 16 MB buffer per 2048x2048 image is ~4,000 first-touch page faults, and on a VM those
    stall the other cores too (docs/performance.md); one buffer per worker is kept."""
    cached = getattr(_scratch, "decode_memory", None)
    if cached is None or cached.size != size:
        _scratch.decode_memory = cached = Image.core.new("RGB", size)
    return cached


def decode_result_into(data: bytes, out: torch.Tensor, max_pixels: int = MAX_RESULT_PIXELS) -> np.ndarray | None:
    """Decode a result straight into `out` (float32 [H, W, 3], values 0..1) and return None when it
    is an RGB image of that size (the usual case); otherwise return it as `decode_result` does."""
    with _opened_result(data, max_pixels) as image:
        fits = image.mode == "RGB" and image.size == (out.shape[1], out.shape[0]) and out.is_contiguous()
        # A truncated image decoded into reused memory would show the previous image's pixels
        # where Pillow's fresh memory shows black: only reuse when truncation is an error.
        if fits and not ImageFile.LOAD_TRUNCATED_IMAGES:
            image.im = _decode_memory(image.size)  # Pillow decodes into an image memory already set
        image.load()
        if not fits:
            return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
        _fill_from(image.im, out)
        return None


# Bytes of packed RGB per band in _fill_from: its float32 output (4x) stays in a core's L2 cache.
_BAND_BYTES = 256 * 1024
_INVERSE_255 = np.float32(1.0 / 255.0)


def _fill_from(memory: object, out: torch.Tensor) -> None:
    """Pillow RGB image memory into float32 `out` ([H, W, 3], 0..1), one band of rows at a time.

    Pillow stores RGB as 4 bytes a pixel; its raw encoder packs them to 3 (what `tobytes` does)
    into band-sized chunks that malloc reuses, instead of one fresh 12 MB bytes object, and each
    band is converted while it is in cache. numpy, not torch: a torch op this size starts an OpenMP
    team per worker thread, which on 2 cores only competes with the other decode. Values are
    float32(v) * float32(1/255), as torch's `mul_(1.0 / 255.0)` gives."""
    width, height = memory.size
    line = width * 3
    encoder = Image._getencoder("RGB", "raw", "RGB")
    encoder.setimage(memory, (0, 0, width, height))
    flat = out.view(-1).numpy()
    done, status = 0, 0
    while not status:
        _, status, chunk = encoder.encode(max(1, _BAND_BYTES // line) * line)
        band = np.frombuffer(chunk, np.uint8)
        np.multiply(band, _INVERSE_255, out=flat[done : done + band.size])
        done += band.size
    if status < 0 or done != flat.size:
        raise DownloadError(f"The decoded result could not be converted (Pillow encoder status {status}).")


def array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 IMAGE [1, H, W, 3] in 0..1."""
    return torch.from_numpy(array).to(torch.float32).div_(255.0).unsqueeze(0)


_fast_decode = True


def _decode_into_row(data: bytes, row: torch.Tensor) -> np.ndarray | None:
    """`decode_result_into`, which relies on Pillow internals (ComfyUI users run many Pillow
    versions): should they change, results still decode, the plain way, from then on."""
    global _fast_decode
    if _fast_decode:
        try:
            return decode_result_into(data, row)
        except (AttributeError, TypeError) as exc:
            _fast_decode = False
            logger.warning("This Pillow's internals differ (%s): results are decoded the plain way.", exc)
    return decode_result(data)


class ResultBatch:
    """Collects decoded results straight into their row of one preallocated output batch.

    When the answer declares one size for every image (the usual case) each image is converted
    once, from uint8 into its row, and the list output is made of views of the batch: no second
    copy. Images of another size are kept apart and fitted into the batch at the end.
    `add` may run on several worker threads at once.
    """

    def __init__(self, declared_sizes: dict[int, str | None]) -> None:
        self.rows = {index: row for row, index in enumerate(sorted(declared_sizes))}
        shapes = {_parse_size(size) for size in declared_sizes.values()}
        shape = shapes.pop() if len(shapes) == 1 else None
        self.batch = torch.empty((len(self.rows), shape[1], shape[0], 3)) if shape else None
        self.finished = threading.Event()
        if self.batch is not None and self.batch.nelement() * 4 >= _PREFAULT_MIN_BYTES and _madvise is not None:
            threading.Thread(target=_prefault, args=(self.batch, self.finished), daemon=True).start()
        self.filled: set[int] = set()
        self.loose: dict[int, torch.Tensor] = {}
        # ComfyUI runs nodes under torch.inference_mode(), which is per thread: the batch made here
        # is an inference tensor, and the worker threads that fill it must be in the same mode.
        self.inference_mode = torch.is_inference_mode_enabled()

    def add(self, index: int, data: bytes) -> None:
        with torch.inference_mode(self.inference_mode):
            if self.batch is None:
                self.loose[index] = array_to_tensor(decode_result(data))
                return
            row = self.batch[self.rows[index]]
            array = _decode_into_row(data, row)
            if array is not None and array.shape[:2] == row.shape[:2]:  # RGBA, grey, palette
                row.copy_(torch.from_numpy(array)).mul_(1.0 / 255.0)
            elif array is not None:  # another size: kept apart, fitted into the batch in finish()
                self.loose[index] = array_to_tensor(array)
                return
            self.filled.add(index)

    def __len__(self) -> int:
        return len(self.filled) + len(self.loose)

    def finish(self) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
        """(batch, list of [1, H, W, 3] images in answer order, indices resized in the batch)."""
        self.finished.set()
        if self.batch is not None and not self.loose:
            order = sorted(self.filled)
            for row, index in enumerate(order):  # close the gaps left by failed images, in place
                if self.rows[index] != row:
                    self.batch[row].copy_(self.batch[self.rows[index]])
            batch = self.batch[: len(order)]
            return batch, [batch[row : row + 1] for row in range(len(order))], []
        images = {index: self.batch[self.rows[index]].unsqueeze(0) for index in self.filled} | self.loose
        ordered = [images[index] for index in sorted(images)]
        batch, resized_positions = batch_images(ordered)
        return batch, ordered, [sorted(images)[p] for p in resized_positions]


def _libc_madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


_madvise = _libc_madvise()
_MADV_POPULATE_WRITE = 23  # Linux 5.14+; older kernels answer EINVAL and nothing is done
_PREFAULT_MIN_BYTES = 64 * 1024 * 1024


def _prefault(batch: torch.Tensor, finished: threading.Event) -> None:
    """Fault in the batch's pages, row by row, while results are still downloading or decoding.

    First touch of 755 MB costs ~200 ms of page faults, and on the machines measured faults do not
    run in parallel across cores: done by the workers they stall the decoding; done here they
    overlap the downloads. MADV_POPULATE_WRITE only maps missing pages, so a row a worker has
    already written is left as it is. The ctypes call releases the GIL."""
    page = mmap.PAGESIZE
    for row in batch:
        if finished.is_set():
            return
        start = -(-row.data_ptr() // page) * page
        end = (row.data_ptr() + row.nelement() * row.element_size()) // page * page
        if end > start and _madvise(start, end - start, _MADV_POPULATE_WRITE) != 0:
            return


def _parse_size(size: str | None) -> tuple[int, int] | None:
    width, _, height = (size or "").partition("x")
    return (int(width), int(height)) if width.isdigit() and height.isdigit() else None


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
