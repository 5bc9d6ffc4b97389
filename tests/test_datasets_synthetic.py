"""The built-in synthetic dataset: determinism, statistics, colour gives no shortcut, contracts."""

import json
import math

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy.ndimage import binary_dilation
from synthetic_difficulty import (
    best_threshold_balanced_accuracy,
    colour_shortcuts,
    nearest_mean_accuracy,
)

from tag2mask.core.errors import InputError
from tag2mask.core.masks import decode
from tag2mask.dataset import synthetic
from tag2mask.dataset.cli import prepare
from tag2mask.dataset.manifest import RECORD_KEYS, read_manifest

DEFAULTS = {"seed": 0, "train_images": 6, "val_images": 3, "image_size": 64,
            "min_instances": 1, "max_instances": 6, "min_object_size": 0.2,
            "max_object_size": 0.5, "max_rotation": 25}
LIMITS = {"max_image_pixels": 25_000_000, "large_images": "downscale"}


def dataset_cfg(**synthetic_options):
    return {"kind": "synthetic", **LIMITS, "synthetic": {**DEFAULTS, **synthetic_options}}


@pytest.fixture(scope="module")
def samples():
    """60 images at the demo's settings (128 px, 1-6 instances)."""
    return [synthetic.generate_image(3, "train", i) for i in range(60)]


# ---------------------------------------------------------------- determinism

def _dataset_bytes(out_dir):
    files = sorted((out_dir / "images").rglob("*.png"))
    return {f.relative_to(out_dir).as_posix(): f.read_bytes() for f in files}


def _gt_without_paths(out_dir, split):
    gt = json.loads((out_dir / "gt" / f"{split}.json").read_text())
    for image in gt["images"]:
        image.pop("file_name")  # absolute path of the image, differs between folders
    return gt


def test_same_seed_gives_identical_dataset_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    prepare(dataset_cfg(seed=7), a)
    prepare(dataset_cfg(seed=7), b)
    prepare(dataset_cfg(seed=8), c)
    files_a, files_b, files_c = _dataset_bytes(a), _dataset_bytes(b), _dataset_bytes(c)
    assert len(files_a) == 9
    assert files_a == files_b
    for split in ("train", "val"):
        assert _gt_without_paths(a, split) == _gt_without_paths(b, split)
        assert _gt_without_paths(a, split) != _gt_without_paths(c, split)
    assert files_a.keys() == files_c.keys()
    assert all(files_a[k] != files_c[k] for k in files_a)
    assert (a / "manifest.json").read_text() == (b / "manifest.json").read_text()


def test_each_image_depends_only_on_seed_split_and_index(tmp_path):
    prepare(dataset_cfg(seed=5), tmp_path)
    m = read_manifest(tmp_path / "manifest.json")
    # generated alone, in reverse order, the images equal those the reader wrote
    for record in reversed(m.images):
        index = int(record.id.split("_")[1])
        alone = synthetic.generate_image(5, record.split, index, 64)
        assert np.array_equal(np.asarray(Image.open(record.path)), alone.rgb)
    # train and val streams differ even at the same index
    assert not np.array_equal(synthetic.generate_image(5, "train", 0, 64).rgb,
                              synthetic.generate_image(5, "val", 0, 64).rgb)


# ---------------------------------------------------------------- statistics

def test_instance_counts_classes_and_balance(samples):
    counts = np.array([len(s.classes) for s in samples])
    assert counts.min() >= 1 and counts.max() <= 6
    assert len(set(counts.tolist())) >= 5  # the whole range is used, not one fixed count
    present = np.zeros((len(samples), len(synthetic.CLASSES)), bool)
    for i, s in enumerate(samples):
        present[i, s.classes] = True
    per_class = present.mean(axis=0)
    assert per_class.min() > 0  # every class appears
    # roughly balanced image frequency: no class under half or over 1.6x the average
    assert per_class.min() >= 0.5 * per_class.mean()
    assert per_class.max() <= 1.6 * per_class.mean()


def test_instance_counts_follow_config():
    for i in range(20):
        s = synthetic.generate_image(1, "train", i, 96, min_instances=3, max_instances=4)
        assert 3 <= len(s.classes) <= 4


def test_masks_nonempty_disjoint_and_substantial(samples):
    size = samples[0].rgb.shape[0]
    min_pixels = synthetic.MIN_PIXELS_FRACTION * size * size
    for s in samples:
        assert s.masks.shape == (len(s.classes), size, size) and s.masks.dtype == bool
        assert (s.masks.sum(axis=(1, 2)) >= min_pixels).all()
        assert (s.masks.sum(axis=0) <= 1).all()  # disjoint


def test_occluded_instances_keep_half_of_their_area():
    rng = np.random.default_rng(0)
    occluded = 0
    for _ in range(40):
        full, classes = synthetic.place_instances(rng, 96, 6, 0.2, 0.5)
        visible = synthetic.visible_parts(full)
        own, left = full.sum(axis=(1, 2)), visible.sum(axis=(1, 2))
        assert (left >= synthetic.MIN_VISIBLE * own).all()
        assert (left[-1] == own[-1])  # the top instance is whole
        occluded += int((left < own).sum())
    assert occluded >= 20  # occlusion really happens


def _touching(masks):
    grown = [binary_dilation(m) for m in masks]
    return any((grown[i] & masks[j]).any()
               for i in range(len(masks)) for j in range(len(masks)) if i != j)


def test_instances_touch_and_scales_vary(samples):
    several = [s for s in samples if len(s.classes) >= 2]
    touching = sum(_touching(s.masks) for s in several)
    assert touching >= 0.4 * len(several)
    # object extent (largest box side of the visible part) over the image side
    size = samples[0].rgb.shape[0]
    extents = []
    for s in samples:
        for m in s.masks:
            ys, xs = np.nonzero(m)
            extents.append(max(np.ptp(ys), np.ptp(xs)) + 1)
    extents = np.array(extents) / size
    # objects of 0.2-0.5 x the side (enclosing circle); occlusion leaves smaller visible parts
    assert extents.min() < 0.2 and extents.max() > 0.4
    assert np.percentile(extents, 75) / np.percentile(extents, 25) > 1.3
    assert np.percentile(extents, 95) / np.percentile(extents, 5) > 2.0


def test_objects_are_textured_not_flat(samples):
    # colour spread inside each instance well above the added pixel noise, for most instances
    spreads = [s.rgb[m].astype(float).std(axis=0).max() for s in samples for m in s.masks]
    assert np.median(spreads) > 2 * synthetic.PIXEL_NOISE


# ---------------------------------------------------------------- colour is no shortcut

def test_measures_detect_colour_coded_data():
    # known answers on constructed data where colour does tell class and foreground
    rng = np.random.default_rng(0)
    y = rng.integers(3, size=300)
    x = np.eye(3)[y] * 100 + rng.normal(0, 10, (300, 3))
    assert nearest_mean_accuracy(x[:150], y[:150], x[150:], y[150:], 3) > 0.95
    values = rng.normal(0, 1, 1000)
    assert best_threshold_balanced_accuracy(values, values > 0.3) == 1.0
    assert best_threshold_balanced_accuracy(values, values < -0.3) == 1.0
    assert best_threshold_balanced_accuracy(values, rng.random(1000) < 0.2) < 0.6


def test_colour_shortcuts_flag_colour_coded_images(samples):
    # the same masks, recoloured: dark background, one bright colour per class
    class_colours = np.array([[255, 60, 60], [60, 255, 60], [60, 60, 255],
                              [255, 255, 60], [255, 60, 255], [60, 255, 255]], np.uint8)
    coded = []
    for s in samples[:20]:
        rgb = np.full_like(s.rgb, 20)
        for m, c in zip(s.masks, s.classes):
            rgb[m] = class_colours[c]
        coded.append(synthetic.SyntheticImage(rgb, s.masks, s.classes))
    stats = colour_shortcuts(coded)
    assert stats["instance_class_accuracy"] == 1.0
    assert stats["global_threshold"] == 1.0
    assert stats["per_image_threshold_median"] == 1.0


def test_colour_gives_no_shortcut(samples):
    stats = colour_shortcuts(samples)
    assert 0.05 < stats["foreground_fraction"] < 0.5
    # an instance's mean colour does not tell its class: chance is 1/6, colour-coded ~1
    assert stats["instance_class_accuracy"] < 0.3
    # one threshold on one colour feature over the dataset: close to chance (0.5)
    assert stats["global_threshold"] < 0.6
    # even the best threshold chosen per image with the answer known leaves much of it wrong
    assert stats["per_image_threshold_median"] < 0.92


# ---------------------------------------------------------------- shapes

@pytest.mark.parametrize("name, unit_area", [
    ("circle", math.pi), ("square", 2.0), ("triangle", 3 * math.sqrt(3) / 4),
    ("ring", math.pi * (1 - 0.5 ** 2)), ("cross", 4 * 0.95 * 0.32 * 2 - (2 * 0.32) ** 2)])
def test_shape_areas(name, unit_area):
    r = 40
    for angle in (0.0, 0.7):
        m = synthetic.shape_mask(name, 128, 64, 64, r, angle, 1.0, ring_inner=0.5)
        assert m.sum() == pytest.approx(unit_area * r * r, rel=0.04)
        ys, xs = np.nonzero(m)
        assert ((ys + 0.5 - 64) ** 2 + (xs + 0.5 - 64) ** 2).max() <= (r + 1.5) ** 2


def test_upright_pose_and_rotation_limit():
    # angle 0: the triangle points up (one pixel-wide apex on top, the wide base at the bottom)
    tri = synthetic.shape_mask("triangle", 128, 64, 64, 40, 0.0, 1.0)
    rows = np.nonzero(tri.any(axis=1))[0]
    assert tri[rows[0]].sum() < 5 and tri[rows[-1]].sum() > 50

    def square_is_axis_aligned(max_rotation):
        rng = np.random.default_rng(1)
        aligned = []
        for _ in range(60):
            full, classes = synthetic.place_instances(rng, 96, 1, 0.3, 0.45, max_rotation)
            if classes[0] == synthetic.CLASSES.index("square"):
                ys, xs = np.nonzero(full[0])
                aligned.append(full[0].sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        return aligned

    assert all(square_is_axis_aligned(0.0))
    assert not all(square_is_axis_aligned(180.0))


def test_star_is_not_convex():
    m = synthetic.shape_mask("star", 128, 64, 64, 40, 0.0, 1.0)
    from skimage.morphology import convex_hull_image
    assert m.sum() < 0.75 * convex_hull_image(m).sum()


# ---------------------------------------------------------------- contracts

def test_manifest_and_ground_truth_contracts(tmp_path):
    prepare(dataset_cfg(seed=2, train_images=5, val_images=3), tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["classes"] == list(synthetic.CLASSES)
    assert raw["ground_truth"] == {"train": "gt/train.json", "val": "gt/val.json"}
    assert raw["stats"] == {"images": 8, "skipped": 0, "skipped_files": [], "seed": 2}
    for rec in raw["images"]:
        assert set(rec) == set(RECORD_KEYS)  # no masks, boxes or counts
        assert rec["path"] == f"images/{rec['split']}/{rec['id']}.png"
    m = read_manifest(tmp_path / "manifest.json")
    assert [r.split for r in m.images] == ["train"] * 5 + ["val"] * 3
    for split in ("train", "val"):
        coco = COCO(str(tmp_path / "gt" / f"{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(synthetic.CLASSES)
        for image in coco.dataset["images"]:
            record = m.images[image["id"] - 1]  # COCO id = 1-based manifest position
            assert record.id == image["name"] and record.split == split
            assert np.asarray(Image.open(record.path)).shape == (64, 64, 3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            names = {synthetic.CLASSES[a["category_id"] - 1] for a in anns}
            assert set(record.labels) == names  # labels = classes of the visible instances
            masks = np.stack([coco.annToMask(a) for a in anns]).astype(bool)
            assert masks.any(axis=(1, 2)).all() and (masks.sum(axis=0) <= 1).all()
            expected = synthetic.generate_image(2, split, int(record.id.split("_")[1]), 64)
            assert np.array_equal(masks, expected.masks)
            rle = decode([a["segmentation"]["counts"] for a in anns], 64, 64)
            assert np.array_equal(rle, masks)


def test_no_val_split(tmp_path):
    m = prepare(dataset_cfg(val_images=0, train_images=2), tmp_path)
    assert m.splits == ["train"] and list(m.ground_truth) == ["train"]
    assert not (tmp_path / "gt" / "val.json").exists()


@pytest.mark.parametrize("options, key", [
    ({"min_instances": 4, "max_instances": 2}, "min_instances"),
    ({"seed": -1}, "seed"),
    ({"image_size": 6000}, "max_image_pixels"),
])
def test_bad_options_are_input_errors(tmp_path, options, key):
    with pytest.raises(InputError, match=key):
        prepare(dataset_cfg(**options), tmp_path)


def test_schema_defaults_match_generator_defaults():
    import inspect

    from tag2mask.core.config import section_options
    options = section_options('{"kind": "synthetic"}', "dataset")["synthetic"]
    assert set(options) == set(DEFAULTS)
    params = inspect.signature(synthetic.generate_image).parameters
    for key in ("min_instances", "max_instances", "min_object_size", "max_object_size",
                "max_rotation"):
        assert params[key].default == options[key], key
    assert params["size"].default == options["image_size"]
