"""The model list (SIGLIP_MODEL, models files), model names and the Triton names they give."""

from __future__ import annotations

import json

import pytest

from gateway.contract import (
    PLAIN_NAMES,
    TritonNames,
    base_model,
    triton_names,
)
from gateway.model_specs import (
    DEFAULT_CHECKPOINT,
    ModelSpec,
    ModelSpecError,
    default_name,
    find_models,
    load_models_file,
    parse_model_list,
    resolve_models,
)


@pytest.mark.parametrize(("checkpoint", "name"), [
    ("google/siglip-base-patch16-256", "siglip-base-patch16-256"),
    ("google/siglip2-so400m-patch14-384/", "siglip2-so400m-patch14-384"),
    ("/data/ckpts/My_Model.v2", "my-model-v2"),
    ("C:\\models\\SigLIP", "siglip"),
    ("___", "model"),
])
def test_default_names_come_from_the_checkpoints_last_path_part(checkpoint, name):
    assert default_name(checkpoint) == name


def test_model_list_entries_are_optionally_named():
    assert parse_model_list("base=google/siglip-base-patch16-256, /ckpt/so400m") == [
        ModelSpec("base", "google/siglip-base-patch16-256"), ModelSpec("so400m", "/ckpt/so400m")]
    # "=" inside a path is part of the path, not a name.
    assert parse_model_list("/data/run=3/ckpt") == [ModelSpec("ckpt", "/data/run=3/ckpt")]
    with pytest.raises(ModelSpecError, match="model name 'Base'"):
        parse_model_list("Base=google/siglip-base-patch16-256")
    with pytest.raises(ModelSpecError, match="'base=' names no checkpoint"):
        parse_model_list("base=,other=/c")


def test_no_model_given_serves_the_default_checkpoint():
    assert resolve_models("", "") == [ModelSpec("siglip-base-patch16-256", DEFAULT_CHECKPOINT)]


def test_models_files_in_toml_and_json_give_per_model_limits(tmp_path):
    toml = tmp_path / "models.toml"
    toml.write_text('[[models]]\nname = "base"\ncheckpoint = "google/siglip-base-patch16-256"\n'
                    '\n[[models]]\ncheckpoint = "/c/so400m"\nmax_images = 8\n'
                    'text_cache_size = 0\nmax_in_flight = 4\n')
    specs = load_models_file(toml)
    assert specs == [ModelSpec("base", "google/siglip-base-patch16-256"),
                     ModelSpec("so400m", "/c/so400m", text_cache_size=0, max_images=8,
                               max_in_flight=4)]
    assert specs[1].setting("max_images", 64) == 8 and specs[0].setting("max_images", 64) == 64
    as_json = tmp_path / "models.json"
    as_json.write_text(json.dumps({"models": [{"checkpoint": "/c/so400m", "max_images": 8,
                                               "text_cache_size": 0, "max_in_flight": 4}]}))
    assert load_models_file(as_json) == specs[1:]


@pytest.mark.parametrize(("content", "message"), [
    ('[[models]]\nname = "a"\n', r"models\[0\]: 'checkpoint' .* is required"),
    ('[[models]]\ncheckpoint = "x"\nmax_image = 3\n', r"models\[0\]: unknown key 'max_image'"),
    ('[[models]]\ncheckpoint = "x"\nmax_images = 0\n', r"max_images must be a whole number"),
    ('[[models]]\ncheckpoint = "x"\nmax_texts = true\n', r"max_texts must be a whole number"),
    ('[[models]]\ncheckpoint = "x"\nname = "A B"\n', r"name 'A B': lowercase"),
    ('models = 3\n', r"want one list named 'models'"),
    ('[[models]\n', r"invalid TOML"),
])
def test_models_file_mistakes_name_the_entry(tmp_path, content, message):
    path = tmp_path / "models.toml"
    path.write_text(content)
    with pytest.raises(ModelSpecError, match=message):
        load_models_file(path)


def test_a_models_file_of_another_format_is_refused(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models: []\n")
    with pytest.raises(ModelSpecError, match=r"ends in \.toml or \.json"):
        load_models_file(path)


def test_names_must_be_unique_and_the_two_settings_exclusive(tmp_path):
    with pytest.raises(ModelSpecError, match="two models are named 'ckpt'"):
        resolve_models("/a/ckpt,/b/ckpt", "")
    with pytest.raises(ModelSpecError, match="not both"):
        resolve_models("x", str(tmp_path / "m.toml"))


def test_requests_find_models_by_name_checkpoint_or_last_path_part():
    specs = [ModelSpec("base", "google/siglip-base-patch16-256"),
             ModelSpec("big", "google/siglip-so400m-patch14-384"),
             ModelSpec("big2", "/other/siglip-so400m-patch14-384")]
    assert find_models(specs, "") == specs[:1]
    assert find_models(specs, "big") == specs[1:2]
    assert find_models(specs, "google/siglip-base-patch16-256") == specs[:1]
    assert find_models(specs, "siglip-base-patch16-256") == specs[:1]
    assert find_models(specs, "siglip-so400m-patch14-384") == specs[1:]  # ambiguous
    assert find_models(specs, "Base") == []


def test_one_model_keeps_the_plain_triton_names_several_are_suffixed():
    assert triton_names(["only"]) == {"only": PLAIN_NAMES}
    names = triton_names(["a", "so400m"])
    assert names["so400m"] == TritonNames("siglip_vision__so400m", "siglip_text__so400m",
                                          "siglip_image_decode__so400m",
                                          "siglip_vision_encoded__so400m")
    assert {base_model(m) for m in names["a"].towers(True)} == {
        "siglip_vision", "siglip_text", "siglip_vision_encoded"}
    assert base_model("siglip_vision_encoded") == "siglip_vision_encoded"
