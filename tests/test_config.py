import pytest
import yaml

from tag2mask.core.config import apply_defaults, section_options, validate_config
from tag2mask.core.errors import InputError
from tag2mask.core.schema import SCHEMA_PATH, load_yaml


def test_default_config_is_valid(repo):
    validate_config(load_yaml(repo / "config/config.yaml"))


def test_every_schema_key_is_documented_with_a_default():
    def walk(schema, path):
        for key, sub in schema.get("properties", {}).items():
            where = f"{path}.{key}".lstrip(".")
            assert sub.get("description"), f"{where} has no description"
            assert "default" in sub, f"{where} has no default"
            if sub.get("type") == "object":
                assert sub.get("additionalProperties") is False, f"{where} accepts unknown keys"
                walk(sub, where)
    walk(load_yaml(SCHEMA_PATH), "")


@pytest.mark.parametrize("config, key", [
    ({"shards": "two"}, "shards"),
    ({"dataset": {"kind": "imagenet"}}, "dataset.kind"),
    ({"dataset": {"synthetic": {"sed": 1}}}, "dataset.synthetic"),
    ({"typo_key": 1}, "(top level)"),
])
def test_errors_name_the_key(config, key):
    with pytest.raises(InputError) as e:
        validate_config(config, where="my.yaml")
    assert f"config key {key}:" in str(e.value) and "my.yaml" in str(e.value)


def test_section_options_from_inline_json_and_from_yaml(tmp_path):
    opts = section_options('{"kind": "voc", "voc": {"root": "/x"}}', "dataset")
    assert opts["voc"]["root"] == "/x" and opts["voc"]["train_split"] == "train"
    assert opts["max_image_pixels"] > 0  # default filled in
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"kind": "tags"}}))
    assert section_options(str(path), "dataset")["kind"] == "tags"
    with pytest.raises(InputError, match="dataset.kind"):
        section_options('{"kind": 3}', "dataset")


def test_apply_defaults_fills_nested_objects():
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "default": {}, "properties": {"b": {"default": 2}}}}}
    assert apply_defaults({}, schema) == {"a": {"b": 2}}
    assert apply_defaults({"a": {"b": 5}}, schema) == {"a": {"b": 5}}
