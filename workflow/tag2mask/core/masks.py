"""Binary masks <-> COCO run-length encoding (compressed `counts` strings, via pycocotools)."""

import numpy as np
from pycocotools import mask as mask_utils

from .errors import InputError


def encode(masks):
    """Encode a bool array [N, H, W] (or one [H, W]) as a list of COCO RLE counts strings."""
    masks = np.asarray(masks, dtype=bool)
    single = masks.ndim == 2
    if single:
        masks = masks[None]
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    counts = [r["counts"].decode("ascii") for r in rles]
    return counts[0] if single else counts


def decode(counts, height, width):
    """Decode COCO RLE counts strings into a bool array [N, H, W]."""
    if len(counts) == 0:
        return np.zeros((0, height, width), dtype=bool)
    rles = [{"size": [int(height), int(width)], "counts": _as_bytes(c)} for c in counts]
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def to_coco_segmentation(counts, height, width):
    """A COCO `segmentation` dict (compressed RLE) that pycocotools loads unchanged."""
    c = counts.decode("ascii") if isinstance(counts, bytes) else counts
    return {"size": [int(height), int(width)], "counts": c}


def area(counts, height, width):
    rles = [{"size": [int(height), int(width)], "counts": _as_bytes(c)} for c in counts]
    return safe_area(rles)


def safe_area(rles):
    """pycocotools' area() of RLE dicts, in chunks: pycocotools 2.0.11 with numpy 2 raises
    OverflowError ("out of bounds for uint8") for more than 255 masks in one call."""
    if not rles:
        return np.zeros(0, np.int64)
    return np.concatenate([mask_utils.area(rles[i:i + 255]).astype(np.int64)
                           for i in range(0, len(rles), 255)])


def boxes(counts, height, width):
    """Tight xyxy boxes of RLE masks (float32 [N, 4]); empty masks give zeros."""
    rles = [{"size": [int(height), int(width)], "counts": _as_bytes(c)} for c in counts]
    if not rles:
        return np.zeros((0, 4), np.float32)
    xywh = mask_utils.toBbox(rles)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)


def segmentation_to_rle(segmentation, image=None, where="ground truth"):
    """A compressed RLE dict pycocotools accepts, from compressed/uncompressed RLE or
    polygons; checks its size against the image's when `image` is given."""
    seg = segmentation
    if isinstance(seg, list):  # polygons
        if image is None:
            raise InputError(where, "polygon segmentation needs the image size")
        h, w = int(image["height"]), int(image["width"])
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise InputError(where, f"segmentation is neither RLE nor polygons: {str(seg)[:100]}")
    if image is not None and list(seg["size"]) != [int(image["height"]), int(image["width"])]:
        raise InputError(where, f"mask size {seg['size']} differs from image {image['id']}'s "
                                f"size {[image['height'], image['width']]}")
    if isinstance(seg["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(seg, *seg["size"])
    counts = seg["counts"]
    return {"size": list(seg["size"]),
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _as_bytes(c):
    return c.encode("ascii") if isinstance(c, str) else bytes(c)
