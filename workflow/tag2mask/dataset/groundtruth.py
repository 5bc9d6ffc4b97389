"""Ground truth as COCO instances JSON (RLE masks), read by evaluation stages only.

Image ids are the manifest's integer COCO ids (1-based position in the manifest). Each image
entry also carries `name` (the manifest image id) and, where the dataset marks pixels as void
(VOC's 255), `void`: a COCO RLE of those pixels, which the VOC protocol removes from GT and
predictions. Crowd regions are written with iscrowd=1 (ignored as GT by COCOeval).
"""

import numpy as np

from ..core import masks as mask_rle


class CocoBuilder:
    """Accumulates images and instance masks of one split into a COCO instances dict."""

    def __init__(self, classes, description=""):
        self.classes = list(classes)
        self.images = []
        self.annotations = []
        self.description = description

    def add_image(self, coco_id, record, instance_masks, class_indices, void=None, crowd=None):
        """instance_masks: bool [N, H, W]; class_indices: N class indices (0-based);
        void: bool [H, W] or None; crowd: optional list of (class_index, bool [H, W])."""
        h, w = record.height, record.width
        entry = {"id": int(coco_id), "name": record.id, "file_name": record.path,
                 "width": int(w), "height": int(h)}
        if void is not None and np.any(void):
            entry["void"] = mask_rle.to_coco_segmentation(mask_rle.encode(void), h, w)
        self.images.append(entry)
        items = [(m, c, 0) for m, c in zip(instance_masks, class_indices)]
        items += [(m, c, 1) for c, m in (crowd or [])]
        for m, c, iscrowd in items:
            m = np.asarray(m, dtype=bool)
            if m.shape != (h, w):
                raise ValueError(f"{record.path}: mask shape {m.shape} != image size {(h, w)}")
            if not m.any():
                continue
            counts = mask_rle.encode(m)
            ys, xs = np.nonzero(m)
            x0, y0 = int(xs.min()), int(ys.min())
            self.annotations.append({
                "id": len(self.annotations) + 1,
                "image_id": int(coco_id),
                "category_id": int(c) + 1,
                "segmentation": mask_rle.to_coco_segmentation(counts, h, w),
                "area": int(m.sum()),
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                "iscrowd": iscrowd,
            })

    def to_dict(self):
        return {
            "info": {"description": self.description},
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.classes)],
        }
