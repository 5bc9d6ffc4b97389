"""The tags-only reader, and the image checks every reader shares (modes, corrupt files,
large images), exercised through it."""

import json

import numpy as np
import pytest
from PIL import Image

from tag2mask import cli
from tag2mask.core.errors import InputError
from tag2mask.dataset import tags
from tag2mask.dataset.images import load_rgb

LIMITS = {"max_image_pixels": 25_000_000, "large_images": "downscale"}


def rgb_array(h=12, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def write_csv(path, rows, header="image,labels"):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "b.jpg", "c.png", "sub/d.jpg"]):
        Image.fromarray(rgb_array(seed=i)).save(images / name)
    return images


def test_tags_reads_labels_and_skips_empty(folder, tmp_path):
    csv = write_csv(tmp_path / "labels.csv", [
        "a.jpg,dog cat", "b.jpg,cat", "c.png,", "sub/d.jpg,bird dog dog"])
    prepared = tags.read({"images": str(folder), "labels_csv": str(csv)}, tmp_path / "o", LIMITS)
    m = prepared.manifest
    assert prepared.ground_truth == {}
    assert m.classes == ["bird", "cat", "dog"]  # derived from the CSV, sorted
    assert [(r.id, r.labels) for r in m.images] == [
        ("a.jpg", ("cat", "dog")), ("b.jpg", ("cat",)), ("sub/d.jpg", ("bird", "dog"))]
    assert all(r.split == "train" and (r.width, r.height) == (16, 12) for r in m.images)
    assert m.stats["skipped"] == 1 and "line 4" in m.stats["skipped_files"][0]["reason"]
    assert m.stats["class_images"] == {"train": {"bird": 1, "cat": 2, "dog": 2}}
    assert "instances" not in m.stats

    # with a class list, its order is the class order
    prepared = tags.read({"images": str(folder), "labels_csv": str(csv),
                          "classes": ["dog", "cat", "bird", "horse"]}, tmp_path / "o", LIMITS)
    assert prepared.manifest.classes == ["dog", "cat", "bird", "horse"]
    assert prepared.manifest.images[0].labels == ("dog", "cat")


def test_multi_word_class_names_are_separated_by_semicolons(folder, tmp_path):
    """COCO's and VOC's own names hold spaces: `;` separates names, and a field without `;`
    is the older space-separated form."""
    csv = write_csv(tmp_path / "labels.csv", [
        'a.jpg,traffic light;potted plant', 'b.jpg,"dining table; cat "', "c.png,traffic light;",
        "sub/d.jpg,cat dog"])
    m = tags.read({"images": str(folder), "labels_csv": str(csv)}, tmp_path / "o",
                  LIMITS).manifest
    assert m.classes == ["cat", "dining table", "dog", "potted plant", "traffic light"]
    assert [(r.id, r.labels) for r in m.images] == [
        ("a.jpg", ("potted plant", "traffic light")), ("b.jpg", ("cat", "dining table")),
        ("c.png", ("traffic light",)), ("sub/d.jpg", ("cat", "dog"))]
    with pytest.raises(InputError, match="line 2: unknown class 'traffic'"):
        tags.read_rows(write_csv(tmp_path / "old.csv", ["a.jpg,traffic light"]),
                       classes=["traffic light"])


def test_tags_val_fraction_is_a_stable_hash(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    names = [f"img{i:03d}.png" for i in range(40)]
    for name in names:
        Image.fromarray(rgb_array(4, 4)).save(images / name)
    csv = write_csv(tmp_path / "l.csv", [f"{n},cat" for n in names])
    opts = {"images": str(images), "labels_csv": str(csv), "val_fraction": 0.3}
    m = tags.read(opts, tmp_path / "o", LIMITS).manifest
    val = {r.id for r in m.split("val")}
    assert val == {n for n in names if tags.in_val(n, 0.3)}
    assert 4 <= len(val) <= 20  # 12 expected
    # a smaller CSV (other rows dropped) keeps each image in its split
    write_csv(csv, [f"{n},cat" for n in names[::3]])
    m2 = tags.read(opts, tmp_path / "o", LIMITS).manifest
    assert {r.id for r in m2.split("val")} == val & set(names[::3])
    # train first, then val, in CSV order within each
    assert [r.split for r in m.images] == sorted(r.split for r in m.images)


@pytest.mark.parametrize("rows, header, problem", [
    (["a.jpg,cat zebra"], "image,labels", "line 2: unknown class 'zebra'"),
    (["a.jpg,cat", "b.jpg,dog", "a.jpg,dog"], "image,labels",
     "line 4: image 'a.jpg' already listed on line 2"),
    (["a.jpg,cat", "missing.jpg,cat"], "image,labels", "line 3: image 'missing.jpg' not found"),
    (["a.jpg,cat"], "file,tags", "header"),
    (["a.jpg,cat,dog"], "image,labels", "line 2: expected 2 columns"),
])
def test_tags_errors_name_csv_and_line(folder, tmp_path, rows, header, problem):
    csv = write_csv(tmp_path / "labels.csv", rows, header=header)
    with pytest.raises(InputError, match=problem) as e:
        tags.read({"images": str(folder), "labels_csv": str(csv), "classes": ["cat", "dog"]},
                  tmp_path / "o", LIMITS)
    assert e.value.where == str(csv)


def test_tags_missing_inputs(folder, tmp_path):
    with pytest.raises(InputError, match="not found") as e:
        tags.read({"images": str(folder), "labels_csv": str(tmp_path / "no.csv")}, tmp_path, LIMITS)
    assert e.value.where.endswith("no.csv")
    with pytest.raises(InputError, match="labels_csv"):
        tags.read({"images": str(folder)}, tmp_path, LIMITS)


def test_cli_reports_input_error_in_one_line(folder, tmp_path, capsys):
    csv = write_csv(tmp_path / "labels.csv", ["a.jpg,zebra"])
    cfg = {"kind": "tags", "tags": {"images": str(folder), "labels_csv": str(csv),
                                    "classes": ["cat"]}}
    rc = cli.main(["dataset", "prepare", "--config", json.dumps(cfg),
                   "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert str(csv) in err and "zebra" in err and "line 2" in err
    write_csv(csv, ["a.jpg,cat", "b.jpg,cat"])
    cfg["tags"]["val_fraction"] = 0.0
    assert cli.main(["dataset", "prepare", "--config", json.dumps(cfg),
                     "--out-dir", str(tmp_path / "o")]) == 0
    data = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert data["ground_truth"] == {} and len(data["images"]) == 2
    assert not (tmp_path / "o" / "gt").exists()


# --- image checks shared by all readers -----------------------------------------------------

def write_modes(folder):
    """One image per mode that needs converting; returns {name: expected RGB array}."""
    base = rgb_array(10, 14, seed=3)
    gray = base[..., 0]
    Image.fromarray(gray, "L").save(folder / "gray.jpg", quality=95)
    Image.fromarray(base).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    rgba = np.dstack([base, np.full(gray.shape, 255, np.uint8)])
    rgba[0, 0, 3] = 0  # one transparent pixel: composited onto white
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "deep.png")  # 16-bit
    Image.fromarray(base).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "pal.png")
    assert Image.open(folder / "deep.png").mode.startswith("I")
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK"
    return base, gray


def test_non_rgb_images_are_counted_and_load_as_rgb(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    base, gray = write_modes(images)
    Image.fromarray(base).save(images / "plain.jpg")
    names = ["gray.jpg", "cmyk.jpg", "rgba.png", "deep.png", "pal.png", "plain.jpg"]
    csv = write_csv(tmp_path / "l.csv", [f"{n},cat" for n in names])
    m = tags.read({"images": str(images), "labels_csv": str(csv)}, tmp_path / "o", LIMITS).manifest
    assert m.stats["converted_to_rgb"] == 5 and m.stats["skipped"] == 0
    for r in m.images:
        assert (r.width, r.height) == (14, 10)
        arr = load_rgb(r.path)
        assert arr.shape == (10, 14, 3) and arr.dtype == np.uint8
    assert np.array_equal(load_rgb(images / "deep.png")[..., 1], gray)
    assert tuple(load_rgb(images / "rgba.png")[0, 0]) == (255, 255, 255)
    assert np.array_equal(load_rgb(images / "rgba.png")[1:, 1:], base[1:, 1:])
    assert np.abs(load_rgb(images / "cmyk.jpg").astype(int) - base).mean() < 12


def test_corrupt_images_are_skipped_and_counted(folder, tmp_path):
    data = (folder / "a.jpg").read_bytes()
    (folder / "a.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (folder / "c.png").write_text("this is not an image")
    csv = write_csv(tmp_path / "l.csv", ["a.jpg,cat", "b.jpg,cat", "c.png,cat"])
    m = tags.read({"images": str(folder), "labels_csv": str(csv)}, tmp_path / "o", LIMITS).manifest
    assert [r.id for r in m.images] == ["b.jpg"]
    assert m.stats["skipped"] == 2
    skipped = sorted(s["path"].rsplit("/", 1)[1] for s in m.stats["skipped_files"])
    assert skipped == ["a.jpg", "c.png"]
    assert all("cannot decode" in s["reason"] for s in m.stats["skipped_files"])


def test_large_images_downscaled_or_skipped(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rgb_array(200, 320, seed=1)).save(images / "big.jpg", quality=90)
    Image.fromarray(rgb_array(200, 320, seed=1)).convert("L").save(images / "biggray.png")
    Image.fromarray(rgb_array(20, 30, seed=2)).save(images / "small.jpg")
    csv = write_csv(tmp_path / "l.csv", ["big.jpg,cat", "biggray.png,cat", "small.jpg,cat"])
    opts = {"images": str(images), "labels_csv": str(csv)}
    out = tmp_path / "out"
    m = tags.read(opts, out, {"max_image_pixels": 4000, "large_images": "downscale"}).manifest
    big, gray, small = m.images
    assert small.path == str(images / "small.jpg") and (small.width, small.height) == (30, 20)
    for r in (big, gray):
        assert r.path.startswith(str(out / "resized")) and r.width * r.height <= 4000
        assert abs(r.width / r.height - 1.6) < 0.05  # aspect ratio kept
        with Image.open(r.path) as img:
            assert img.mode == "RGB" and img.size == (r.width, r.height)
    assert m.stats["downscaled"] == 2 and m.stats["skipped"] == 0
    # the copy looks like the original, scaled
    orig = np.asarray(Image.open(images / "big.jpg").resize((big.width, big.height)), float)
    assert np.abs(load_rgb(big.path).astype(float) - orig).mean() < 25

    m = tags.read(opts, out, {"max_image_pixels": 4000, "large_images": "skip"}).manifest
    assert [r.id for r in m.images] == ["small.jpg"]
    assert m.stats["skipped"] == 2 and "max_image_pixels" in m.stats["skipped_files"][0]["reason"]
