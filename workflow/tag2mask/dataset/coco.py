"""COCO instances JSON + image folder, one pair per split.

Classes are the JSON's categories in id order (by name). An image's labels are the categories
of its non-crowd annotations; an image without any is left out (logged, counted). Masks come
from polygons, uncompressed RLE or compressed RLE (as pycocotools' annToMask does); crowd
annotations go to the ground truth with iscrowd=1, which evaluation ignores. Manifest ids are
the original COCO image ids as strings; ground-truth image ids are manifest positions as
everywhere else.
"""

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..core.errors import InputError
from .common import DatasetStats, ImageChecker, Prepared, require_splits, resize_labels
from .groundtruth import CocoBuilder
from .manifest import Manifest, make_record

log = logging.getLogger(__name__)


def load_instances(path):
    """Read and check a COCO instances JSON; return (images, annotations by image id,
    categories sorted by id)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "COCO annotation file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read ({e})") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a COCO instances file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(path, f"missing or non-list key {key!r}")

    categories = data["categories"]
    for i, c in enumerate(categories):
        _require(path, f"categories[{i}]", c, ("id", "name"))
        _check(path, f"categories[{i}].id", c["id"], _is_int, "an integer")
        _check(path, f"categories[{i}].name", c["name"], _is_name, "a non-empty string")
    categories = sorted(categories, key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    names = [c["name"] for c in categories]
    if len(set(ids)) != len(ids):
        raise InputError(path, "duplicate category ids")
    if len(set(names)) != len(names):
        raise InputError(path, f"duplicate category names in {names}")

    images = data["images"]
    image_ids = set()
    for i, im in enumerate(images):
        _require(path, f"images[{i}]", im, ("id", "file_name", "width", "height"))
        _check(path, f"images[{i}].id", im["id"], _is_id, "an integer or a string")
        _check(path, f"images[{i}].file_name", im["file_name"], _is_name, "a non-empty string")
        for key in ("width", "height"):
            _check(path, f"images[{i}].{key}", im[key], _is_size, "a positive integer")
        if im["id"] in image_ids:
            raise InputError(path, f"duplicate image id {im['id']}")
        image_ids.add(im["id"])

    category_ids = set(ids)
    by_image = defaultdict(list)
    for i, a in enumerate(data["annotations"]):
        _require(path, f"annotations[{i}]", a, ("image_id", "category_id", "segmentation"))
        _check(path, f"annotations[{i}].image_id", a["image_id"], _is_id,
               "an integer or a string")
        _check(path, f"annotations[{i}].category_id", a["category_id"], _is_int, "an integer")
        _check(path, f"annotations[{i}].iscrowd", a.get("iscrowd", 0), lambda v: v in (0, 1),
               "0 or 1")
        if a["image_id"] not in image_ids:
            raise InputError(path, f"annotation {a.get('id', i)} points to unknown image id "
                                   f"{a['image_id']}")
        if a["category_id"] not in category_ids:
            raise InputError(path, f"annotation {a.get('id', i)} points to unknown category id "
                                   f"{a['category_id']}")
        by_image[a["image_id"]].append(a)
    return images, by_image, categories


def _require(path, where, item, keys):
    if not isinstance(item, dict):
        raise InputError(path, f"{where} is not an object")
    missing = [k for k in keys if k not in item]
    if missing:
        raise InputError(path, f"{where} lacks key(s) {missing}")


def _check(path, where, value, ok, expected):
    if not ok(value):
        raise InputError(path, f"{where} must be {expected}, not {value!r}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_id(v):
    return _is_int(v) or isinstance(v, str)


def _is_name(v):
    return isinstance(v, str) and v.strip() != ""


def _is_size(v):
    return _is_int(v) and v > 0


def annotation_mask(path, ann, height, width):
    """Decode one annotation's segmentation (polygons, uncompressed or compressed RLE) to a
    bool mask [H, W]."""
    seg = ann["segmentation"]
    where = f"annotation {ann.get('id', '?')}"
    try:
        if isinstance(seg, list):  # polygons: one RLE per polygon, merged
            if not seg or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                                  for p in seg):
                raise InputError(path, f"{where}: polygons need an even number (>= 6) of "
                                       "coordinates each")
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if list(seg["size"]) != [height, width]:
                raise InputError(path, f"{where}: RLE size {seg['size']} differs from its "
                                       f"image's {[height, width]}")
            if isinstance(seg["counts"], list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                counts = seg["counts"]
                rle = {"size": [height, width],
                       "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise InputError(path, f"{where}: segmentation is neither polygons nor RLE")
        return mask_utils.decode(rle).astype(bool)
    except (TypeError, ValueError, UnicodeEncodeError) as e:
        raise InputError(path, f"{where}: cannot decode segmentation ({e})") from None


def read(options, out_dir, limits):
    pairs = [("train", options.get("train_annotations"), options.get("train_images"))]
    if options.get("val_annotations"):
        pairs.append(("val", options["val_annotations"], options.get("val_images")))
    for split, ann, img in pairs:
        if not ann:
            raise InputError(f"dataset.coco.{split}_annotations", "not set")
        if not img:
            raise InputError(f"dataset.coco.{split}_images", "not set")
        if not Path(img).is_dir():
            raise InputError(img, "image folder not found")

    loaded = {split: (Path(ann), Path(img), load_instances(ann)) for split, ann, img in pairs}
    train_categories = loaded["train"][2][2]
    classes = [c["name"] for c in train_categories]
    for split, (ann, _, (_, _, categories)) in loaded.items():
        if [(c["id"], c["name"]) for c in categories] != \
                [(c["id"], c["name"]) for c in train_categories]:
            raise InputError(ann, f"categories differ from the train annotations' "
                                  f"({pairs[0][1]})")
    class_of = {c["id"]: i for i, c in enumerate(train_categories)}

    stats = DatasetStats()
    checker = ImageChecker(limits, out_dir, stats)
    records, builders, seen = [], {}, {}
    for split, (ann_path, image_dir, (images, by_image, _)) in loaded.items():
        builder = builders[split] = CocoBuilder(classes, f"COCO {split} ({ann_path})")
        for im in tqdm(images, desc=f"coco {split}", unit="img", mininterval=5):
            image_id = str(im["id"])
            if image_id in seen:
                raise InputError(ann_path, f"image id {image_id} is also in the "
                                           f"{seen[image_id]} split")
            seen[image_id] = split
            image_path = image_dir / im["file_name"]
            anns = by_image.get(im["id"], [])
            objects = [a for a in anns if not a.get("iscrowd", 0)]
            checked = checker.check_tagged(image_path, image_id, objects,
                                           "no non-crowd annotation (empty tag list)")
            if checked is None:
                continue
            h, w = int(im["height"]), int(im["width"])
            if (checked.source_width, checked.source_height) != (w, h):
                stats.skip(image_path, f"image is {checked.source_width}x"
                                       f"{checked.source_height} but {ann_path.name} says {w}x{h}")
                continue

            def masks_of(group):
                # resize each mask as it is decoded: only one full-size mask at a time
                ms = [resize_labels(annotation_mask(ann_path, a, h, w), checked.size)
                      for a in group]
                return ms, [class_of[a["category_id"]] for a in group]

            masks, mask_classes = masks_of(objects)
            crowd_masks, crowd_classes = masks_of([a for a in anns if a.get("iscrowd", 0)])
            labels = [classes[c] for c in mask_classes]
            record = make_record(image_id, checked.path, checked.width, checked.height, split,
                                 labels, classes)
            records.append(record)
            empty = np.zeros((0, checked.height, checked.width), bool)
            stacked = np.stack(masks) if masks else empty
            builder.add_image(len(records), record, stacked, mask_classes,
                              crowd=list(zip(crowd_classes, crowd_masks)))
            stats.add_instances(split, [classes[c] for m, c in zip(masks, mask_classes) if m.any()],
                                crowd=sum(bool(m.any()) for m in crowd_masks))
    require_splits(records, list(loaded), stats, "dataset.coco")
    manifest = Manifest("coco", classes, records,
                        stats.to_dict(records, classes, has_ground_truth=True))
    return Prepared(manifest, {s: b.to_dict() for s, b in builders.items()})
