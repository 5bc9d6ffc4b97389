"""The manifest: records, validation, and the JSON round trip (docs/formats.md)."""

import json

import pytest

from tag2mask.core.errors import InputError
from tag2mask.dataset.manifest import (
    RECORD_KEYS,
    Manifest,
    make_record,
    read_manifest,
    validate,
    write_manifest,
)

CLASSES = ["aeroplane", "bicycle", "person"]


def sample(tmp_path):
    inside = tmp_path / "ds" / "resized" / "x.png"
    outside = tmp_path / "elsewhere" / "y.jpg"
    images = [
        make_record("x", inside, 10, 8, "train", ["person", "aeroplane", "person"], CLASSES),
        make_record("y", outside, 5, 6, "val", ["bicycle"], CLASSES),
        make_record("z", outside.with_name("z.jpg"), 7, 7, "train", ["person"], CLASSES),
    ]
    return Manifest("voc", CLASSES, images, {"images": 3}, {"val": "gt/val.json"})


def test_make_record_sorts_labels_by_class_index_and_refuses_unknown():
    r = make_record(7, "/a.jpg", 10.0, 8, "train", ["person", "aeroplane", "person"], CLASSES)
    assert r.id == "7" and r.labels == ("aeroplane", "person") and r.width == 10
    with pytest.raises(InputError, match="cat") as e:
        make_record("a", "/a.jpg", 1, 1, "train", ["cat"], CLASSES)
    assert e.value.where == "/a.jpg"


def test_round_trip_relative_and_absolute_paths(tmp_path):
    m = sample(tmp_path)
    path = tmp_path / "ds" / "manifest.json"
    write_manifest(path, m)
    data = json.loads(path.read_text())
    assert data["format"] == "tag2mask-manifest" and data["version"] == 1
    assert [set(rec) for rec in data["images"]] == [set(RECORD_KEYS)] * 3
    assert data["images"][0]["path"] == "resized/x.png"  # inside the manifest folder
    assert data["images"][1]["path"] == str(tmp_path / "elsewhere" / "y.jpg")
    assert data["images"][0]["labels"] == ["aeroplane", "person"]

    back = read_manifest(path)
    assert back.images == m.images  # paths absolute again
    assert back.splits == ["train", "val"]
    assert [r.id for r in back.split("train")] == ["x", "z"]
    assert [back.coco_image_id(i) for i in ("x", "y", "z")] == [1, 2, 3]
    assert back.label_indices(back.images[0]) == [0, 2]
    assert back.ground_truth == {"val": "gt/val.json"}
    assert back.stats == {"images": 3}


def test_read_refuses_extra_keys_wrong_format_and_bad_json(tmp_path):
    path = tmp_path / "manifest.json"
    write_manifest(path, sample(tmp_path))
    data = json.loads(path.read_text())
    data["images"][1]["masks"] = []
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="unexpected keys") as e:
        read_manifest(path)
    assert e.value.where == str(path)
    path.write_text(json.dumps({**data, "format": "something-else"}))
    with pytest.raises(InputError, match="not a tag2mask-manifest"):
        read_manifest(path)
    path.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_manifest(path)
    with pytest.raises(InputError, match="not found"):
        read_manifest(tmp_path / "missing.json")


@pytest.mark.parametrize("change, problem", [
    (lambda m: m.images.append(m.images[0]), "duplicate image id"),
    (lambda m: m.images.__setitem__(0, m.images[0].__class__(
        "x", "/x", 10, 8, "train", ())), "empty tag list"),
    (lambda m: m.images.__setitem__(0, m.images[0].__class__(
        "x", "/x", 0, 8, "train", ("person",))), "bad image size"),
    (lambda m: m.images.__setitem__(0, m.images[0].__class__(
        "x", "/x", 10, 8, "train", ("dog",))), "unknown class"),
    (lambda m: m.images.clear(), "no usable images"),
    (lambda m: m.classes.append("person"), "duplicate class names"),
])
def test_validate_rejects_broken_manifests(tmp_path, change, problem):
    m = sample(tmp_path)
    m.classes = list(m.classes)
    validate(m)
    change(m)
    with pytest.raises(InputError, match=problem):
        validate(m)
    with pytest.raises(InputError, match=problem):
        write_manifest(tmp_path / "m.json", m)
    assert not (tmp_path / "m.json").exists()
