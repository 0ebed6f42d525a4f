"""Checks before any money is spent, and the body each model is sent."""

from __future__ import annotations

import importlib
import json

import pytest
from conftest import PACK_NAME

request = importlib.import_module(f"{PACK_NAME}.nodes.request")
models = importlib.import_module(f"{PACK_NAME}.nodes.models")
errors = importlib.import_module(f"{PACK_NAME}.nodes.errors")
Options = request.GenerationOptions

V45 = "doubao-seedream-4-5-251128"
V40 = "doubao-seedream-4-0-250828"
V50 = "doubao-seedream-5-0-260128"
PRO = "seedream-5-0-pro-260628"
V30 = "bytedance-seedream-3.0-t2i"


def check(opts, refs=()):
    return request.check_request(opts, models.load_table(), list(refs))


def rejected(opts, refs=()) -> str:
    with pytest.raises(errors.InputError) as caught:
        check(opts, refs)
    return str(caught.value)


def test_default_size_is_valid_for_every_model():
    for model_id in models.load_table().models:
        assert check(Options(model=model_id, prompt="a cat", size=models.DEFAULT_SIZE)).size == "2048x2048"


def test_presets_per_model():
    assert check(Options(model=V40, prompt="x", size="1K")).size == "1K"
    message = rejected(Options(model=V45, prompt="x", size="1K"))
    assert "does not accept size 1K" in message and "2K, 4K" in message
    assert "give an exact size" in rejected(Options(model=V30, prompt="x", size="2K"))
    assert check(Options(model=V50, prompt="x", size="3K")).size == "3K"


def test_pixel_range_and_aspect():
    message = rejected(Options(model=V45, prompt="x", size="1024x1024 (1:1)"))
    assert "3,686,400" in message and "1920x1920" in message
    message = rejected(Options(model=PRO, prompt="x", size="4096x4096 (1:1)"))
    assert "4,624,220" in message
    message = rejected(Options(model=V40, prompt="x", size="custom", width=8192, height=480))
    assert "ratio" in message and "1/16 to 16" in message
    assert check(Options(model=V40, prompt="x", size="custom", width=1920, height=1080)).size == "1920x1080"
    assert "width and height" in rejected(Options(model=V30, prompt="x", size="custom", width=2560, height=1440))


def test_empty_prompt_and_soft_length_note():
    assert "prompt is empty" in rejected(Options(model=V45, prompt="  \n", size="2K"))
    assert check(Options(model=V45, prompt="a" * 1200, size="2K")).notes


def test_reference_limits_per_model():
    refs = [(512, 512)] * 11
    assert "at most 10" in rejected(Options(model=PRO, prompt="x", size="2K"), refs)
    check(Options(model=V45, prompt="x", size="2K"), [(512, 512)] * 14)
    assert "takes no reference" in rejected(Options(model=V30, prompt="x", size="1024x1024 (1:1)"), [(512, 512)])
    assert "larger than 14" in rejected(Options(model=V45, prompt="x", size="2K"), [(14, 400)])
    assert "Crop or pad" in rejected(Options(model=V45, prompt="x", size="2K"), [(1700, 100)])


def test_sequential_total_and_support():
    message = rejected(Options(model=V45, prompt="x", size="2K", max_images=6), [(512, 512)] * 10)
    assert "10 references + max_images 6 = 16" in message and "max_images to 5" in message
    check(Options(model=V45, prompt="x", size="2K", max_images=5), [(512, 512)] * 10)
    assert "cannot generate image sequences" in rejected(Options(model=PRO, prompt="x", size="2K", max_images=2))
    assert "between 1 and 15" in rejected(Options(model=V45, prompt="x", size="2K", max_images=16))


def test_options_only_where_accepted():
    assert "fast" in rejected(Options(model=V45, prompt="x", size="2K", optimize_prompt="fast"))
    check(Options(model=V40, prompt="x", size="2K", optimize_prompt="fast"))
    assert "web search" in rejected(Options(model=V45, prompt="x", size="2K", web_search=True))
    assert check(Options(model=V45, prompt="x", size="2K", output_format="png")).notes


def body_for(opts, images=()):
    return request.build_body(opts, check(opts, [(64, 64)] * len(images)), list(images))


def test_body_for_45_text_to_image():
    assert body_for(Options(model=V45, prompt="a cat", size="2048x2048 (1:1)", seed=7, output_format="png")) == {
        "model": V45,
        "prompt": "a cat",
        "size": "2048x2048",
        "response_format": "url",
        "watermark": False,
        "sequential_image_generation": "disabled",
        "optimize_prompt_options": {"mode": "standard"},
        "stream": True,
    }


def test_body_for_sequential_with_references():
    body = body_for(Options(model=V50, prompt="story", size="2K", max_images=4, web_search=True), ["data:a", "data:b"])
    assert body["image"] == ["data:a", "data:b"]
    assert body["sequential_image_generation"] == "auto"
    assert body["sequential_image_generation_options"] == {"max_images": 4}
    assert body["output_format"] == "jpeg"
    assert body["tools"] == [{"type": "web_search"}]


def test_body_for_30_has_seed_and_guidance_only_there():
    body = body_for(Options(model=V30, prompt="x", size="1024x1024 (1:1)", seed=42, guidance_scale=5.5, watermark=True))
    assert body == {
        "model": V30, "prompt": "x", "size": "1024x1024", "response_format": "url", "watermark": True,
        "guidance_scale": 5.5, "seed": 42,
    }
    pro = body_for(Options(model=PRO, prompt="x", size="2K", optimize_prompt="fast"))
    assert "sequential_image_generation" not in pro and "seed" not in pro and "guidance_scale" not in pro
    assert pro["optimize_prompt_options"] == {"mode": "fast"}
    assert "stream" not in pro  # 5.0 pro does not stream (the service refuses it)


def test_size_choices_and_labels():
    choices = models.size_choices()
    assert choices[0] == "2K" and choices[-1] == "custom"
    assert "2848x1600 (16:9)" in choices and "3136x1344 (21:9)" in choices
    assert models.DEFAULT_SIZE in choices
    assert len(choices) == len(set(choices)) == 4 + 32 + 1


def test_user_models_file_adds_a_model(isolated_config):
    entry = {"like": V45, "label": "Seedream 9", "max_references": 3}
    (isolated_config / "models.json").write_text(json.dumps({"models": {"doubao-seedream-9-0-270101": entry}}))
    models.load_table.cache_clear()
    spec = models.load_table().get("doubao-seedream-9-0-270101")
    assert spec.label == "Seedream 9" and spec.max_references == 3 and spec.sequential
    assert "at most 3" in rejected(Options(model=spec.id, prompt="x", size="2K"), [(64, 64)] * 4)


def test_user_models_file_sets_a_price_and_checks_it(isolated_config):
    path = isolated_config / "models.json"
    path.write_text(json.dumps({"models": {PRO: {"price_per_image": 0.05}}}))
    models.load_table.cache_clear()
    assert models.load_table().get(PRO).price_per_image == 0.05
    path.write_text(json.dumps({"models": {PRO: {"price_per_image": "cheap"}}}))
    models.load_table.cache_clear()
    with pytest.raises(errors.ConfigurationError, match="price_per_image"):
        models.load_table()


def test_broken_user_models_file_is_a_clear_error(isolated_config):
    (isolated_config / "models.json").write_text('{"models": {"x": {"like": "nope"}}}')
    models.load_table.cache_clear()
    with pytest.raises(errors.ConfigurationError, match="unknown model 'nope'"):
        models.load_table()


def test_unknown_model_names_the_file():
    assert "models.json" in rejected(Options(model="no-such-model", prompt="x", size="2K"))
