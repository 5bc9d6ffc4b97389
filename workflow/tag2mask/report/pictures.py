"""The report's pictures: the first `report.panel_images` training images with their peaks,
pseudo masks and ground truth, and the first val images with Mask R-CNN's predictions and
ground truth, as inline PNG data URIs. Masks are tinted per instance and outlined in their
class colour, peaks drawn as crosses in their class colour (core.panels draws them)."""

import base64
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..core import masks as rle
from ..core.panels import color, draw_masks, draw_points
from ..core.store import StoreReader
from ..dataset.images import load_rgb
from .charts import PALETTE
from .readers import read_gt_index, read_predictions

PANEL_SCORE = 0.5  # predictions drawn in the panels score at least this


@dataclass
class Picture:
    caption: str
    src: str = ""      # PNG data URI
    missing: str = ""  # why there is no picture (when src is empty)


@dataclass
class PictureGroup:
    title: str
    rows: list = field(default_factory=list)    # of lists of Picture, one list per image
    legend: list = field(default_factory=list)  # (class name, "#rrggbb")
    missing: str = ""                           # why the group has no rows


def class_color(c):
    """A fixed, well separated RGB colour per class (the chart palette)."""
    h = PALETTE[int(c) % len(PALETTE)].lstrip("#")
    return np.array([int(h[k:k + 2], 16) for k in (0, 2, 4)], np.uint8)


def overlay(image, masks=(), labels=(), points=(), point_labels=(), size=None):
    """uint8 RGB picture scaled so that its longest side is `size`: masks tinted by instance
    with outlines in their class colour; points (row, col) drawn after scaling, so that they
    stay visible, as crosses in their class colour."""
    rgb = draw_masks(image, masks, [color(k) for k in range(len(masks))],
                     outlines=[class_color(c) for c in labels])
    scale = 1.0
    if size:
        img = Image.fromarray(rgb)
        scale = size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
        rgb = np.asarray(img)
    if len(points):
        yx = (np.asarray(points, np.float64).reshape(-1, 2) + 0.5) * scale
        rgb = draw_points(rgb, yx, [class_color(c) for c in point_labels], radius=5, width=2)
    return rgb


def data_uri(rgb):
    """A uint8 RGB array as a PNG data URI."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _picture(rgb, caption):
    return Picture(caption, src=data_uri(rgb))


def _gt_picture(index, rec, image, size, part):
    if index is None:
        return Picture("ground truth", missing=part.why())
    if rec.id not in index:
        return Picture("ground truth", missing="image not in the ground truth")
    counts, labels, h, w = index[rec.id]
    return _picture(overlay(image, rle.decode(counts, h, w), labels, size=size),
                    f"ground truth: {len(counts)} instances")


def _image_picture(image, rec, size):
    return _picture(overlay(image, size=size), f"{rec.id} ({', '.join(rec.labels)})")


def train_group(inputs, manifest, n, size):
    """Training images: image | peaks | pseudo masks | ground truth."""
    group = PictureGroup("Training images: peaks, pseudo masks, ground truth",
                         legend=[(name, "#" + bytes(class_color(c)).hex())
                                 for c, name in enumerate(manifest.classes)])
    gt = read_gt_index(inputs.gt_train)
    peaks = StoreReader(inputs.peaks.path, "peaks") if inputs.peaks.available else None
    pseudo = (StoreReader(inputs.pseudo_masks.path, "pseudo_masks")
              if inputs.pseudo_masks.available else None)
    try:
        for rec in manifest.split("train")[:n]:
            image = load_rgb(rec.path)
            h, w = image.shape[:2]
            row = [_image_picture(image, rec, size)]
            if peaks is not None and rec.id in peaks:
                e = peaks.read(rec.id, ["peak_class", "peak_yx"])
                yx = np.asarray(e["peak_yx"]).reshape(-1, 2)
                row.append(_picture(overlay(image, points=yx, point_labels=e["peak_class"],
                                            size=size), f"{len(yx)} peaks"))
            else:
                row.append(Picture("peaks", missing=inputs.peaks.why() if peaks is None
                                   else "image not in the peaks store"))
            if pseudo is not None and rec.id in pseudo:
                e = pseudo.read(rec.id, ["masks", "labels", "peak_yx"])
                m = rle.decode(e["masks"], h, w)
                yx = np.asarray(e["peak_yx"]).reshape(-1, 2)
                ok = np.isfinite(yx).all(1)
                row.append(_picture(overlay(image, m, e["labels"], yx[ok],
                                            np.asarray(e["labels"])[ok], size),
                                    f"{len(m)} pseudo masks"))
            else:
                row.append(Picture("pseudo masks", missing=inputs.pseudo_masks.why()
                                   if pseudo is None else "image not in the pseudo-mask store"))
            row.append(_gt_picture(gt, rec, image, size, inputs.gt_train))
            group.rows.append(row)
    finally:
        for store in (peaks, pseudo):
            if store is not None:
                store.close()
    return group


def val_group(inputs, manifest, n, size):
    """Validation images: image | Mask R-CNN predictions | ground truth."""
    val = manifest.split("val")[:n]
    if not val:
        return PictureGroup("Validation images", missing="the dataset has no val split")
    group = PictureGroup(f"Validation images: Mask R-CNN predictions (score \u2265 "
                         f"{PANEL_SCORE}), ground truth")
    gt = read_gt_index(inputs.gt_val)
    preds = read_predictions(inputs.predictions_val, PANEL_SCORE)
    for rec in val:
        image = load_rgb(rec.path)
        h, w = image.shape[:2]
        row = [_image_picture(image, rec, size)]
        if preds is not None:
            ps = preds.get(manifest.coco_image_id(rec.id), [])
            m = rle.decode([p["segmentation"]["counts"] for p in ps], h, w)
            row.append(_picture(overlay(image, m, [p["category_id"] - 1 for p in ps],
                                        size=size), f"{len(ps)} predictions"))
        else:
            row.append(Picture("Mask R-CNN", missing=inputs.predictions_val.why()))
        row.append(_gt_picture(gt, rec, image, size, inputs.gt_val))
        group.rows.append(row)
    return group


def picture_groups(inputs, manifest, options):
    """The picture groups of the report ([] when report.panel_images is 0)."""
    n, size = options["panel_images"], options["panel_size"]
    if n == 0:
        return []
    return [train_group(inputs, manifest, n, size), val_group(inputs, manifest, n, size)]
