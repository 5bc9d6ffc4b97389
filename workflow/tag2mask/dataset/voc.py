"""PASCAL VOC 2012 (SegmentationClass / SegmentationObject), optionally with SBD's train_aug.

Layout under the VOC2012 folder:
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png    palette PNG: 0 background, 1..20 class index, 255 void
    SegmentationObject/<id>.png   palette PNG: 0 background, 1..N instance index, 255 void
    ImageSets/Segmentation/<split>.txt

Image labels are the classes present in SegmentationClass. Instances are the distinct ids of
SegmentationObject (0 and 255 excluded); each takes the class most of its pixels have in
SegmentationClass. Void pixels (255 in either PNG) become the image's `void` region in the
ground truth and are never part of an instance.

train_split "train_aug" is the usual 10,582-image set: SBD train + SBD val + VOC train, minus
VOC val. Images come from VOC's JPEGImages (else SBD's img/); annotations from VOC's PNGs where
they exist, else from SBD's cls/<id>.mat (GTcls.Segmentation) and inst/<id>.mat
(GTinst.Segmentation, GTinst.Categories).
"""

import logging
from pathlib import Path

import numpy as np
import scipy.io
from tqdm import tqdm

from ..core.errors import InputError
from .common import (
    DatasetStats,
    ImageChecker,
    Prepared,
    read_label_png,
    require_splits,
    resize_labels,
)
from .groundtruth import CocoBuilder
from .manifest import Manifest, make_record

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOID = 255
TRAIN_AUG = "train_aug"


def find_voc_root(root):
    """The VOC2012 folder, given it, the folder holding it, or a VOCdevkit parent."""
    if root is None:
        raise InputError("dataset.voc.root", "not set: give the folder holding VOC2012/")
    root = Path(root).expanduser()
    for candidate in (root / "VOC2012", root / "VOCdevkit" / "VOC2012", root):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    if not root.exists():
        raise InputError(root, "VOC root folder not found")
    raise InputError(root, "no ImageSets/Segmentation here, in VOC2012/ or in VOCdevkit/VOC2012/")


def find_sbd_root(sbd_root):
    root = Path(sbd_root).expanduser()
    for candidate in (root, root / "dataset"):  # SBD's archive unpacks to benchmark_RELEASE/dataset
        if (candidate / "inst").is_dir() and (candidate / "cls").is_dir():
            return candidate
    if not root.exists():
        raise InputError(root, "SBD root folder not found")
    raise InputError(root, "no cls/ and inst/ folders here or in dataset/ (is this SBD?)")


def read_id_list(path):
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image list not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if len(set(ids)) != len(ids):
        raise InputError(path, "image list has duplicate ids")
    return ids


class VocSource:
    """Where the image and the annotations of one VOC / SBD id are."""

    def __init__(self, voc, sbd=None):
        self.voc = voc
        self.sbd = sbd

    def split_ids(self, name):
        if name == TRAIN_AUG:
            if self.sbd is None:
                raise InputError("dataset.voc.train_split",
                                 "train_aug needs dataset.voc.sbd_root (the SBD folder)")
            lists = self.voc / "ImageSets" / "Segmentation"
            ids = set(read_id_list(self.sbd / "train.txt"))
            ids |= set(read_id_list(self.sbd / "val.txt"))
            ids |= set(read_id_list(lists / "train.txt"))
            ids -= set(read_id_list(lists / "val.txt"))
            return sorted(ids)
        return read_id_list(self.voc / "ImageSets" / "Segmentation" / f"{name}.txt")

    def image_path(self, image_id):
        path = self.voc / "JPEGImages" / f"{image_id}.jpg"
        if not path.is_file() and self.sbd is not None:
            sbd_path = self.sbd / "img" / f"{image_id}.jpg"
            if sbd_path.is_file():
                return sbd_path
        return path  # ImageChecker reports it when missing

    def annotation(self, image_id):
        """(class map, instance map, instance classes or None, class map file): the maps as
        uint8 arrays; instance classes are given by SBD only."""
        cls_png = self.voc / "SegmentationClass" / f"{image_id}.png"
        obj_png = self.voc / "SegmentationObject" / f"{image_id}.png"
        if self.sbd is not None and not cls_png.is_file():
            return (*read_sbd(self.sbd, image_id), self.sbd / "cls" / f"{image_id}.mat")
        cls = read_label_png(cls_png, "SegmentationClass PNG")
        obj = read_label_png(obj_png, "SegmentationObject PNG")
        if cls.shape != obj.shape:
            raise InputError(obj_png, f"size {obj.shape[::-1]} differs from its "
                                      f"SegmentationClass PNG {cls.shape[::-1]}")
        return cls, obj, None, cls_png


def _mat_struct(path, name, fields):
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "SBD annotation file not found")
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, TypeError, NotImplementedError) as e:
        raise InputError(path, f"cannot read MATLAB file ({e})") from None
    if name not in mat:
        raise InputError(path, f"no {name} struct in this file")
    struct = mat[name]
    missing = [f for f in fields if not hasattr(struct, f)]
    if missing:
        raise InputError(path, f"{name} lacks field(s) {missing}")
    return struct


def read_sbd(sbd, image_id):
    """SBD's class map, instance map and per-instance class indices for one image."""
    cls_path, inst_path = sbd / "cls" / f"{image_id}.mat", sbd / "inst" / f"{image_id}.mat"
    cls = np.asarray(_mat_struct(cls_path, "GTcls", ["Segmentation"]).Segmentation)
    gtinst = _mat_struct(inst_path, "GTinst", ["Segmentation", "Categories"])
    inst = np.asarray(gtinst.Segmentation)
    categories = np.atleast_1d(np.asarray(gtinst.Categories)).astype(np.int64).ravel()
    if cls.ndim != 2 or inst.shape != cls.shape:
        raise InputError(inst_path, f"segmentation shape {inst.shape} differs from cls/ "
                                    f"{cls.shape} (or is not 2-D)")
    ids = np.unique(inst)
    ids = ids[(ids != 0) & (ids != VOID)]
    if len(ids) and ids.max() > len(categories):
        raise InputError(inst_path, f"instance index {int(ids.max())} but only "
                                    f"{len(categories)} GTinst.Categories")
    bad = categories[(categories < 1) | (categories > len(VOC_CLASSES))]
    if len(bad):
        raise InputError(inst_path, f"GTinst.Categories has class indices {bad.tolist()} "
                                    f"outside 1..{len(VOC_CLASSES)}")
    return cls.astype(np.uint8), inst.astype(np.uint8), categories


def instances(cls, obj, categories=None):
    """Instance masks, their 0-based class indices, the void mask and the number of instances
    that had no class pixels (VOC PNGs: class = majority of SegmentationClass under the
    instance; SBD: GTinst.Categories)."""
    void = (cls == VOID) | (obj == VOID)
    ids = np.unique(obj)
    ids = ids[(ids != 0) & (ids != VOID)]
    masks, classes, unclassed = [], [], 0
    for i in ids:
        m = (obj == i) & ~void
        if categories is not None:
            c = int(categories[i - 1])
        else:
            votes = np.bincount(cls[m], minlength=256)[1:len(VOC_CLASSES) + 1]
            if votes.sum() == 0:
                unclassed += 1
                continue
            c = int(votes.argmax()) + 1
        if m.any():
            masks.append(m)
            classes.append(c - 1)
    shape = obj.shape
    stacked = np.stack(masks) if masks else np.zeros((0, *shape), bool)
    return stacked, classes, void, unclassed


def read(options, out_dir, limits):
    voc = find_voc_root(options.get("root"))
    train_split = options.get("train_split", "train")
    val_split = options.get("val_split", "val")
    sbd = None
    if options.get("sbd_root"):
        sbd = find_sbd_root(options["sbd_root"])
    elif train_split == TRAIN_AUG:
        raise InputError("dataset.voc.train_split",
                         "train_aug needs dataset.voc.sbd_root (the SBD folder)")
    source = VocSource(voc, sbd)

    splits = [("train", source.split_ids(train_split))]
    if val_split:
        val_ids = source.split_ids(val_split)
        overlap = set(splits[0][1]) & set(val_ids)
        if overlap:
            raise InputError("dataset.voc", f"{len(overlap)} image(s) are in both {train_split} "
                                            f"and {val_split}, e.g. {sorted(overlap)[:3]}")
        splits.append(("val", val_ids))

    classes = list(VOC_CLASSES)
    stats = DatasetStats()
    checker = ImageChecker(limits, out_dir, stats)
    records, builders = [], {}
    unclassed = from_sbd = 0
    for split, ids in splits:
        builder = builders[split] = CocoBuilder(classes, f"VOC2012 {split} ({voc})")
        for image_id in tqdm(ids, desc=f"voc {split}", unit="img", mininterval=5):
            cls, obj, categories, cls_path = source.annotation(image_id)
            values = np.unique(cls)
            bad = values[(values > len(classes)) & (values != VOID)]
            if len(bad):
                raise InputError(cls_path,
                                 f"values {bad.tolist()} are neither a VOC class index "
                                 f"(1..{len(classes)}) nor void (255)")
            labels = [classes[c - 1] for c in values if 1 <= c <= len(classes)]
            image_path = source.image_path(image_id)
            checked = checker.check_tagged(image_path, image_id, labels,
                                           "no object of the VOC classes in its class map")
            if checked is None:
                continue
            if (checked.source_width, checked.source_height) != (cls.shape[1], cls.shape[0]):
                raise InputError(image_path, f"image is {checked.source_width}x"
                                             f"{checked.source_height} but its annotation is "
                                             f"{cls.shape[1]}x{cls.shape[0]}")
            if checked.resized:
                cls, obj = resize_labels(cls, checked.size), resize_labels(obj, checked.size)
            masks, mask_classes, void, n_unclassed = instances(cls, obj, categories)
            unclassed += n_unclassed
            from_sbd += categories is not None
            record = make_record(image_id, checked.path, checked.width, checked.height, split,
                                 labels, classes)
            records.append(record)
            builder.add_image(len(records), record, masks, mask_classes, void=void)
            stats.add_instances(split, [classes[c] for c in mask_classes])
    if unclassed:
        log.warning("%d instance(s) had no class pixels under them and were left out", unclassed)
    require_splits(records, [s for s, _ in splits], stats, voc)
    stats.extra["instances_without_class"] = unclassed
    if sbd is not None:
        stats.extra["annotations_from_sbd"] = from_sbd
    manifest = Manifest("voc", classes, records,
                        stats.to_dict(records, classes, has_ground_truth=True))
    return Prepared(manifest, {s: b.to_dict() for s, b in builders.items()})
