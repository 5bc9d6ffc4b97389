"""The dataset manifest: the only description of a dataset that training stages read.

A manifest lists, per image, its id, path, width, height, split and image-level class labels,
and nothing else: no masks, no boxes, no instance counts. Ground truth for evaluation lives in
separate COCO instances files (see `tag2mask.dataset.groundtruth`). Layout: docs/formats.md.
"""

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.atomic import read_json, write_json
from ..core.errors import InputError

FORMAT = "tag2mask-manifest"
VERSION = 1
RECORD_KEYS = ("id", "path", "width", "height", "split", "labels")


@dataclass(frozen=True)
class ImageRecord:
    id: str
    path: str  # absolute once loaded; stored relative to the manifest's folder when inside it
    width: int
    height: int
    split: str
    labels: tuple  # class names present in the image, sorted by class index


@dataclass
class Manifest:
    dataset: str
    classes: list
    images: list  # of ImageRecord
    stats: dict = field(default_factory=dict)
    # split name -> GT file path (relative to the manifest) for splits that have ground truth
    ground_truth: dict = field(default_factory=dict)
    source: Path = None  # the file this manifest was read from

    def split(self, name):
        return [r for r in self.images if r.split == name]

    @property
    def splits(self):
        return sorted({r.split for r in self.images})

    def class_index(self, name):
        return self.classes.index(name)

    def label_indices(self, record):
        return [self.classes.index(n) for n in record.labels]

    def coco_image_id(self, image_id):
        """The integer COCO id of an image: its 1-based position in the manifest."""
        if not hasattr(self, "_coco_ids"):
            self._coco_ids = {r.id: i + 1 for i, r in enumerate(self.images)}
        return self._coco_ids[image_id]


def make_record(image_id, path, width, height, split, labels, classes):
    """Build a validated record; labels are sorted by class index and de-duplicated."""
    unknown = [n for n in labels if n not in classes]
    if unknown:
        raise InputError(path, f"unknown class name(s) {unknown}; known classes: {list(classes)}")
    ordered = tuple(sorted(set(labels), key=classes.index))
    return ImageRecord(str(image_id), str(path), int(width), int(height), str(split), ordered)


def validate(manifest, where="manifest"):
    """Check the invariants every reader promises; raise InputError naming the problem."""
    if len(set(manifest.classes)) != len(manifest.classes):
        raise InputError(where, f"duplicate class names in {manifest.classes}")
    seen = set()
    for r in manifest.images:
        if r.id in seen:
            raise InputError(where, f"duplicate image id {r.id!r}")
        seen.add(r.id)
        if not r.labels:
            raise InputError(r.path, "image has an empty tag list")
        unknown = [n for n in r.labels if n not in manifest.classes]
        if unknown:
            raise InputError(r.path, f"unknown class name(s) {unknown}")
        if r.width <= 0 or r.height <= 0:
            raise InputError(r.path, f"bad image size {r.width}x{r.height}")
    if not manifest.images:
        raise InputError(where, "no usable images")


def write_manifest(path, manifest):
    path = Path(path)
    validate(manifest, path)
    base = path.parent.resolve()
    images = []
    for r in manifest.images:
        rec = asdict(r)
        rec["labels"] = list(r.labels)
        p = Path(r.path).resolve()
        rec["path"] = os.path.relpath(p, base) if p.is_relative_to(base) else str(p)
        images.append(rec)
    write_json(
        path,
        {
            "format": FORMAT,
            "version": VERSION,
            "dataset": manifest.dataset,
            "classes": list(manifest.classes),
            "ground_truth": manifest.ground_truth,
            "stats": manifest.stats,
            "images": images,
        },
    )


def _check_record(path, rec):
    """An image record read from a file has exactly the record keys, of the right types."""
    if not isinstance(rec, dict):
        raise InputError(path, f"image entry {rec!r} is not an object")
    extra = set(rec) - set(RECORD_KEYS)
    if extra:
        raise InputError(path, f"image {rec.get('id')!r} has unexpected keys {sorted(extra)}")
    missing = [k for k in RECORD_KEYS if k not in rec]
    if missing:
        raise InputError(path, f"image {rec.get('id')!r} lacks keys {missing}")
    for key in ("id", "path", "split"):
        if not isinstance(rec[key], str):
            raise InputError(path, f"image {rec['id']!r}: {key} must be a string")
    for key in ("width", "height"):
        if not isinstance(rec[key], int) or isinstance(rec[key], bool):
            raise InputError(path, f"image {rec['id']!r}: {key} must be an integer")
    if not isinstance(rec["labels"], list) or not all(isinstance(n, str) for n in rec["labels"]):
        raise InputError(path, f"image {rec['id']!r}: labels must be a list of class names")


def read_manifest(path):
    path = Path(path)
    data = read_json(path, "manifest")
    if not isinstance(data, dict) or data.get("format") != FORMAT \
            or data.get("version") != VERSION:
        found = data if isinstance(data, dict) else {}
        raise InputError(
            path, f"not a {FORMAT} version {VERSION} file (format={found.get('format')!r}, "
            f"version={found.get('version')!r})")
    for key, kind in (("dataset", str), ("classes", list), ("images", list)):
        if not isinstance(data.get(key), kind):
            raise InputError(path, f"{key!r} missing or not a {kind.__name__}")
    if not all(isinstance(c, str) for c in data["classes"]):
        raise InputError(path, "class names must be strings")
    base = path.parent.resolve()
    images = []
    for rec in data["images"]:
        _check_record(path, rec)
        p = Path(rec["path"])
        images.append(ImageRecord(rec["id"], str(p if p.is_absolute() else base / p),
                                  rec["width"], rec["height"], rec["split"], tuple(rec["labels"])))
    m = Manifest(data["dataset"], data["classes"], images, data.get("stats", {}),
                 data.get("ground_truth", {}), source=path)
    validate(m, path)
    return m
