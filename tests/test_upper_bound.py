"""Upper bound: GT -> "pseudo_masks" store conversion, and GT stays out of the weak pipeline."""

import json
import re

import numpy as np
import pytest
from conftest import REPO, build_manifest

from tag2mask.core import masks as rle
from tag2mask.core.errors import InputError
from tag2mask.core.store import StoreReader
from tag2mask.dataset.groundtruth import CocoBuilder
from tag2mask.dataset.manifest import read_manifest
from tag2mask.upper_bound.gt_masks import gt_to_pseudo_mask_store


def _box_mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def gt_case(tmp_path):
    """3 train images 32x40: img0 two instances (+ a crowd region), img1 one, img2 none."""
    manifest_path = build_manifest(tmp_path, n_images=3)
    manifest = read_manifest(manifest_path)
    h, w = 32, 40
    masks = {
        "img0": ([_box_mask(h, w, 2, 10, 3, 12), _box_mask(h, w, 15, 30, 20, 39)], [0, 2]),
        "img1": ([_box_mask(h, w, 5, 6, 5, 30)], [1]),
        "img2": ([], []),
    }
    b = CocoBuilder(manifest.classes)
    for rec in manifest.images:
        m, c = masks[rec.id]
        crowd = [(1, _box_mask(h, w, 0, 4, 30, 40))] if rec.id == "img0" else None
        b.add_image(manifest.coco_image_id(rec.id), rec, np.array(m).reshape(-1, h, w), c,
                    crowd=crowd)
    gt_path = tmp_path / "gt_train.json"
    gt_path.write_text(json.dumps(b.to_dict()))
    return manifest_path, gt_path, masks


def test_gt_store_holds_the_gt_masks_and_classes(gt_case, tmp_path):
    manifest_path, gt_path, expected = gt_case
    out = tmp_path / "ub" / "gt_training_masks.h5"
    images, instances = gt_to_pseudo_mask_store(gt_path, manifest_path, out)
    assert (images, instances) == (3, 3)  # the crowd region is not an instance
    with StoreReader(out, "pseudo_masks") as s:
        assert s.class_names == ["a", "b", "c"]
        assert sorted(s.image_ids) == ["img0", "img1", "img2"]
        for image_id, (masks, labels) in expected.items():
            e = s.read(image_id)
            assert (e["height"], e["width"]) == (32, 40)
            got = rle.decode(e["masks"], 32, 40)
            assert len(got) == len(masks)
            for g, m in zip(got, masks):
                np.testing.assert_array_equal(g, m)
            assert e["labels"].tolist() == labels
            assert e["labels"].dtype == np.int16
            np.testing.assert_array_equal(e["scores"], np.ones(len(masks), np.float32))
            np.testing.assert_array_equal(e["peak_index"], -np.ones(len(masks), np.int32))
            assert e["boxes"].shape == (len(masks), 4)
            assert e["peak_yx"].shape == (len(masks), 2)
        e = s.read("img0")
        np.testing.assert_array_equal(e["boxes"], [[3, 2, 12, 10], [20, 15, 39, 30]])


def test_gt_store_trains_like_a_pseudo_mask_store(gt_case, tmp_path):
    """The Mask R-CNN dataset reads it unchanged (same layout as retrieval's store)."""
    from tag2mask.maskrcnn.model import PseudoMaskDataset
    manifest_path, gt_path, _ = gt_case
    out = tmp_path / "gt.h5"
    gt_to_pseudo_mask_store(gt_path, manifest_path, out)
    ds = PseudoMaskDataset(out, read_manifest(manifest_path))
    assert len(ds) == 2  # img2 has no instance and is skipped
    image, target = ds[0]
    assert target["labels"].tolist() == [1, 3]  # class index + 1
    assert target["masks"].shape == (2, 32, 40)


def test_gt_with_other_classes_or_missing_images_is_refused(gt_case, tmp_path):
    manifest_path, gt_path, _ = gt_case
    gt = json.loads(gt_path.read_text())
    bad = dict(gt, categories=[{"id": 1, "name": "x"}, {"id": 2, "name": "b"},
                               {"id": 3, "name": "c"}])
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(InputError, match="categories"):
        gt_to_pseudo_mask_store(p, manifest_path, tmp_path / "o.h5")
    missing = dict(gt, images=gt["images"][:2])
    p.write_text(json.dumps(missing))
    with pytest.raises(InputError, match="not in the ground truth"):
        gt_to_pseudo_mask_store(p, manifest_path, tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


# Rules allowed to read ground truth: evaluation, the upper-bound run (its GT-to-store
# conversion and the training/prediction on that store), and the report (evaluation side).
# Any other rule with a ground-truth input is a weak-supervision bug.
GT_READERS = re.compile(r"^(evaluat\w*|\w*_evaluat\w*|gt_training_masks|\w*upper_bound\w*|"
                        r"report)$")
GT_PATH = re.compile(r"""(\bgt/|/gt\b|['"]gt['"]|gt_train|gt_val|GT_SPLITS)""")


def rule_sections(text):
    """{rule name: {directive: text}} of a .smk file (indentation-based)."""
    rules = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)rule (\w+)\s*:", line)
        if not m:
            continue
        indent = len(m.group(1))
        body = []
        for nxt in lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            body.append(nxt)
        sections, current = {}, None
        d_indent = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
        for b in body:
            if not b.strip():
                continue
            ind = len(b) - len(b.lstrip())
            dm = re.match(r"^\s*(\w+)\s*:", b)
            if ind == d_indent and dm:
                current = dm.group(1)
                sections[current] = b[dm.end():]
            elif current:
                sections[current] += "\n" + b
        rules[m.group(2)] = sections
    return rules


def test_no_weak_supervision_rule_reads_ground_truth():
    files = sorted((REPO / "rules").glob("*.smk")) + [REPO / "Snakefile"]
    rules = {}
    for f in files:
        rules.update({name: (f.name, s) for name, s in rule_sections(f.read_text()).items()})
    assert "gt_training_masks" in rules and "prepare_dataset" in rules
    readers = {name for name, (_, s) in rules.items() if GT_PATH.search(s.get("input", ""))}
    assert "gt_training_masks" in readers  # the parser does see gt inputs
    offenders = sorted(f"{rules[n][0]}:{n}" for n in readers if not GT_READERS.match(n))
    assert not offenders, f"rules other than evaluation/upper bound read ground truth: {offenders}"
    # the GT-made store only feeds the upper-bound rules
    for name, (fname, s) in rules.items():
        if "gt_training_masks" in s.get("input", "") or "UB_STORE" in s.get("input", ""):
            assert fname == "upper_bound.smk", f"{fname}:{name} uses the GT training masks"
