"""An image folder plus a CSV of image-level tags; no ground truth (evaluation is skipped).

CSV: header `image,labels`; `image` is a path relative to the image folder, `labels` the class
names present, separated by `;` (`cat;traffic light;dog`), so that a name may hold spaces (COCO's
"traffic light", VOC's "potted plant"). A labels field without `;` is split on spaces (the
older form: `cat dog`), so a single multi-word name needs a trailing `;` (`traffic light;`).
Names are stripped of surrounding spaces. With `classes` given, any other name is an error;
without, the classes are every name the CSV uses, sorted. A row with no labels is left out (logged,
counted). `val_fraction` holds out images by a stable hash of their name, so adding images
never moves the others between splits.
"""

import csv
import hashlib
import logging
from pathlib import Path

from tqdm import tqdm

from ..core.errors import InputError
from .common import DatasetStats, ImageChecker, Prepared
from .manifest import Manifest, make_record

log = logging.getLogger(__name__)

HEADER = ["image", "labels"]
SEPARATOR = ";"  # between the class names of a labels field


def in_val(name, val_fraction):
    """Stable split assignment: the image's sha1 as a number in [0, 1) below val_fraction."""
    h = int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < val_fraction


def split_labels(field):
    """The class names of a labels field: `;`-separated, or space-separated without a `;`."""
    if SEPARATOR in field:
        return [n.strip() for n in field.split(SEPARATOR) if n.strip()]
    return field.split()


def read_rows(csv_path, classes=None):
    """[(line number, image name, [labels])] from the CSV, checked."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(csv_path, "labels CSV not found")
    rows, first_line = [], {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header] != HEADER:
                raise InputError(csv_path, f"line 1: header must be 'image,labels', found "
                                           f"{','.join(header or [])!r}")
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != 2:
                    raise InputError(csv_path, f"line {line}: expected 2 columns (image,labels), "
                                               f"found {len(row)}")
                name, labels = row[0].strip(), split_labels(row[1])
                if not name:
                    raise InputError(csv_path, f"line {line}: empty image name")
                if name in first_line:
                    raise InputError(csv_path, f"line {line}: image {name!r} already listed on "
                                               f"line {first_line[name]}")
                first_line[name] = line
                if classes is not None:
                    unknown = [n for n in labels if n not in classes]
                    if unknown:
                        raise InputError(csv_path, f"line {line}: unknown class {unknown[0]!r} "
                                                   f"(classes: {', '.join(classes)})")
                rows.append((line, name, labels))
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(csv_path, f"cannot read CSV ({e})") from None
    return rows


def read(options, out_dir, limits):
    if not options.get("images"):
        raise InputError("dataset.tags.images", "not set")
    if not options.get("labels_csv"):
        raise InputError("dataset.tags.labels_csv", "not set")
    image_dir, csv_path = Path(options["images"]), Path(options["labels_csv"])
    if not image_dir.is_dir():
        raise InputError(image_dir, "image folder not found")
    classes = options.get("classes")
    if classes is not None:
        classes = list(classes)
        if len(set(classes)) != len(classes) or not classes:
            raise InputError("dataset.tags.classes", f"must be a non-empty list of distinct "
                                                     f"names, got {classes}")
    rows = read_rows(csv_path, classes)
    if classes is None:
        classes = sorted({n for _, _, labels in rows for n in labels})
    for line, name, _ in rows:
        if not (image_dir / name).is_file():
            raise InputError(csv_path, f"line {line}: image {name!r} not found in {image_dir}")

    val_fraction = float(options.get("val_fraction", 0.0))
    by_split = {"train": [], "val": []}
    for row in rows:
        by_split["val" if in_val(row[1], val_fraction) else "train"].append(row)

    stats = DatasetStats()
    checker = ImageChecker(limits, out_dir, stats)
    records = []
    for split, split_rows in by_split.items():
        for line, name, labels in tqdm(split_rows, desc=f"tags {split}", unit="img",
                                       mininterval=5):
            path = image_dir / name
            if not labels:
                stats.skip(path, f"empty tag list ({csv_path.name} line {line})")
                continue
            checked = checker.check(path, name)
            if checked is None:
                continue
            records.append(make_record(name, checked.path, checked.width, checked.height,
                                       split, labels, classes))
    if val_fraction > 0 and not any(r.split == "val" for r in records):
        log.warning("val_fraction=%g but no image fell into the val split (%d images)",
                    val_fraction, len(records))
    stats.extra["val_fraction"] = val_fraction
    manifest = Manifest("tags", classes, records,
                        stats.to_dict(records, classes, has_ground_truth=False))
    return Prepared(manifest, {})
