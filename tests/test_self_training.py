"""Self-training merge: predictions + peaks + previous pseudo masks -> next round's masks."""

import json

import numpy as np
import pytest
from conftest import build_manifest

from tag2mask.core import masks as rle
from tag2mask.core.config import section_options
from tag2mask.core.errors import InputError
from tag2mask.core.store import StoreReader, StoreWriter
from tag2mask.dataset.manifest import read_manifest
from tag2mask.evaluation.metrics import pseudo_masks_to_results
from tag2mask.self_training.merge import (
    ORIGIN_PREDICTION,
    ORIGIN_PREVIOUS,
    merge_image,
    merge_round,
)

H, W = 32, 40
OPTIONS = {"rounds": 1, "score_threshold": 0.5, "require_peak": True, "duplicate_iou": 0.5}


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def pred(mask, label, score, image_id=1):
    return {"image_id": image_id, "category_id": label + 1, "score": score,
            "segmentation": {"size": [H, W], "counts": rle.encode(mask)}}


# peaks: 0 = class a at (5, 5); 1 = class b at (20, 30); 2 = class a at (25, 6)
PEAKS = {"peak_class": np.array([0, 1, 0], np.int16),
         "peak_yx": np.array([[5.3, 5.7], [20, 30], [25, 6]], np.float32),
         "peak_value": np.array([1.0, 2.0, 0.5], np.float32)}
PREV_MASKS = [box(2, 9, 2, 9), box(16, 24, 26, 34), box(22, 28, 3, 9)]
PREVIOUS = {"masks": rle.encode(np.array(PREV_MASKS)), "labels": np.array([0, 1, 0], np.int16),
            "scores": np.array([0.3, 0.4, 0.2], np.float32),
            "peak_index": np.array([0, 1, 2], np.int32),
            "peak_yx": PEAKS["peak_yx"].copy()}
PREDICTIONS = [
    pred(box(1, 12, 1, 12), 0, 0.9),      # A: class a around peak 0 -> kept, replaces prev 0
    pred(box(1, 12, 1, 11), 0, 0.8),      # B: duplicate of A (IoU > 0.5)
    pred(box(15, 25, 25, 35), 1, 0.3),    # C: class b, below the threshold
    pred(box(0, 10, 0, 10), 2, 0.95),     # D: class c, which the image is not tagged with
    pred(box(10, 18, 12, 20), 0, 0.7),    # E: class a, contains no peak
]
TAGS = {0, 1}


def test_merge_keeps_peaked_predictions_and_falls_back_to_previous_masks():
    arrays, counts = merge_image(PREDICTIONS, PEAKS, PREVIOUS, TAGS, H, W, OPTIONS)
    assert counts == {"kept_predictions": 1, "duplicate": 1, "below_threshold": 1,
                      "untagged_class": 1, "no_peak": 1, "replaced": 1, "carried_over": 2}
    got = rle.decode(arrays["masks"], H, W)
    # A first, then the previous masks of peaks 1 and 2 (nobody took them over)
    np.testing.assert_array_equal(got[0], box(1, 12, 1, 12))
    np.testing.assert_array_equal(got[1], PREV_MASKS[1])
    np.testing.assert_array_equal(got[2], PREV_MASKS[2])
    assert arrays["labels"].tolist() == [0, 1, 0]
    assert arrays["peak_index"].tolist() == [0, 1, 2]
    assert arrays["origin"].tolist() == [ORIGIN_PREDICTION, ORIGIN_PREVIOUS, ORIGIN_PREVIOUS]
    np.testing.assert_allclose(arrays["scores"], [0.9, 0.4, 0.2])
    np.testing.assert_allclose(arrays["peak_yx"], PEAKS["peak_yx"])
    np.testing.assert_array_equal(arrays["boxes"][0], [1, 1, 12, 12])


def test_a_prediction_claims_its_best_peak_and_replaces_every_previous_mask_it_covers():
    big = pred(box(0, 32, 0, 12), 0, 0.8)  # covers peaks 0 and 2 (both class a)
    arrays, counts = merge_image([big], PEAKS, PREVIOUS, TAGS, H, W, OPTIONS)
    assert arrays["peak_index"].tolist() == [0, 1]  # peak 0 has the higher value
    assert arrays["origin"].tolist() == [ORIGIN_PREDICTION, ORIGIN_PREVIOUS]
    assert counts["replaced"] == 2 and counts["carried_over"] == 1


def test_without_require_peak_peakless_predictions_are_kept():
    opts = dict(OPTIONS, require_peak=False)
    arrays, counts = merge_image(PREDICTIONS, PEAKS, PREVIOUS, TAGS, H, W, opts)
    assert counts["kept_predictions"] == 2 and "no_peak" not in counts
    assert arrays["peak_index"].tolist() == [0, -1, 1, 2]
    assert np.isnan(arrays["peak_yx"][1]).all()
    assert arrays["origin"].tolist() == [1, 1, 0, 0]


def test_no_prediction_keeps_the_previous_round_unchanged():
    arrays, counts = merge_image([], PEAKS, PREVIOUS, TAGS, H, W, OPTIONS)
    assert arrays["masks"] == PREVIOUS["masks"]
    assert arrays["labels"].tolist() == [0, 1, 0]
    assert +counts == {"carried_over": 3}


def test_merge_round_writes_a_pseudo_mask_store(tmp_path):
    manifest_path = build_manifest(tmp_path, n_images=2)  # img0 tagged a, img1 tagged b
    manifest = read_manifest(manifest_path)
    classes = manifest.classes
    peaks_path, prev_path = tmp_path / "peaks.h5", tmp_path / "prev.h5"
    with StoreWriter(peaks_path, "peaks", classes) as w:
        w.add("img0", H, W, PEAKS)
        w.add("img1", H, W, {"peak_class": np.zeros(0, np.int16),
                             "peak_yx": np.zeros((0, 2), np.float32),
                             "peak_value": np.zeros(0, np.float32)})
    empty = {"masks": [], "labels": np.zeros(0, np.int16), "scores": np.zeros(0, np.float32),
             "boxes": np.zeros((0, 4), np.float32), "peak_index": np.zeros(0, np.int32),
             "peak_yx": np.zeros((0, 2), np.float32)}
    with StoreWriter(prev_path, "pseudo_masks", classes) as w:
        w.add("img0", H, W, dict(PREVIOUS, boxes=rle.boxes(PREVIOUS["masks"], H, W)))
        w.add("img1", H, W, empty)
    preds = [dict(p, image_id=manifest.coco_image_id("img0")) for p in PREDICTIONS]
    preds.append(pred(box(0, 5, 0, 5), 1, 0.99, manifest.coco_image_id("img1")))  # no peak
    preds_path = tmp_path / "predictions_train.json"
    preds_path.write_text(json.dumps(preds))

    out = tmp_path / "round_1" / "pseudo_masks.h5"
    # img0 is tagged 'a' only in this manifest, so the class-b previous mask is still carried
    # (the merge never deletes earlier evidence) but class-b predictions would be refused
    totals = merge_round(preds_path, peaks_path, prev_path, manifest_path,
                         section_options(json.dumps(OPTIONS), "self_training"), out)
    assert totals["images"] == 2 and totals["kept_predictions"] == 1
    assert totals["no_peak"] == 2  # E on img0 and the peakless img1 prediction
    with StoreReader(out, "pseudo_masks") as s:
        assert sorted(s.image_ids) == ["img0", "img1"]
        assert json.loads(s.attrs["merge_stats"]) == totals
        assert len(s.read("img1")["masks"]) == 0
        assert s.read("img0")["origin"].tolist() == [1, 0, 0]
    # the store is an ordinary pseudo-mask store for the evaluator and the trainer
    assert len(pseudo_masks_to_results(out, manifest)) == 3

    # no detection at all ([]) is a valid input: the previous round's masks are carried over
    preds_path.write_text("[]")
    totals = merge_round(preds_path, peaks_path, prev_path, manifest_path,
                         section_options(json.dumps(OPTIONS), "self_training"),
                         tmp_path / "round_e.h5")
    assert totals["kept_predictions"] == 0
    assert totals["carried_over"] == len(PREVIOUS["masks"]) and totals["images"] == 2


def test_merge_round_refuses_a_store_of_other_classes(tmp_path):
    manifest_path = build_manifest(tmp_path, n_images=1)
    with StoreWriter(tmp_path / "peaks.h5", "peaks", ["x", "y", "z"]) as w:
        w.add("img0", H, W, PEAKS)
    with StoreWriter(tmp_path / "prev.h5", "pseudo_masks", ["a", "b", "c"]) as w:
        w.add("img0", H, W, dict(PREVIOUS, boxes=rle.boxes(PREVIOUS["masks"], H, W)))
    (tmp_path / "p.json").write_text("[]")
    with pytest.raises(InputError, match="class names"):
        merge_round(tmp_path / "p.json", tmp_path / "peaks.h5", tmp_path / "prev.h5",
                    manifest_path, OPTIONS, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
