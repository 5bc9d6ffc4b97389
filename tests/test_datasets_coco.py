"""The COCO reader on a tiny instances JSON with polygon, RLE and crowd annotations."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tag2mask.core import masks as mask_rle
from tag2mask.core.errors import InputError
from tag2mask.dataset import coco

LIMITS = {"max_image_pixels": 25_000_000, "large_images": "downscale"}
H, W = 20, 30
# category ids deliberately out of order and non-contiguous: classes follow id order
CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


def box(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def compressed(m):
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle["counts"].decode()}


def uncompressed(m):
    """COCO's uncompressed RLE: column-major run lengths starting with a 0-run."""
    flat = m.T.ravel().astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts}


def save_image(path, h=H, w=W, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture
def coco_set(tmp_path):
    """train: 3 images (one with crowd only); val: 1 image. Returns (options, expected)."""
    train_dir, val_dir = tmp_path / "train2017", tmp_path / "val2017"
    for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
        save_image(train_dir / name, seed=i)
    save_image(val_dir / "sub" / "d.jpg", seed=9)
    dog_rle, car_rle = box(2, 9, 3, 12), box(10, 18, 15, 28)
    crowd = box(12, 19, 0, 10)
    anns_train = [
        # a.jpg: a polygon person, a compressed-RLE dog, a crowd of persons (uncompressed RLE)
        {"id": 1, "image_id": 101, "category_id": 1, "iscrowd": 0, "area": 0, "bbox": [],
         "segmentation": [[16.0, 1.0, 26.0, 1.0, 26.0, 9.0, 16.0, 9.0]]},
        {"id": 2, "image_id": 101, "category_id": 18, "iscrowd": 0, "area": 0, "bbox": [],
         "segmentation": compressed(dog_rle)},
        {"id": 3, "image_id": 101, "category_id": 1, "iscrowd": 1, "area": 0, "bbox": [],
         "segmentation": uncompressed(crowd)},
        # b.jpg: an uncompressed-RLE car that is not crowd, and a two-polygon person
        {"id": 4, "image_id": 102, "category_id": 3, "iscrowd": 0, "area": 0, "bbox": [],
         "segmentation": uncompressed(car_rle)},
        {"id": 5, "image_id": 102, "category_id": 1, "iscrowd": 0, "area": 0, "bbox": [],
         "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6], [1, 10, 6, 10, 6, 15, 1, 15]]},
        # c.jpg: only a crowd region -> no tags -> skipped
        {"id": 6, "image_id": 103, "category_id": 1, "iscrowd": 1, "area": 0, "bbox": [],
         "segmentation": uncompressed(crowd)},
    ]
    train = {"images": [{"id": 101, "file_name": "a.jpg", "width": W, "height": H},
                        {"id": 102, "file_name": "b.jpg", "width": W, "height": H},
                        {"id": 103, "file_name": "c.jpg", "width": W, "height": H}],
             "annotations": anns_train, "categories": CATEGORIES}
    val = {"images": [{"id": 7, "file_name": "sub/d.jpg", "width": W, "height": H}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 0,
                            "segmentation": compressed(car_rle)}],
           "categories": list(reversed(CATEGORIES))}
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "val.json").write_text(json.dumps(val))
    options = {"train_annotations": str(tmp_path / "train.json"), "train_images": str(train_dir),
               "val_annotations": str(tmp_path / "val.json"), "val_images": str(val_dir)}
    return options, {"dog": dog_rle, "car": car_rle, "crowd": crowd}


def annotations_of(gt, name):
    image = next(im for im in gt["images"] if im["name"] == name)
    anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
    return image, anns


def decode(a):
    h, w = a["segmentation"]["size"]
    return mask_rle.decode([a["segmentation"]["counts"]], h, w)[0]


def test_coco_labels_masks_and_crowd(coco_set, tmp_path):
    options, expected = coco_set
    prepared = coco.read(options, tmp_path / "out", LIMITS)
    m = prepared.manifest
    assert m.classes == ["person", "car", "dog"]
    assert [(r.id, r.split) for r in m.images] == [("101", "train"), ("102", "train"),
                                                   ("7", "val")]
    assert m.images[0].labels == ("person", "dog")  # crowd is not a tag source, but here
    assert m.images[1].labels == ("person", "car")  # a non-crowd person is present anyway
    assert m.stats["skipped"] == 1 and m.stats["skipped_files"][0]["path"].endswith("c.jpg")
    assert m.stats["instances"] == {"train": 4, "val": 1}
    assert m.stats["crowd_regions"] == 1
    assert m.stats["class_instances"]["train"] == {"person": 2, "car": 1, "dog": 1}

    gt = prepared.ground_truth
    image, anns = annotations_of(gt["train"], "101")
    assert image["id"] == m.coco_image_id("101") == 1
    by_kind = {(m.classes[a["category_id"] - 1], a["iscrowd"]): decode(a) for a in anns}
    assert set(by_kind) == {("person", 0), ("dog", 0), ("person", 1)}
    assert np.array_equal(by_kind[("dog", 0)], expected["dog"])  # compressed RLE
    assert np.array_equal(by_kind[("person", 1)], expected["crowd"])  # uncompressed RLE
    poly = by_kind[("person", 0)]  # polygon of the box x 16..26, y 1..9
    iou = (poly & box(1, 9, 16, 26)).sum() / (poly | box(1, 9, 16, 26)).sum()
    assert iou > 0.7 and not poly[12:].any()

    _, anns = annotations_of(gt["train"], "102")
    car = next(decode(a) for a in anns if a["category_id"] == 2)
    assert np.array_equal(car, expected["car"])  # uncompressed, non-crowd
    person = next(decode(a) for a in anns if a["category_id"] == 1)
    # two polygons (x 1..6; y 1..6 and y 10..15) merged into one mask with a gap between
    assert person[:8].any() and person[9:17].any() and not person[7:9].any()

    # val: categories listed in another order still map to the same classes
    image, anns = annotations_of(gt["val"], "7")
    assert image["id"] == 3 and [a["category_id"] for a in anns] == [2]
    # pycocotools loads the ground truth unchanged
    api = COCO()
    api.dataset = gt["train"]
    api.createIndex()
    assert len(api.getAnnIds(iscrowd=False)) == 4


def test_coco_downscale_resizes_masks(coco_set, tmp_path):
    options, expected = coco_set
    out = tmp_path / "out"
    prepared = coco.read(options, out, {"max_image_pixels": 150, "large_images": "downscale"})
    r = prepared.manifest.images[0]
    assert r.width * r.height <= 150 and (out / "resized").is_dir()
    image, anns = annotations_of(prepared.ground_truth["train"], "101")
    assert (image["width"], image["height"]) == (r.width, r.height)
    for a in anns:
        assert tuple(a["segmentation"]["size"]) == (r.height, r.width)


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, problem", [
    (lambda d: d.pop("categories"), "categories"),
    (lambda d: d["images"][0].pop("file_name"), "file_name"),
    (lambda d: d["annotations"][0].update(image_id=999), "unknown image id 999"),
    (lambda d: d["annotations"][0].update(category_id=42), "unknown category id 42"),
    (lambda d: d["annotations"][0].pop("segmentation"), "segmentation"),
    (lambda d: d["annotations"][1]["segmentation"].update(size=[5, 5]), "RLE size"),
    (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3]]), "polygons"),
    (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id"),
])
def test_coco_malformed_json_names_file_and_problem(coco_set, tmp_path, change, problem):
    options, _ = coco_set
    path = tmp_path / "train.json"
    edit_json(path, change)
    with pytest.raises(InputError, match=problem) as e:
        coco.read(options, tmp_path / "out", LIMITS)
    assert e.value.where == str(path)


def test_coco_other_input_errors(coco_set, tmp_path):
    options, _ = coco_set
    (tmp_path / "val.json").write_text('{"images": [')
    with pytest.raises(InputError, match="not valid JSON") as e:
        coco.read(options, tmp_path / "out", LIMITS)
    assert e.value.where.endswith("val.json")
    with pytest.raises(InputError, match="not found"):
        coco.read({**options, "val_annotations": str(tmp_path / "nope.json")}, tmp_path / "o",
                  LIMITS)
    (tmp_path / "train2017" / "b.jpg").unlink()
    with pytest.raises(InputError, match="not found") as e:
        coco.read({**options, "val_annotations": None}, tmp_path / "o", LIMITS)
    assert e.value.where.endswith("b.jpg")


def test_coco_corrupt_and_mismatched_images_are_skipped(coco_set, tmp_path, caplog):
    options, _ = coco_set
    (tmp_path / "train2017" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    prepared = coco.read(options, tmp_path / "out", LIMITS)
    assert [r.id for r in prepared.manifest.images] == ["102", "7"]
    reasons = {s["path"].rsplit("/", 1)[1]: s["reason"]
               for s in prepared.manifest.stats["skipped_files"]}
    assert set(reasons) == {"a.jpg", "c.jpg"} and "decode" in reasons["a.jpg"]
    assert [im["name"] for im in prepared.ground_truth["train"]["images"]] == ["102"]

    save_image(tmp_path / "train2017" / "b.jpg", h=H + 1)  # the JSON says 30x20
    with pytest.raises(InputError, match="train split has no usable image"):
        coco.read(options, tmp_path / "out", LIMITS)
    assert "b.jpg: image is 30x21 but train.json says 30x20" in caplog.text
    prepared = coco.read({**options, "train_annotations": options["val_annotations"],
                          "train_images": options["val_images"], "val_annotations": None},
                         tmp_path / "out", LIMITS)
    assert [r.id for r in prepared.manifest.images] == ["7"]
