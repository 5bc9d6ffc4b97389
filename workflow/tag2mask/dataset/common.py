"""What every dataset reader shares: its result, checking images, the large-image policy, stats.

Reader contract: a module of this package with

    read(options: dict, out_dir: Path, limits: dict) -> Prepared

`options` is the config section of that dataset kind, `out_dir` the dataset output folder
(readers that create images, such as the synthetic generator or the downscaler of large
images, write them under it), `limits` holds max_image_pixels and large_images.

`ImageChecker.check(path, image_id)` opens one image and decides how the manifest records it:
- a file that does not exist is an InputError (the dataset description is wrong);
- a file that does not decode, a JPEG whose structure is damaged (`jpeg_structure`) or that
  libjpeg decodes only with a corrupt-data warning, or a PNG with a chunk CRC error
  (`strict_decode`), is a logged skip, counted in the stats;
- an image that is not 8-bit RGB (grayscale, CMYK, alpha, palette, 16-bit) is kept as it is
  (stage readers convert with `images.load_rgb`) and counted as `converted_to_rgb`;
- an image with more than `max_image_pixels` pixels is either skipped (logged, counted) or
  replaced by a downscaled RGB copy under `<out_dir>/resized/`; the reader then resizes its
  ground-truth masks to the copy's size with `resize_labels` (nearest neighbour).
Downscaling decodes JPEGs at reduced resolution (PIL's draft mode) and PNGs a band of rows at
a time (`large_images`), so memory stays bounded by the size of the copy, not of the original.
"""

import logging
import math
import urllib.parse
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.atomic import atomic_path
from ..core.errors import InputError
from .images import ImageDecodeError
from .jpeg_structure import jpeg_problem
from .large_images import downscaled_rgb
from .manifest import Manifest
from .strict_decode import jpeg_decode_problem, png_crc_problem

log = logging.getLogger(__name__)

RESIZED_DIR = "resized"


@dataclass
class Prepared:
    """What a reader returns."""
    manifest: Manifest
    # split -> COCO instances dict (tag2mask.dataset.groundtruth.CocoBuilder.to_dict()); empty
    # when the dataset has no ground truth
    ground_truth: dict = field(default_factory=dict)
SPLITS = ("train", "val")


@dataclass(frozen=True)
class CheckedImage:
    path: Path  # the file the manifest record points to (the original or its resized copy)
    width: int  # size of `path` as decoded
    height: int
    source_width: int  # size of the original file
    source_height: int

    @property
    def resized(self):
        return (self.width, self.height) != (self.source_width, self.source_height)

    @property
    def size(self):
        return self.width, self.height


class DatasetStats:
    """Counts a reader reports in the manifest's `stats` (aggregates only, never per image)."""

    def __init__(self):
        self.skipped_files = []
        self.converted_to_rgb = 0
        self.downscaled = 0
        self.class_instances = defaultdict(Counter)  # split -> class name -> instances
        self.crowd_regions = 0
        self.extra = {}

    def skip(self, path, reason):
        log.warning("skipping %s: %s", path, reason)
        self.skipped_files.append({"path": str(path), "reason": reason})

    def add_instances(self, split, class_names, crowd=0):
        self.class_instances[split].update(class_names)
        self.crowd_regions += crowd

    def to_dict(self, records, classes, has_ground_truth):
        splits = {s: 0 for s in SPLITS if any(r.split == s for r in records)}
        class_images = defaultdict(Counter)
        for r in records:
            splits[r.split] += 1
            class_images[r.split].update(r.labels)

        def per_class(counter_by_split):
            return {s: {c: counter_by_split[s][c] for c in classes} for s in splits}

        stats = {
            "images": len(records),
            "splits": splits,
            "skipped": len(self.skipped_files),
            "skipped_files": self.skipped_files,
            "converted_to_rgb": self.converted_to_rgb,
            "downscaled": self.downscaled,
            "class_images": per_class(class_images),
        }
        if has_ground_truth:
            stats["instances"] = {s: sum(self.class_instances[s].values()) for s in splits}
            stats["class_instances"] = per_class(self.class_instances)
            stats["crowd_regions"] = self.crowd_regions
        stats.update(self.extra)
        return stats


class ImageChecker:
    """Applies the checks above to each image; records conversions and skips in `stats`."""

    def __init__(self, limits, out_dir, stats):
        self.max_pixels = int(limits.get("max_image_pixels", 25_000_000))
        self.large_images = limits.get("large_images", "downscale")
        if self.large_images not in ("downscale", "skip"):
            raise InputError("dataset.large_images", f"unknown policy {self.large_images!r}")
        self.out_dir = Path(out_dir)
        self.stats = stats

    def check(self, path, image_id):
        """A CheckedImage, or None when the image was skipped (logged and counted)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "image file not found")
        try:
            return self._check(path, image_id)
        except ImageDecodeError as e:
            self.stats.skip(path, e.problem)
            return None

    def check_tagged(self, path, image_id, tagged, untagged_reason):
        """check() of an image with tags; one without (whose file exists) is skipped for
        `untagged_reason`."""
        if not Path(path).is_file():
            raise InputError(path, "image file not found")
        if not tagged:
            self.stats.skip(path, untagged_reason)
            return None
        return self.check(path, image_id)

    def _check(self, path, image_id):
        try:
            with warnings.catch_warnings():
                # Our own size policy decides about large images, not PIL's bomb guard.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageDecodeError(path, f"cannot decode image ({e})") from None
        with img:
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageDecodeError(path, f"bad image size {w}x{h}")
            converted = img.mode != "RGB"
            too_large = w * h > self.max_pixels
            if too_large and self.large_images == "skip":
                self.stats.skip(path, f"{w}x{h} = {w * h} pixels is more than "
                                      f"max_image_pixels={self.max_pixels}")
                return None
            # PIL decodes damaged JPEG data into grey or noise without an error, and reads
            # PNG image data without checking its CRCs (strict_decode)
            problem = None
            if img.format == "JPEG":
                problem = jpeg_problem(path) or jpeg_decode_problem(path)
            elif img.format == "PNG":
                problem = png_crc_problem(path)
            if problem:
                raise ImageDecodeError(path, f"cannot decode image ({problem})")
            if too_large:
                new_path, (nw, nh) = self._downscale(img, path, image_id)
                self.stats.downscaled += 1
                return CheckedImage(new_path, nw, nh, w, h)
            _decode(img, path)  # a full decode, so corrupt or truncated files are caught here
            if converted:
                log.debug("%s: mode %s, converted to RGB when read", path, img.mode)
                self.stats.converted_to_rgb += 1
            return CheckedImage(path, w, h, w, h)

    def _downscale(self, img, path, image_id):
        w, h = img.size
        scale = math.sqrt(self.max_pixels / (w * h))
        nw, nh = max(1, int(w * scale)), max(1, int(h * scale))
        small = downscaled_rgb(img, path, (nw, nh))  # memory bounded by the copy's size
        # The size is part of the name: a later run with another max_image_pixels never
        # overwrites a copy that an earlier manifest points to.
        name = f"{urllib.parse.quote(str(image_id), safe='')}.{nw}x{nh}.png"
        out = self.out_dir / RESIZED_DIR / name
        with atomic_path(out) as tmp:
            small.save(tmp, format="PNG")
        log.info("%s: %dx%d downscaled to %dx%d -> %s", path, w, h, nw, nh, out)
        return out, (nw, nh)


def require_splits(records, splits, stats, where):
    """Every configured split must keep at least one image: the workflow expects its files."""
    for split in splits:
        if not any(r.split == split for r in records):
            raise InputError(where, f"the {split} split has no usable image "
                                    f"({len(stats.skipped_files)} skipped in all; see the log)")


def _decode(img, path):
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(path, f"cannot decode image ({e})") from None


def resize_labels(array, size):
    """Resize an integer label map or bool mask [H, W] to size=(width, height), nearest
    neighbour, so ground truth matches a downscaled image."""
    array = np.asarray(array)
    if (array.shape[1], array.shape[0]) == tuple(size):
        return array
    if array.dtype == bool:
        return np.asarray(Image.fromarray(array.astype(np.uint8)).resize(
            size, Image.Resampling.NEAREST)).astype(bool)
    if array.dtype not in (np.uint8, np.int32):
        array = array.astype(np.int32)
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.NEAREST))


def read_label_png(path, what):
    """A VOC-style label PNG (palette or grayscale) as uint8 indices [H, W]."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise InputError(path, f"{what} must be a palette or grayscale PNG of class / "
                                       f"instance indices, found mode {img.mode}")
            return np.array(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(path, f"cannot read {what} ({e})") from None
