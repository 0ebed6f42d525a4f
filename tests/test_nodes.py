"""The three nodes end to end against the emulator, exactly as they would talk to CometAPI."""

from __future__ import annotations

import asyncio
import base64
import importlib
import io
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import PACK_DIR, PACK_NAME, TEST_KEY, load_pack
from PIL import Image

seedream = importlib.import_module(f"{PACK_NAME}.nodes.seedream")
errors = importlib.import_module(f"{PACK_NAME}.nodes.errors")
models = importlib.import_module(f"{PACK_NAME}.nodes.models")

V45 = "doubao-seedream-4-5-251128"
V50 = "doubao-seedream-5-0-260128"
V30 = "bytedance-seedream-3.0-t2i"
BASE = {"size": "2048x2048 (1:1)", "width": 2048, "height": 2048, "seed": 0, "watermark": False}


def run(node_class, **inputs):
    return asyncio.run(node_class().run(**inputs))["result"]


def text_to_image(**inputs):
    return run(seedream.SeedreamTextToImage, **({"prompt": "a red fox", "model": V45} | BASE | inputs))


def solid(height: int, width: int, value: float = 0.5, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, height, width, 3), value)


def decode_data_uri(uri: str) -> Image.Image:
    header, _, payload = uri.partition(",")
    assert re.fullmatch(r"data:image/(jpeg|png);base64", header)
    return Image.open(io.BytesIO(base64.b64decode(payload)))


# --- loading ----------------------------------------------------------------------------------


def test_pack_loads_like_comfyui_loads_it():
    module = load_pack("some_folder_name_comfyui_chose")
    generators = ["CometAPISeedreamTextToImage", "CometAPISeedreamImageToImage", "CometAPISeedreamSequential"]
    assert list(module.NODE_CLASS_MAPPINGS) == [*generators, "CometAPISeedreamLedger"]
    assert module.NODE_DISPLAY_NAME_MAPPINGS["CometAPISeedreamSequential"] == "Seedream Sequential Images (CometAPI)"
    assert set(module.NODE_DISPLAY_NAME_MAPPINGS) == set(module.NODE_CLASS_MAPPINGS)
    assert (PACK_DIR / module.WEB_DIRECTORY).is_dir()
    for node_class in map(module.NODE_CLASS_MAPPINGS.get, generators):
        spec = node_class.INPUT_TYPES()
        assert node_class.RETURN_NAMES[0] == "images" and node_class.OUTPUT_IS_LIST == (False, True, False)
        assert spec["hidden"] == {"unique_id": "UNIQUE_ID"}
        widgets = spec["required"] | spec["optional"]
        assert all(options.get("tooltip") for _, options in widgets.values())
        assert widgets["watermark"][1]["default"] is False and widgets["seed"][1]["control_after_generate"]


def test_no_absolute_imports_of_the_pack_or_comfyui():
    pattern = re.compile(r"^\s*(from|import)\s+(nodes|comfy|server|folder_paths)\b", re.MULTILINE)
    for path in [PACK_DIR / "__init__.py", *sorted((PACK_DIR / "nodes").glob("*.py"))]:
        assert not pattern.search(path.read_text()), path


def test_reference_and_model_inputs_follow_the_table():
    i2i = seedream.SeedreamImageToImage.INPUT_TYPES()
    assert list(i2i["required"])[0] == "image_1" and "image_14" in i2i["optional"]
    assert V30 not in i2i["required"]["model"][0]
    seq = seedream.SeedreamSequential.INPUT_TYPES()
    assert seq["required"]["model"][0] == [m.id for m in models.load_table().models.values() if m.sequential]
    assert seq["required"]["max_images"][1]["max"] == 15 and "image_1" in seq["optional"]


# --- text to image ----------------------------------------------------------------------------


def test_text_to_image_request_is_exactly_what_the_service_documents(service):
    images, image_list, info_text = text_to_image()
    assert images.shape == (1, 2048, 2048, 3) and images.dtype == torch.float32
    assert len(image_list) == 1 and image_list[0].shape == (1, 2048, 2048, 3)

    (call,) = service.generation_requests()
    assert call.method == "POST" and call.path == "/v1/images/generations"
    assert call.headers["authorization"] == f"Bearer {TEST_KEY}"
    assert call.headers["content-type"] == "application/json"
    expected = {
        "model": V45,
        "prompt": "a red fox",
        "size": "2048x2048",
        "response_format": "url",
        "watermark": False,
        "sequential_image_generation": "disabled",
        "optimize_prompt_options": {"mode": "standard"},
        "stream": True,
    }
    assert call.body == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()

    info = json.loads(info_text)
    (image,) = info["images"]
    assert image["size"] == "2048x2048" and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", image["expires_at"])
    assert info["usage"]["generated_images"] == 1 and info["generated_images"] == 1
    assert TEST_KEY not in info_text

    (download,) = service.downloads
    assert "authorization" not in download.headers
    assert download.raw_target == image["url"].split(service.storage_origin, 1)[1]


def test_b64_json_answer_needs_no_download(service):
    images, _, info_text = text_to_image(response_format="b64_json")
    assert images.shape == (1, 2048, 2048, 3)
    assert service.downloads == [] and "url" not in json.loads(info_text)["images"][0]


def test_model_30_sends_seed_and_guidance(service):
    images, _, _ = text_to_image(model=V30, size="custom", width=1024, height=768, seed=1234, guidance_scale=7.0)
    assert images.shape == (1, 768, 1024, 3)
    body = service.generation_requests()[0].json
    assert body["seed"] == 1234 and body["guidance_scale"] == 7.0 and "optimize_prompt_options" not in body


def test_preset_size_answer_size_comes_from_the_service(service):
    images, _, info_text = text_to_image(model=V50, size="2K", prompt="a wide 16:9 landscape", output_format="png")
    assert images.shape == (1, 1600, 2848, 3)
    assert service.generation_requests()[0].json["output_format"] == "png"


# --- image to image ---------------------------------------------------------------------------


def test_image_to_image_sends_every_reference_in_order(service):
    images, _, info_text = run(
        seedream.SeedreamImageToImage,
        image_1=solid(64, 96, 0.2, batch=2),
        image_3=torch.rand(1, 48, 48, 4),
        prompt="put image 1 on image 3",
        model=V45,
        **BASE,
    )
    assert images.shape == (1, 2048, 2048, 3)
    sent = service.generation_requests()[0].json["image"]
    decoded = [decode_data_uri(uri) for uri in sent]
    assert [im.size for im in decoded] == [(96, 64), (96, 64), (48, 48)]
    assert [im.format for im in decoded] == ["JPEG", "JPEG", "PNG"]
    assert [r["sent"] for r in json.loads(info_text)["request"]["references"]] == ["96x64", "96x64", "48x48"]


def test_too_many_references_are_refused_before_sending(service):
    with pytest.raises(errors.InputError, match="at most 10"):
        run(seedream.SeedreamImageToImage, image_1=solid(32, 32, batch=11), prompt="x",
            model="seedream-5-0-pro-260628", **BASE)
    assert service.requests == []


# --- sequential -------------------------------------------------------------------------------


def test_sequential_returns_the_group(service):
    images, image_list, info_text = run(
        seedream.SeedreamSequential, prompt="a 4-panel storyboard of a fox", model=V45, max_images=4, **BASE
    )
    assert images.shape == (4, 2048, 2048, 3) and len(image_list) == 4
    body = service.generation_requests()[0].json
    assert body["sequential_image_generation"] == "auto"
    assert body["sequential_image_generation_options"] == {"max_images": 4}
    assert len(service.downloads) == 4
    assert not torch.equal(images[0], images[1])


def test_sequential_fewer_than_asked_is_explained(service):
    service.sequential_count = 2
    images, _, info_text = run(seedream.SeedreamSequential, prompt="a storyboard", model=V45, max_images=5, **BASE)
    info = json.loads(info_text)
    assert images.shape[0] == 2 and info["requested_images"] == 5
    assert any("2 of up to 5" in note for note in info["notes"])


def test_sequential_with_references_counts_them_against_15(service):
    with pytest.raises(errors.InputError, match="set max_images to 3"):
        run(seedream.SeedreamSequential, image_1=solid(32, 32, batch=12), prompt="x", model=V45, max_images=4, **BASE)
    assert service.requests == []


def test_moderated_image_is_reported_and_the_rest_kept(service):
    images, image_list, info_text = run(
        seedream.SeedreamSequential, prompt="four panels [[moderate:1]]", model=V45, max_images=4, **BASE
    )
    info = json.loads(info_text)
    assert images.shape[0] == 3 and info["failed_images"] == 1 and info["usage"]["generated_images"] == 3
    assert info["images"][1]["error"]["code"] == "OutputImageSensitiveContentDetected"
    assert any("not billed" in note for note in info["notes"])


def test_every_image_refused_is_an_error(service):
    with pytest.raises(errors.ServiceError, match="OutputImageSensitiveContentDetected"):
        text_to_image(prompt="a fox [[moderate:0]]")


# --- errors -----------------------------------------------------------------------------------


def test_missing_key_fails_before_any_request(service, monkeypatch):
    monkeypatch.delenv("COMETAPI_KEY")
    with pytest.raises(errors.ConfigurationError, match="No CometAPI key"):
        text_to_image()
    assert service.requests == []


def test_wrong_key_is_readable_and_never_echoed(service, monkeypatch):
    monkeypatch.setenv("COMETAPI_KEY", "sk-wrong-key-ffffffffffffffff")
    with pytest.raises(errors.ServiceError) as caught:
        text_to_image()
    message = str(caught.value)
    assert "401" in message and "invalid token" in message and "base URL" in message
    assert "sk-wrong-key" not in message


def test_provider_error_shape_with_request_id(service, isolated_config):
    # A model table that is wrong about 4.5 lets a 1K request through; the service refuses it.
    entry = {"like": V45, "size_presets": ["1K", "2K", "4K"]}
    (isolated_config / "models.json").write_text(json.dumps({"models": {V45: entry}}))
    models.load_table.cache_clear()
    with pytest.raises(errors.ServiceError) as caught:
        text_to_image(size="1K")
    assert caught.value.status == 400 and caught.value.code == "InvalidParameter" and caught.value.param == "size"
    assert caught.value.request_id and caught.value.request_id in str(caught.value)


def test_unknown_model_on_the_service(service, isolated_config):
    (isolated_config / "models.json").write_text(json.dumps({"models": {"doubao-seedream-9-9": {"like": V45}}}))
    models.load_table.cache_clear()
    with pytest.raises(errors.ServiceError, match="UnsupportedModel.*not enabled"):
        text_to_image(model="doubao-seedream-9-9")


def test_wrong_base_url_says_so(service, monkeypatch):
    monkeypatch.setenv("COMETAPI_BASE_URL", service.base_url.removesuffix("/v1"))
    with pytest.raises(errors.ServiceError, match="base URL .* is probably wrong"):
        text_to_image()
    monkeypatch.setenv("COMETAPI_BASE_URL", service.base_url + "/nope")
    with pytest.raises(errors.ServiceError, match="web page instead of JSON"):
        text_to_image()


def test_altered_link_gives_access_denied_with_explanation(service):
    client_module = importlib.import_module(f"{PACK_NAME}.nodes.client")
    text_to_image()
    altered = service.storage_origin + service.downloads[0].raw_target.replace("%2F", "/")
    with pytest.raises(errors.DownloadError, match="AccessDenied.*expire 24 hours"):
        asyncio.run(client_module.download(altered))


def test_runs_on_successive_event_loops_share_nothing_stale(service):
    for _ in range(3):  # ComfyUI may run each prompt on a new loop
        text_to_image()
    assert len(service.generation_requests()) == 3


def test_nothing_written_outside_the_config_folder(service, tmp_path: Path):
    text_to_image()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config"]


def test_queue_time_validation_of_constant_inputs():
    validate = seedream.SeedreamTextToImage.VALIDATE_INPUTS
    assert validate(prompt="a fox", model=V45, size="2K", width=2048, height=2048) is True
    assert "does not accept size 1K" in validate(prompt="a fox", model=V45, size="1K", width=2048, height=2048)
    assert "prompt is empty" in validate(prompt="", model=V45, size="2K", width=2048, height=2048)
    assert validate(prompt=None, model=V45, size="2K", width=2048, height=2048) is True  # prompt linked
    assert validate(prompt="x", model=V45, size="custom", width=None, height=2048) is True  # width linked
    assert "Unknown model" in validate(prompt="x", model="nope", size="2K", width=1, height=1)


def test_answers_of_different_sizes_do_not_crash(service):
    images, image_list, info_text = run(
        seedream.SeedreamSequential, prompt="three panels [[size:1=1600x2848]]", model=V45, max_images=3, **BASE
    )
    assert images.shape == (3, 2048, 2048, 3)
    assert [tuple(t.shape[1:3]) for t in image_list] == [(2048, 2048), (2848, 1600), (2048, 2048)]
    assert any("fitted to it" in note for note in json.loads(info_text)["notes"])


def test_nodes_run_under_inference_mode_as_in_comfyui(service):
    """ComfyUI executes every node inside torch.inference_mode(); worker threads are not in it."""
    reference = torch.rand(1, 64, 64, 3)
    with torch.inference_mode():
        images, image_list, _ = run(
            seedream.SeedreamSequential, image_1=reference, prompt="three panels [[size:2=1600x2848]]",
            model=V45, max_images=3, **BASE,
        )
        again, _, _ = text_to_image()
    assert images.shape == (3, 2048, 2048, 3) and len(image_list) == 3 and again.shape[0] == 1


def test_ledger_node_accepts_hidden_inputs_in_is_changed(service):
    text_to_image()
    latest = seedream.SeedreamLedger.IS_CHANGED(entry="latest", unique_id="7")
    assert latest and latest != "latest"


def test_queue_time_validation_keeps_each_node_to_its_models():
    message = seedream.SeedreamSequential.VALIDATE_INPUTS(
        prompt="x", model="seedream-5-0-pro-260628", size="2K", width=1, height=1)
    assert "cannot be used in this node" in message and V45 in message
    assert "cannot be used" in seedream.SeedreamImageToImage.VALIDATE_INPUTS(
        prompt="x", model=V30, size="1024x1024 (1:1)", width=1, height=1)
