"""Tensors to request images and back."""

from __future__ import annotations

import base64
import importlib
import io
import zlib

import numpy as np
import pytest
import torch
from conftest import PACK_NAME
from PIL import Image

images = importlib.import_module(f"{PACK_NAME}.nodes.images")
models = importlib.import_module(f"{PACK_NAME}.nodes.models")
errors = importlib.import_module(f"{PACK_NAME}.nodes.errors")
LIMITS = models.load_table().reference_limits


def to_arrays(batch: torch.Tensor) -> list[np.ndarray]:
    return [images.frame_to_array(frame).copy() for frame in images.split_frames(batch)]


def decode_uri(uri: str) -> Image.Image:
    header, _, payload = uri.partition(",")
    assert header in ("data:image/jpeg;base64", "data:image/png;base64")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_the_callers_tensor_is_left_untouched():
    for dtype in (torch.float32, torch.float16):
        source = torch.full((2, 8, 8, 3), 0.5, dtype=dtype)
        to_arrays(source)
        assert torch.equal(source, torch.full((2, 8, 8, 3), 0.5, dtype=dtype))


def test_batches_dtypes_and_channels_become_arrays():
    batch = torch.rand(3, 40, 60, 3, dtype=torch.float16)
    arrays = to_arrays(batch)
    assert len(arrays) == 3 and arrays[0].shape == (40, 60, 3) and arrays[0].dtype == np.uint8
    assert to_arrays(torch.rand(40, 60, 3, dtype=torch.bfloat16))[0].shape == (40, 60, 3)
    assert to_arrays(torch.rand(1, 20, 20, 1))[0].shape == (20, 20, 1)
    assert to_arrays(torch.rand(1, 20, 20, 2))[0].shape == (20, 20, 4)
    over = to_arrays(torch.full((1, 4, 4, 3), 1.7))[0]
    assert over.max() == 255


def test_opaque_image_is_jpeg_and_transparent_is_png():
    rgb = images.encode_reference(np.full((64, 80, 3), 120, np.uint8), LIMITS, 1)
    assert rgb.data_uri.startswith("data:image/jpeg;base64,") and (rgb.width, rgb.height) == (80, 64)
    opaque = np.full((32, 32, 4), 255, np.uint8)
    assert images.encode_reference(opaque, LIMITS, 1).data_uri.startswith("data:image/jpeg")
    alpha = opaque.copy()
    alpha[..., 3] = 10
    encoded = images.encode_reference(alpha, LIMITS, 1)
    assert decode_uri(encoded.data_uri).mode == "RGBA" and not encoded.notes
    grey = images.encode_reference(np.full((32, 32, 1), 9, np.uint8), LIMITS, 1)
    assert decode_uri(grey.data_uri).mode == "L"


def test_jpeg_fidelity_is_high():
    rng = np.random.default_rng(0)  # photo-like: smooth colour, textured luminance, sensor noise
    y, x = np.mgrid[0:256, 0:256] / 256
    colour = np.stack([np.sin(3 * x + 1), np.cos(2 * y), np.sin(2 * x * y + 2)], axis=-1) * 60 + 128
    texture = np.cumsum(rng.normal(0, 1.5, (256, 256)), axis=1)[..., None]
    smooth = np.clip(colour + texture + rng.normal(0, 2, (256, 256, 3)), 0, 255).astype(np.uint8)
    back = np.asarray(decode_uri(images.encode_reference(smooth, LIMITS, 1).data_uri).convert("RGB"), np.float64)
    mse = np.mean((back - smooth) ** 2)
    assert 10 * np.log10(255**2 / mse) > 40


def test_limits_force_downscale_and_say_so():
    tight = models.ReferenceLimits(
        min_side_exclusive=14, min_aspect=1 / 16, max_aspect=16, max_pixels=10_000, max_bytes=4_000
    )
    noise = np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    encoded = images.encode_reference(noise, tight, 2)
    assert encoded.width * encoded.height <= 10_000 and encoded.encoded_bytes <= 4_000
    assert (encoded.source_width, encoded.source_height) == (300, 200)
    assert any("Reference 2 was downscaled from 300x200" in n for n in encoded.notes)
    assert any("re-encoded" in n for n in encoded.notes)


def test_decode_refuses_garbage_and_bombs():
    with pytest.raises(errors.DownloadError, match="not a readable image"):
        images.decode_result(b"<html>nope</html>")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    for side, expected in ((100000, "decompression bomb"), (7000, "7000x7000")):
        data[16:24] = side.to_bytes(4, "big") * 2  # IHDR width and height, then its CRC
        data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
        with pytest.raises(errors.DownloadError, match=expected):
            images.decode_result(bytes(data))


def test_batch_of_mixed_sizes_does_not_crash():
    first, second = torch.rand(1, 64, 64, 3), torch.rand(1, 90, 160, 3)
    batch, resized = images.batch_images([first, second, first])
    assert batch.shape == (3, 64, 64, 3) and resized == [1]
    assert torch.equal(batch[0], first[0])


def _png(width: int, height: int, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, value, value)).save(buffer, "PNG")
    return buffer.getvalue()


def test_result_batch_fills_one_tensor_and_lists_views_of_it():
    collected = images.ResultBatch({0: "32x16", 1: "32x16", 2: "32x16"})
    collected.add(2, _png(32, 16, 200))
    collected.add(0, _png(32, 16, 100))  # image 1 failed: its row is closed up
    batch, image_list, resized = collected.finish()
    assert batch.shape == (2, 16, 32, 3) and resized == []
    assert [round(float(t.mean()) * 255) for t in image_list] == [100, 200]
    assert all(t.untyped_storage().data_ptr() == batch.untyped_storage().data_ptr() for t in image_list)


def test_result_batch_with_an_odd_size_fits_it_into_the_batch():
    collected = images.ResultBatch({0: "32x16", 1: "32x16"})
    collected.add(0, _png(32, 16, 50))
    collected.add(1, _png(16, 32, 150))
    batch, image_list, resized = collected.finish()
    assert batch.shape == (2, 16, 32, 3) and resized == [1]
    assert [tuple(t.shape) for t in image_list] == [(1, 16, 32, 3), (1, 32, 16, 3)]


def _encoded(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, fmt)
    return buffer.getvalue()


def _expected(data: bytes) -> torch.Tensor:
    """What the results path always gave: Pillow's RGB pixels, then float32 times 1/255."""
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(pixels.copy()).to(torch.float32).mul_(1.0 / 255.0)


def test_results_decoded_into_reused_memory_are_exact_whatever_came_before():
    rng = np.random.default_rng(3)
    blobs = [_encoded(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8), fmt) for fmt in ("JPEG", "PNG", "JPEG")]
    other = _encoded(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), "JPEG")
    for round_ in range(2):  # the second round decodes into memory the first one left dirty
        collected = images.ResultBatch({n: "37x23" for n in range(len(blobs))})
        for index, data in enumerate(blobs):
            collected.add(index, data)
        images.decode_result(other)  # another size in between on the same thread
        batch, _, resized = collected.finish()
        assert resized == [] and batch.dtype == torch.float32
        for row, data in zip(batch, blobs, strict=True):
            assert torch.equal(row, _expected(data)), round_


def test_results_still_decode_if_pillows_internals_change(monkeypatch: pytest.MonkeyPatch, caplog):
    def gone(*args):  # as a Pillow without the internal the fast path uses would fail
        raise AttributeError("'ImagingCore' object has no attribute 'setimage'")

    data = _encoded(np.random.default_rng(5).integers(0, 256, (23, 37, 3), dtype=np.uint8), "PNG")
    monkeypatch.setattr(images, "_fill_from", gone)
    monkeypatch.setattr(images, "_fast_decode", True)
    collected = images.ResultBatch({0: "37x23", 1: "37x23"})
    collected.add(0, data)
    collected.add(1, data)
    batch, _, _ = collected.finish()
    assert torch.equal(batch[0], _expected(data)) and torch.equal(batch[1], _expected(data))
    assert caplog.text.count("internals differ") == 1 and images._fast_decode is False


def test_grey_palette_and_transparent_results_still_fill_the_batch():
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
    blobs = [_encoded(rgb, "PNG", "L"), _encoded(rgb, "PNG", "P"), _encoded(rgb, "PNG", "RGBA"), _encoded(rgb, "JPEG")]
    collected = images.ResultBatch({n: "32x16" for n in range(len(blobs))})
    for index, data in enumerate(blobs):
        collected.add(index, data)
    batch, image_list, resized = collected.finish()
    assert resized == [] and batch.shape == (4, 16, 32, 3)
    assert all(t.untyped_storage().data_ptr() == batch.untyped_storage().data_ptr() for t in image_list)
    for row, data in zip(batch, blobs, strict=True):
        assert torch.equal(row, _expected(data))


def test_truncated_results_are_refused_or_decoded_as_pillow_would(monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(5)
    whole = _encoded(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8), "PNG")
    cut = whole[: len(whole) // 2]  # PNG: the rows after the cut are never written
    with pytest.raises(errors.DownloadError, match="not a readable image"):
        images.ResultBatch({0: "48x64"}).add(0, cut)
    monkeypatch.setattr(images.ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    collected = images.ResultBatch({0: "48x64", 1: "48x64"})
    collected.add(0, whole)  # leaves this thread's decode memory full of another picture
    collected.add(1, cut)
    batch, _, _ = collected.finish()
    assert torch.equal(batch[1], _expected(cut))  # Pillow's fresh memory: no trace of image 0


@pytest.mark.parametrize("band_bytes", [1, 250, 1 << 20])  # under a line, 2 lines and a short last band, all
def test_results_convert_band_by_band_exactly(monkeypatch: pytest.MonkeyPatch, band_bytes: int):
    monkeypatch.setattr(images, "_BAND_BYTES", band_bytes)
    data = _encoded(np.random.default_rng(6).integers(0, 256, (23, 37, 3), dtype=np.uint8), "JPEG")
    out = torch.full((23, 37, 3), -1.0)
    assert images.decode_result_into(data, out) is None
    assert torch.equal(out, _expected(data))


@pytest.mark.skipif(images._madvise is None, reason="prefaulting is Linux-only")
def test_prefaulting_leaves_written_rows_as_they_are(monkeypatch: pytest.MonkeyPatch):
    batch = torch.empty(3, 512, 512, 3)  # rows of 3 MB: whole pages to populate in each
    batch[1] = 0.25  # a row a worker already wrote
    images._prefault(batch, images.threading.Event())
    assert torch.equal(batch[1], torch.full((512, 512, 3), 0.25))
    monkeypatch.setattr(images, "_PREFAULT_MIN_BYTES", 0)  # the thread runs even for a small batch
    data = _encoded(np.random.default_rng(7).integers(0, 256, (23, 37, 3), dtype=np.uint8), "JPEG")
    collected = images.ResultBatch({0: "37x23", 1: "37x23"})
    collected.add(1, data)
    collected.add(0, data)
    batch, _, _ = collected.finish()
    assert torch.equal(batch[0], _expected(data)) and torch.equal(batch[1], _expected(data))
