"""The VOC reader on small VOC / SBD trees built here, and on voc-mini when it is present."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tag2mask.core import masks as mask_rle
from tag2mask.core.errors import InputError
from tag2mask.dataset import cli as dataset_cli
from tag2mask.dataset import voc
from tag2mask.dataset.manifest import RECORD_KEYS, read_manifest

LIMITS = {"max_image_pixels": 25_000_000, "large_images": "downscale"}
C = {name: i + 1 for i, name in enumerate(voc.VOC_CLASSES)}  # VOC class index (1-based)


def voc_palette():
    """VOC's colour map (bit-interleaved), as the official PNGs carry it."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def save_label_png(path, array):
    img = Image.fromarray(np.asarray(array, np.uint8), "P")
    img.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def save_jpeg(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def with_void_border(cls, obj):
    """Mark a 1-pixel ring around every object as void (255), as VOC does."""
    fg = obj > 0
    grown = fg.copy()
    grown[1:] |= fg[:-1]
    grown[:-1] |= fg[1:]
    grown[:, 1:] |= fg[:, :-1]
    grown[:, :-1] |= fg[:, 1:]
    ring = grown & ~fg
    cls, obj = cls.copy(), obj.copy()
    cls[ring] = 255
    obj[ring] = 255
    return cls, obj


def scene_two_people_and_dog(h=24, w=32):
    cls = np.zeros((h, w), np.uint8)
    obj = np.zeros((h, w), np.uint8)
    obj[2:10, 2:10], cls[2:10, 2:10] = 1, C["person"]
    obj[2:10, 14:22], cls[2:10, 14:22] = 2, C["person"]
    cls[2:4, 14:16] = C["dog"]  # a minority of other-class pixels: the majority decides
    obj[14:22, 4:28], cls[14:22, 4:28] = 3, C["dog"]
    return with_void_border(cls, obj)


def scene_one(class_name, h=20, w=26):
    cls = np.zeros((h, w), np.uint8)
    obj = np.zeros((h, w), np.uint8)
    obj[5:15, 6:20], cls[5:15, 6:20] = 1, C[class_name]
    return with_void_border(cls, obj)


def write_voc_image(voc_dir, image_id, cls, obj, seed=0):
    h, w = cls.shape
    save_jpeg(voc_dir / "JPEGImages" / f"{image_id}.jpg", h, w, seed)
    save_label_png(voc_dir / "SegmentationClass" / f"{image_id}.png", cls)
    save_label_png(voc_dir / "SegmentationObject" / f"{image_id}.png", obj)


def write_list(voc_dir, name, ids):
    path = voc_dir / "ImageSets" / "Segmentation" / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


@pytest.fixture
def voc_tree(tmp_path):
    """root/VOC2012 with 3 train ids (one background only) and 1 val id."""
    root = tmp_path / "voc"
    d = root / "VOC2012"
    scenes = {
        "2007_000001": scene_two_people_and_dog(),
        "2007_000002": scene_one("cat"),
        "2007_000003": (np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)),
        "2007_000004": scene_one("aeroplane"),
    }
    for k, (image_id, (cls, obj)) in enumerate(scenes.items()):
        write_voc_image(d, image_id, cls, obj, seed=k)
    write_list(d, "train", ["2007_000001", "2007_000002", "2007_000003"])
    write_list(d, "val", ["2007_000004"])
    write_list(d, "trainval", list(scenes))
    return root, scenes


def gt_masks(coco, image_name):
    image = next(im for im in coco["images"] if im["name"] == image_name)
    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    h, w = image["height"], image["width"]
    m = mask_rle.decode([a["segmentation"]["counts"] for a in anns], h, w)
    void = (mask_rle.decode([image["void"]["counts"]], h, w)[0] if "void" in image
            else np.zeros((h, w), bool))
    return image, anns, m, void


def test_voc_labels_instances_and_void(voc_tree, tmp_path):
    root, scenes = voc_tree
    prepared = voc.read({"root": str(root)}, tmp_path / "out", LIMITS)
    m = prepared.manifest
    assert m.classes == list(voc.VOC_CLASSES)
    by_id = {r.id: r for r in m.images}
    # the background-only image has no tags: skipped and counted
    assert sorted(by_id) == ["2007_000001", "2007_000002", "2007_000004"]
    assert m.stats["skipped"] == 1 and "2007_000003" in m.stats["skipped_files"][0]["path"]
    assert by_id["2007_000001"].labels == ("dog", "person")  # VOC order, not alphabetical
    assert by_id["2007_000001"].split == "train" and by_id["2007_000004"].split == "val"
    assert (by_id["2007_000001"].width, by_id["2007_000001"].height) == (32, 24)
    assert m.stats["splits"] == {"train": 2, "val": 1}
    assert m.stats["instances"] == {"train": 4, "val": 1}
    assert m.stats["class_instances"]["train"]["person"] == 2
    assert m.stats["class_images"]["train"]["dog"] == 1

    gt = prepared.ground_truth
    assert set(gt) == {"train", "val"}
    cls, obj = scenes["2007_000001"]
    image, anns, masks, void = gt_masks(gt["train"], "2007_000001")
    assert image["id"] == m.coco_image_id("2007_000001") == 1
    assert len(anns) == len(set(np.unique(obj)) - {0, 255}) == 3
    # void in GT is exactly the 255 pixels, and no GT mask touches it
    assert np.array_equal(void, obj == 255)
    assert not (masks & void).any()
    # each GT mask is one object id; instance 2 has some dog pixels but is a person
    expected = {1: "person", 2: "person", 3: "dog"}
    for a, mask in zip(anns, masks):
        ids = np.unique(obj[mask])
        assert len(ids) == 1
        assert np.array_equal(mask, obj == ids[0])
        assert m.classes[a["category_id"] - 1] == expected[int(ids[0])]
        assert a["iscrowd"] == 0 and a["area"] == int(mask.sum())
    # val GT ids continue the manifest positions
    assert [im["id"] for im in gt["val"]["images"]] == [m.coco_image_id("2007_000004")] == [3]


def test_voc_manifest_file_has_only_tags(voc_tree, tmp_path):
    root, _ = voc_tree
    out = tmp_path / "out"
    dataset_cli.prepare({"kind": "voc", "voc": {"root": str(root / "VOC2012")}, **LIMITS}, out)
    data = json.loads((out / "manifest.json").read_text())
    for rec in data["images"]:
        assert set(rec) == set(RECORD_KEYS)  # no masks, boxes or instance counts
    assert data["ground_truth"] == {"train": "gt/train.json", "val": "gt/val.json"}
    m = read_manifest(out / "manifest.json")
    assert len(m.images) == 3
    gt = json.loads((out / "gt" / "train.json").read_text())
    assert {c["id"] for c in gt["categories"]} == set(range(1, 21))


def test_voc_downscales_large_images_with_their_masks(voc_tree, tmp_path):
    root, scenes = voc_tree
    out = tmp_path / "out"
    limits = {"max_image_pixels": 500, "large_images": "downscale"}  # 32x24 = 768 pixels
    prepared = voc.read({"root": str(root), "val_split": None}, out, limits)
    r = next(r for r in prepared.manifest.images if r.id == "2007_000001")
    assert Path(r.path).parent == out / "resized"
    assert r.width * r.height <= 500 and r.width < 32
    with Image.open(r.path) as img:
        assert img.size == (r.width, r.height) and img.mode == "RGB"
    image, anns, masks, void = gt_masks(prepared.ground_truth["train"], "2007_000001")
    assert (image["width"], image["height"]) == (r.width, r.height)
    assert masks.shape[1:] == (r.height, r.width) and len(anns) == 3
    assert void.any() and not (masks & void).any()
    assert prepared.manifest.stats["downscaled"] == 2
    assert "val" not in prepared.ground_truth

    skipped = voc.read({"root": str(root), "val_split": None}, tmp_path / "o2",
                       {"max_image_pixels": 600, "large_images": "skip"})
    assert [r.id for r in skipped.manifest.images] == ["2007_000002"]  # 26x20 = 520 pixels
    assert skipped.manifest.stats["skipped"] == 2  # the large one and the background-only one


def test_voc_errors_name_the_file(voc_tree, tmp_path):
    root, scenes = voc_tree
    d = root / "VOC2012"
    with pytest.raises(InputError, match="sbd_root"):
        voc.read({"root": str(root), "train_split": "train_aug"}, tmp_path / "o", LIMITS)
    with pytest.raises(InputError) as e:
        voc.read({"root": str(root), "train_split": "nosuch"}, tmp_path / "o", LIMITS)
    assert e.value.where.endswith("nosuch.txt")
    with pytest.raises(InputError):
        voc.read({"root": str(tmp_path / "nothing")}, tmp_path / "o", LIMITS)
    (d / "SegmentationObject" / "2007_000002.png").unlink()
    with pytest.raises(InputError) as e:
        voc.read({"root": str(root)}, tmp_path / "o", LIMITS)
    assert e.value.where.endswith("SegmentationObject/2007_000002.png")
    save_label_png(d / "SegmentationObject" / "2007_000002.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(InputError, match="differs"):
        voc.read({"root": str(root)}, tmp_path / "o", LIMITS)
    cls, _ = scenes["2007_000004"]
    save_label_png(d / "SegmentationClass" / "2007_000004.png", np.where(cls == 1, 40, cls))
    with pytest.raises(InputError, match="40") as e:
        voc.read({"root": str(root), "train_split": "val", "val_split": None}, tmp_path / "o",
                 LIMITS)
    assert e.value.where.endswith("SegmentationClass/2007_000004.png")
    save_label_png(d / "SegmentationClass" / "2007_000004.png", cls)
    (d / "JPEGImages" / "2007_000004.jpg").unlink()
    with pytest.raises(InputError) as e:
        voc.read({"root": str(root), "train_split": "val", "val_split": None}, tmp_path / "o",
                 LIMITS)
    assert e.value.where.endswith("2007_000004.jpg")


def test_voc_corrupt_jpeg_is_skipped(voc_tree, tmp_path):
    root, _ = voc_tree
    jpg = root / "VOC2012" / "JPEGImages" / "2007_000002.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])  # truncated
    prepared = voc.read({"root": str(root)}, tmp_path / "o", LIMITS)
    assert "2007_000002" not in {r.id for r in prepared.manifest.images}
    reasons = {Path(s["path"]).name: s["reason"] for s in prepared.manifest.stats["skipped_files"]}
    assert "decode" in reasons["2007_000002.jpg"]
    assert prepared.manifest.stats["skipped"] == 2


# --- SBD train_aug ------------------------------------------------------------------------

def write_sbd(sbd, image_id, cls, inst, categories, with_image=True, seed=0):
    for folder, name, struct in (
            ("cls", "GTcls", {"Segmentation": cls.astype(np.uint8),
                              "CategoriesPresent": np.unique(cls[(cls > 0) & (cls < 255)])
                              .astype(np.uint8).reshape(-1, 1)}),
            ("inst", "GTinst", {"Segmentation": inst.astype(np.uint8),
                                "Categories": np.asarray(categories, np.uint8).reshape(-1, 1)})):
        (sbd / folder).mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(sbd / folder / f"{image_id}.mat", {name: struct})
    if with_image:
        save_jpeg(sbd / "img" / f"{image_id}.jpg", *cls.shape, seed=seed)


def test_voc_train_aug_with_sbd(voc_tree, tmp_path):
    root, scenes = voc_tree
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    # an SBD-only image with two instances: a horse and a person (SBD has no void)
    cls = np.zeros((12, 14), np.uint8)
    inst = np.zeros((12, 14), np.uint8)
    inst[1:6, 1:6], cls[1:6, 1:6] = 1, C["horse"]
    inst[6:11, 7:13], cls[6:11, 7:13] = 2, C["person"]
    write_sbd(sbd, "2008_000010", cls, inst, [C["horse"], C["person"]], seed=5)
    one = np.zeros((10, 10), np.uint8)
    one[2:8, 2:8] = 1
    write_sbd(sbd, "2008_000011", one * C["sheep"], one, [C["sheep"]], seed=6)
    # an id with VOC PNGs too: the VOC annotation wins over SBD's (here a wrong 'bus')
    c0, _ = scenes["2007_000002"]
    write_sbd(sbd, "2007_000002", (c0 > 0) * C["bus"], (c0 > 0).astype(np.uint8), [C["bus"]],
              with_image=False)
    # a VOC val id listed by SBD: the recipe removes it from train_aug
    write_sbd(sbd, "2007_000004", one, one, [1], with_image=False)
    (sbd / "train.txt").write_text("2008_000010\n2007_000002\n2007_000004\n")
    (sbd / "val.txt").write_text("2008_000011\n")

    opts = {"root": str(root), "train_split": "train_aug", "sbd_root": str(sbd.parent)}
    prepared = voc.read(opts, tmp_path / "out", LIMITS)
    m = prepared.manifest
    train = {r.id: r for r in m.split("train")}
    # SBD train+val + VOC train - VOC val; the background-only VOC image is skipped
    assert sorted(train) == ["2007_000001", "2007_000002", "2008_000010", "2008_000011"]
    assert [r.id for r in m.split("val")] == ["2007_000004"]
    assert train["2008_000010"].labels == ("horse", "person")
    assert Path(train["2008_000010"].path) == sbd / "img" / "2008_000010.jpg"
    assert train["2007_000002"].labels == ("cat",)
    image, anns, masks, void = gt_masks(prepared.ground_truth["train"], "2008_000010")
    assert not void.any()
    assert sorted(m.classes[a["category_id"] - 1] for a in anns) == ["horse", "person"]
    for a, mask in zip(anns, masks):
        k = 1 if m.classes[a["category_id"] - 1] == "horse" else 2
        assert np.array_equal(mask, inst == k)
    assert m.stats["annotations_from_sbd"] == 2

    # an SBD instance index without a category is a malformed file
    write_sbd(sbd, "2008_000011", one * C["sheep"], one * 2, [C["sheep"]])
    with pytest.raises(InputError) as e:
        voc.read(opts, tmp_path / "out2", LIMITS)
    assert e.value.where.endswith("inst/2008_000011.mat")
    (sbd / "inst" / "2008_000011.mat").unlink()
    with pytest.raises(InputError, match="not found"):
        voc.read(opts, tmp_path / "out2", LIMITS)


# --- voc-mini (real photographs in the VOC layout), when present ---------------------------

VOC_MINI = Path(os.environ.get("TAG2MASK_VOC_MINI",
                               Path(__file__).resolve().parents[2] / "shared/data/voc-mini"))


@pytest.mark.skipif(not (VOC_MINI / "VOC2012").is_dir(), reason=f"voc-mini not at {VOC_MINI}")
def test_voc_mini(tmp_path):
    prepared = voc.read({"root": str(VOC_MINI)}, tmp_path / "out", LIMITS)
    m = prepared.manifest
    assert len(m.split("train")) == 199 and len(m.split("val")) == 89
    assert len(m.classes) == 20 and m.stats["skipped"] == 0
    obj_dir = VOC_MINI / "VOC2012" / "SegmentationObject"
    total = 0
    for split in ("train", "val"):
        coco = prepared.ground_truth[split]
        per_image = {}
        for a in coco["annotations"]:
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
        for image in coco["images"]:
            obj = np.asarray(Image.open(obj_dir / f"{image['name']}.png"))
            n = len(set(np.unique(obj).tolist()) - {0, 255})
            assert per_image.get(image["id"], 0) == n, image["name"]
            total += n
    assert sum(m.stats["instances"].values()) == total
