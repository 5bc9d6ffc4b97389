"""`tag2mask maskrcnn predict`: COCO results JSON from a trained model (manifest split or folder)."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from test_maskrcnn import CLASSES, make_dataset, tiny_options

from tag2mask.cli import main
from tag2mask.dataset.manifest import read_manifest
from tag2mask.maskrcnn.train import train


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny model trained a few epochs on a trivially easy store (exact masks of red
    squares and blue disks on grey), with a val split of 6 unseen images."""
    folder = tmp_path_factory.mktemp("predict")
    manifest, store, truth = make_dataset(folder, n_images=24, val_images=6, seed=3)
    train(tiny_options(epochs=12, lr=0.02, flip=False, box_head_dim=128,
                       mask_head_channels=32, grad_clip_norm=5.0), store, manifest,
          folder / "out", progress=False)
    return folder, manifest, folder / "out" / "model.pt", truth


def gt_coco(manifest_path, truth, split):
    """COCO ground truth of the constructed images (built here in the test, from the known
    shapes, only to check the predictions)."""
    m = read_manifest(manifest_path)
    images, anns = [], []
    for r in m.split(split):
        images.append({"id": m.coco_image_id(r.id), "width": r.width, "height": r.height})
        masks, labels = truth[r.id]
        for mk, c in zip(masks, labels):
            enc = mask_utils.encode(np.asfortranarray(mk.astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": images[-1]["id"], "category_id": c + 1,
                         "segmentation": {"size": enc["size"], "counts": enc["counts"].decode()},
                         "area": float(mk.sum()), "bbox": list(mask_utils.toBbox(enc)),
                         "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    coco.createIndex()
    return coco


def test_predict_manifest_split_loads_with_pycocotools(model, tmp_path):
    _folder, manifest, ckpt, truth = model
    out = tmp_path / "pred.json"
    overlays = tmp_path / "overlays"
    assert main(["maskrcnn", "predict", "--checkpoint", str(ckpt), "--manifest", str(manifest),
                 "--split", "val", "--out", str(out), "--overlays", str(overlays),
                 "--batch-size", "4", "--device", "cpu", "--no-progress"]) == 0
    results = json.loads(out.read_text())
    m = read_manifest(manifest)
    val_ids = {m.coco_image_id(r.id) for r in m.split("val")}
    assert results and {r["image_id"] for r in results} <= val_ids
    assert val_ids == {25, 26, 27, 28, 29, 30}  # positions after the 24 train images
    for r in results:
        assert set(r) == {"image_id", "category_id", "segmentation", "bbox", "score"}
        assert r["category_id"] in (1, 2) and isinstance(r["segmentation"]["counts"], str)
        assert r["segmentation"]["size"] == [64, 64] and len(r["bbox"]) == 4
    gt = gt_coco(manifest, truth, "val")
    dt = gt.loadRes(str(out))  # unchanged file
    assert len(dt.getAnnIds()) == len(results)
    assert sorted(p.name for p in overlays.glob("*.png")) == \
        sorted(f"{r.id}.png" for r in m.split("val"))

    # sensible: each true instance is found by a prediction of its class with a good mask
    hits, total = 0, 0
    for r in m.split("val"):
        image_id = m.coco_image_id(r.id)
        mine = [d for d in results if d["image_id"] == image_id and d["score"] >= 0.5]
        for mk, c in zip(*truth[r.id]):
            total += 1
            enc = mask_utils.encode(np.asfortranarray(mk.astype(np.uint8)))
            ious = [mask_utils.iou([d["segmentation"]], [enc], [0])[0][0]
                    for d in mine if d["category_id"] == c + 1]
            hits += bool(ious) and max(ious) >= 0.5
    assert hits >= 0.6 * total, f"only {hits}/{total} instances found at IoU 0.5"


def test_predict_folder_writes_sidecar(model, tmp_path):
    folder, _manifest, ckpt, _ = model
    images = tmp_path / "imgs"
    (images / "more").mkdir(parents=True)
    for name in ("b.png", "a.png", "more/a.png"):
        (images / name).write_bytes((folder / "images" / "img025.png").read_bytes())
    (images / "c.png").write_bytes(b"not an image")  # logged and skipped
    (images / "notes.txt").write_text("ignored")
    command = ["maskrcnn", "predict-images", "--checkpoint", str(ckpt), "--images",
               str(images), "--no-progress"]
    out = tmp_path / "pred.json"
    assert main([*command, "--out", str(out), "--config", '{"images_score_threshold": 0}',
                 "--overlays", str(tmp_path / "overlays")]) == 0
    sidecar = json.loads((tmp_path / "pred.json.images.json").read_text())
    assert [(i["id"], i["file_name"]) for i in sidecar["images"]] == [(1, "a.png"), (2, "b.png")]
    results = json.loads(out.read_text())
    by_image = {i: sorted((r["category_id"], r["score"]) for r in results if r["image_id"] == i)
                for i in (1, 2)}
    assert by_image[1] and by_image[1] == by_image[2]  # same picture, same predictions
    assert min(r["score"] for r in results) < 0.5  # threshold 0: the weak detections too
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["a.png.png",
                                                                          "b.png.png"]

    # the default threshold (0.5) keeps the confident ones; sub-folders on request
    recursive = tmp_path / "recursive.json"
    assert main([*command, "--out", str(recursive),
                 "--config", '{"images_recursive": true}']) == 0
    sidecar = json.loads((tmp_path / "recursive.json.images.json").read_text())
    assert [i["file_name"] for i in sidecar["images"]] == ["a.png", "b.png", "more/a.png"]
    confident = json.loads(recursive.read_text())
    assert confident and all(r["score"] >= 0.5 for r in confident)
    assert sorted((r["category_id"], r["score"]) for r in confident if r["image_id"] == 1) == \
        [(c, s) for c, s in by_image[1] if s >= 0.5]


def test_predict_refuses_checkpoint_of_other_classes(model, tmp_path, capsys):
    folder, manifest, ckpt, _ = model
    data = json.loads(manifest.read_text())
    data["classes"] = ["square", "circle"]
    for rec in data["images"]:
        rec["labels"] = [{"disk": "circle"}.get(n, n) for n in rec["labels"]]
    other = folder / "other_manifest.json"
    other.write_text(json.dumps(data))
    rc = main(["maskrcnn", "predict", "--checkpoint", str(ckpt), "--manifest", str(other),
               "--split", "val",
               "--out", str(tmp_path / "x.json"), "--no-progress"])
    assert rc == 2 and "trained on classes" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("batches", [[], [[]], [[{"a": 1, "b": [0.5, 2]}], [], [{"c": "x"},
                                                                            {"d": None}]]])
def test_results_writer_writes_the_bytes_of_write_json(tmp_path, batches):
    """predict streams its results to the file: the same bytes as the list written whole."""
    from tag2mask.core.atomic import write_json
    from tag2mask.maskrcnn.predict import ResultsWriter

    with ResultsWriter(tmp_path / "streamed.json") as w:
        for b in batches:
            w.write(b)
    write_json(tmp_path / "whole.json", [r for b in batches for r in b], indent=None)
    assert (tmp_path / "streamed.json").read_bytes() == (tmp_path / "whole.json").read_bytes()
    with pytest.raises(RuntimeError), ResultsWriter(tmp_path / "failed.json") as w:
        w.write([{"a": 1}])
        raise RuntimeError("killed")
    assert not (tmp_path / "failed.json").exists()
