"""Known-answer tests of the evaluator on constructed GT / prediction pairs, and the
pseudo-mask store -> COCO export."""

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from tag2mask.core import masks as mask_rle
from tag2mask.core.errors import InputError
from tag2mask.core.store import StoreWriter
from tag2mask.dataset.manifest import read_manifest
from tag2mask.evaluation.metrics import evaluate, pseudo_masks_to_results, results_to_instances

H, W = 20, 30
CLASSES = ["a", "b", "c"]


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def seg(m):
    return mask_rle.to_coco_segmentation(mask_rle.encode(m), H, W)


def make_gt(images):
    """images: list of (list of (mask, class index)) per image, optionally (..., void mask)."""
    gt = {"images": [], "annotations": [],
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    for i, item in enumerate(images, start=1):
        instances, void = item if isinstance(item, tuple) else (item, None)
        entry = {"id": i, "name": f"img{i}", "width": W, "height": H}
        if void is not None:
            entry["void"] = seg(void)
        gt["images"].append(entry)
        for m, c in instances:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i,
                                      "category_id": c + 1, "segmentation": seg(m),
                                      "area": int(m.sum()), "iscrowd": 0, "bbox": [0, 0, 1, 1]})
    return gt


def pred(image_id, m, c, score=0.9):
    return {"image_id": image_id, "category_id": c + 1, "segmentation": seg(m), "score": score}


A = box(0, 10, 0, 10)     # 100 px
B = box(10, 20, 15, 25)   # 100 px, disjoint from A
A60 = box(0, 6, 0, 10)    # inside A, IoU 0.6 with A


def test_perfect_predictions_score_one():
    gt = make_gt([[(A, 0), (B, 1)], [(B, 2)]])
    r = evaluate(gt, [pred(1, A, 0), pred(1, B, 1), pred(2, B, 2)])
    for key in ("mAP@0.25", "mAP@0.5", "mAP@0.75", "AP", "ABO"):
        assert r[key] == pytest.approx(1.0)
    assert r["per_class"]["a"] == {"AP@0.25": pytest.approx(1.0), "AP@0.5": pytest.approx(1.0),
                                   "AP@0.75": pytest.approx(1.0), "instances": 1}
    assert (r["images"], r["predictions"], r["gt_instances"]) == (2, 3, 3)


def test_iou_06_counts_at_025_and_05_not_075():
    r = evaluate(make_gt([[(A, 0)]]), [pred(1, A60, 0)])
    assert r["mAP@0.25"] == pytest.approx(1.0)
    assert r["mAP@0.5"] == pytest.approx(1.0)
    assert r["mAP@0.75"] == 0.0
    # COCO AP: matched at 0.50, 0.55, 0.60 (IoU >= t) of the ten thresholds
    assert r["AP"] == pytest.approx(0.3)
    assert r["ABO"] == pytest.approx(0.6)


def test_duplicate_lowers_precision_by_the_exact_amount():
    # ranked: A (TP), duplicate of A (FP), B (TP) -> precision envelope 1 up to recall 0.5,
    # then 2/3: 51 of the 101 recall points at 1, 50 at 2/3
    gt = make_gt([[(A, 0), (B, 0)]])
    preds = [pred(1, A, 0, 0.9), pred(1, A, 0, 0.8), pred(1, B, 0, 0.7)]
    r = evaluate(gt, preds)
    expected = (51 + 50 * 2 / 3) / 101
    assert r["mAP@0.5"] == pytest.approx(expected)
    assert r["AP"] == pytest.approx(expected)
    # a lower-scored duplicate after both hits costs nothing
    preds = [pred(1, A, 0, 0.9), pred(1, B, 0, 0.8), pred(1, A, 0, 0.7)]
    assert evaluate(gt, preds)["mAP@0.5"] == pytest.approx(1.0)


def test_wrong_class_scores_zero_but_counts_for_abo():
    r = evaluate(make_gt([[(A, 0)]]), [pred(1, A, 1)])
    assert r["mAP@0.25"] == r["mAP@0.5"] == r["AP"] == 0.0
    assert r["ABO"] == pytest.approx(1.0)  # ABO is class-agnostic


def test_void_removal_lifts_iou_above_threshold():
    void = box(10, 14, 0, 10)            # 40 void px next to A
    grown = A | void                     # IoU with A: 100 / 140 = 0.71 < 0.75
    gt = make_gt([([(A, 0)], void)])
    with_void = evaluate(gt, [pred(1, grown, 0)], void_removal=False)
    assert with_void["mAP@0.5"] == pytest.approx(1.0)
    assert with_void["mAP@0.75"] == 0.0
    assert with_void["ABO"] == pytest.approx(100 / 140)
    assert with_void["protocol"]["name"] == "coco"
    removed = evaluate(gt, [pred(1, grown, 0)], void_removal=True)
    assert removed["mAP@0.75"] == pytest.approx(1.0)
    assert removed["ABO"] == pytest.approx(1.0)
    assert removed["protocol"]["void_removal"] is True and removed["gt_void_images"] == 1


def test_score_cutoff_drops_low_scores():
    gt = make_gt([[(A, 0)]])
    preds = [pred(1, A, 0, score=0.4)]
    assert evaluate(gt, preds, score_cutoff=0.0)["mAP@0.5"] == pytest.approx(1.0)
    r = evaluate(gt, preds, score_cutoff=0.5)
    assert r["mAP@0.5"] == 0.0 and r["ABO"] == 0.0
    assert (r["predictions"], r["predictions_below_cutoff"]) == (0, 1)
    assert r["protocol"]["score_cutoff"] == 0.5 and r["protocol"]["name"] == "voc"


def test_abo_known_value():
    # image 1: A found with IoU 0.6, B found exactly by a wrong-class mask; image 2: C missed
    C = box(2, 6, 20, 28)
    gt = make_gt([[(A, 0), (B, 1)], [(C, 2)]])
    r = evaluate(gt, [pred(1, A60, 0), pred(1, B, 2), pred(2, A, 2)])
    assert r["ABO"] == pytest.approx((0.6 + 1.0 + 0.0) / 3)


def test_classes_without_gt_are_left_out_of_the_mean():
    # class c has no GT; its (false) prediction must not pull the mean to 2/3
    gt = make_gt([[(A, 0), (B, 1)]])
    r = evaluate(gt, [pred(1, A, 0), pred(1, B, 1), pred(1, box(0, 5, 20, 30), 2)])
    assert r["mAP@0.5"] == pytest.approx(1.0)
    assert r["per_class"]["c"] == {"AP@0.25": None, "AP@0.5": None, "AP@0.75": None,
                                   "instances": 0}
    # a class with GT but no prediction counts as 0
    r = evaluate(gt, [pred(1, A, 0)])
    assert r["mAP@0.5"] == pytest.approx(0.5)


def test_empty_predictions_give_zero():
    r = evaluate(make_gt([[(A, 0)], [(B, 1)]]), [])
    assert r["mAP@0.25"] == r["mAP@0.5"] == r["mAP@0.75"] == r["AP"] == r["ABO"] == 0.0
    assert r["predictions"] == 0


def test_crowd_regions_are_ignored():
    gt = make_gt([[(A, 0)]])
    gt["annotations"].append({"id": 2, "image_id": 1, "category_id": 1, "segmentation": seg(B),
                              "area": 100, "iscrowd": 1, "bbox": [15, 10, 10, 10]})
    r = evaluate(gt, [pred(1, A, 0, 0.9), pred(1, B, 0, 0.95)])
    assert r["mAP@0.5"] == pytest.approx(1.0)  # the hit on the crowd region is not an FP
    assert r["gt_instances"] == 1 and r["ABO"] == pytest.approx(1.0)


def test_custom_thresholds_and_max_dets():
    gt = make_gt([[(A, 0), (B, 0)]])
    r = evaluate(gt, [pred(1, A, 0, 0.9), pred(1, B, 0, 0.8)], iou_thresholds=[0.3, 0.9],
                 max_dets=1)
    assert set(k for k in r if k.startswith("mAP@")) == {"mAP@0.3", "mAP@0.9"}
    assert r["mAP@0.3"] == pytest.approx(51 / 101)  # only the best detection kept: recall 0.5
    assert "AP@0.5" in r["per_class"]["a"]


def test_bad_predictions_are_input_errors():
    gt = make_gt([[(A, 0)]])
    with pytest.raises(InputError, match="not in the ground truth"):
        evaluate(gt, [pred(7, A, 0)])
    with pytest.raises(InputError, match="unknown category_id"):
        evaluate(gt, [pred(1, A, 5)])
    wrong_size = {**pred(1, A, 0), "segmentation": mask_rle.to_coco_segmentation(
        mask_rle.encode(np.ones((5, 5), bool)), 5, 5)}
    with pytest.raises(InputError, match="differs from image"):
        evaluate(gt, [wrong_size])


# ---------------------------------------------------------------------------------------------
# pseudo-mask store -> COCO results / instances

def write_pseudo_store(path, manifest):
    """Two instances in the first image, none in the second; others left out."""
    r0, r1 = manifest.images[0], manifest.images[1]
    h, w = r0.height, r0.width
    m = np.zeros((2, h, w), bool)
    m[0, 2:10, 3:12] = True
    m[1, 15:25, 20:30] = True
    counts = mask_rle.encode(m)
    with StoreWriter(path, "pseudo_masks", manifest.classes) as s:
        s.add(r0.id, h, w, {"masks": counts, "labels": np.array([0, 2], np.int16),
                            "scores": np.array([0.9, 0.4], np.float32),
                            "boxes": mask_rle.boxes(counts, h, w),
                            "peak_index": np.array([0, 1], np.int32),
                            "peak_yx": np.array([[5, 6], [20, 25]], np.float32)})
        s.add(r1.id, r1.height, r1.width, {"masks": [], "labels": np.zeros(0, np.int16),
                                           "scores": np.zeros(0, np.float32),
                                           "boxes": np.zeros((0, 4), np.float32),
                                           "peak_index": np.zeros(0, np.int32),
                                           "peak_yx": np.zeros((0, 2), np.float32)})
    return m


def test_pseudo_mask_export_loads_in_pycocotools(tmp_path, tiny_manifest):
    manifest = read_manifest(tiny_manifest)
    m = write_pseudo_store(tmp_path / "pm.h5", manifest)
    results = pseudo_masks_to_results(tmp_path / "pm.h5", manifest)
    assert [(r["image_id"], r["category_id"], r["score"]) for r in results] == \
        [(1, 1, pytest.approx(0.9)), (1, 3, pytest.approx(0.4))]

    instances = results_to_instances(results, manifest,
                                     image_ids=[manifest.images[0].id, manifest.images[1].id])
    (tmp_path / "inst.json").write_text(json.dumps(instances))
    (tmp_path / "res.json").write_text(json.dumps(results))
    coco = COCO(str(tmp_path / "inst.json"))
    assert sorted(coco.getImgIds()) == [1, 2]
    assert [coco.loadCats(i)[0]["name"] for i in (1, 2, 3)] == manifest.classes
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert np.array_equal(coco.annToMask(anns[0]).astype(bool), m[0])
    assert anns[1]["area"] == m[1].sum() and anns[1]["bbox"] == [20, 15, 10, 10]
    res = coco.loadRes(str(tmp_path / "res.json"))
    assert np.array_equal(res.annToMask(res.loadAnns(res.getAnnIds(imgIds=[1], catIds=[3]))[0])
                          .astype(bool), m[1])

    # scoring the export against itself as GT is perfect
    r = evaluate(instances, results)
    assert r["mAP@0.5"] == pytest.approx(1.0) and r["ABO"] == pytest.approx(1.0)


def test_export_refuses_a_store_of_other_classes(tmp_path, tiny_manifest):
    manifest = read_manifest(tiny_manifest)
    with StoreWriter(tmp_path / "pm.h5", "pseudo_masks", ["x", "y", "z"]):
        pass
    with pytest.raises(InputError, match="class names"):
        pseudo_masks_to_results(tmp_path / "pm.h5", manifest)


# ---------------------------------------------------------------------------------------------
# the commands

def gt_for_manifest(manifest, instances):
    """GT in the tag2mask format for the manifest's first image: instances = [(mask, c)]."""
    r0 = manifest.images[0]
    gt = {"images": [], "annotations": [],
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(manifest.classes)]}
    for rec in manifest.images[:2]:
        gt["images"].append({"id": manifest.coco_image_id(rec.id), "name": rec.id,
                             "file_name": rec.path, "width": rec.width, "height": rec.height})
    for m, c in instances:
        gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": 1,
                                  "category_id": c + 1, "iscrowd": 0, "area": int(m.sum()),
                                  "bbox": [0, 0, 1, 1],
                                  "segmentation": mask_rle.to_coco_segmentation(
                                      mask_rle.encode(m), r0.height, r0.width)})
    return gt


def test_evaluate_command_on_store_and_on_export(tmp_path, tiny_manifest):
    from tag2mask.cli import main
    manifest = read_manifest(tiny_manifest)
    m = write_pseudo_store(tmp_path / "pm.h5", manifest)
    (tmp_path / "gt.json").write_text(json.dumps(gt_for_manifest(manifest, [(m[0], 0)])))
    export = ["pseudo_masks", "export-coco", "--store", str(tmp_path / "pm.h5"), "--manifest",
              str(tiny_manifest)]
    assert main([*export, "--out", str(tmp_path / "res.json"), "--as-results"]) == 0
    assert main([*export, "--out", str(tmp_path / "inst.json")]) == 0
    instances = COCO(str(tmp_path / "inst.json"))
    assert sorted(instances.getImgIds()) == [1, 2] and len(instances.getAnnIds()) == 2
    # with a min_score cut: the 0.4 mask is left out, both images still listed
    assert main([*export, "--out", str(tmp_path / "cut.json"), "--min-score", "0.5"]) == 0
    cut = COCO(str(tmp_path / "cut.json"))
    assert sorted(cut.getImgIds()) == [1, 2]
    [ann] = cut.loadAnns(cut.getAnnIds())
    assert ann["score"] == pytest.approx(0.9) and ann["category_id"] == 1
    assert ann["bbox"] == [3, 2, 9, 8] and ann["area"] == 72 and ann["iscrowd"] == 0
    reports = []
    for predictions in ("pm.h5", "res.json"):
        out = tmp_path / f"eval-{predictions}.json"
        assert main(["evaluation", "score", "--gt", str(tmp_path / "gt.json"), "--predictions",
                     str(tmp_path / predictions), "--manifest", str(tiny_manifest),
                     "--config", '{"score_cutoff": 0.5}', "--out", str(out)]) == 0
        reports.append(json.loads(out.read_text()))
    a, b = reports
    assert a["mAP@0.5"] == pytest.approx(1.0) and a["ABO"] == pytest.approx(1.0)
    assert a["predictions"] == 1 and a["predictions_below_cutoff"] == 1  # the 0.4 mask
    assert a["protocol"]["score_cutoff"] == 0.5 and a["protocol"]["void_removal"] is True
    del a["inputs"], b["inputs"]
    assert a == b


def test_evaluate_command_refuses_mismatched_inputs(tmp_path, tiny_manifest, capsys):
    from tag2mask.cli import main
    manifest = read_manifest(tiny_manifest)
    write_pseudo_store(tmp_path / "pm.h5", manifest)
    gt = gt_for_manifest(manifest, [])
    gt["images"][0]["id"] = 5  # GT of another manifest
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    args = ["evaluation", "score", "--gt", str(tmp_path / "gt.json"), "--predictions",
            str(tmp_path / "pm.h5"), "--config", "{}", "--out", str(tmp_path / "e.json")]
    assert main(args) == 2
    assert "needs --manifest" in capsys.readouterr().err
    assert main(args + ["--manifest", str(tiny_manifest)]) == 2
    assert "manifest" in capsys.readouterr().err and not (tmp_path / "e.json").exists()
