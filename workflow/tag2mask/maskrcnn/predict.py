"""`tag2mask maskrcnn predict`: instance masks from a trained Mask R-CNN, as COCO results JSON.

Images come from a manifest split (image_id = the manifest's COCO id, the id ground truth
uses) or from a folder, with or without its sub-folders (image_id = 1-based position in sorted
order of the paths relative to the folder; a sidecar `<out>.images.json` maps ids to those
names and sizes). Each result has image_id, category_id
(class index + 1, the manifest's category ids), segmentation (compressed RLE, counts as str),
bbox (x, y, w, h) and score: pycocotools `COCO.loadRes` reads the file unchanged.
Optional overlay PNGs show the masks, outlined, with class and score, over each image.
"""

import json
import logging
import time
import urllib.parse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from ..core import masks as rle
from ..core.atomic import atomic_path
from ..core.errors import InputError
from ..dataset.images import ImageDecodeError, load_rgb
from ..dataset.manifest import read_manifest
from ..dataset.strict_decode import damage_problem
from .model import collate, set_test_size

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageList(torch.utils.data.Dataset):
    """(position, uint8 image [3,H,W]) per path; unreadable images give None when `skip_bad`."""

    def __init__(self, paths, skip_bad=False):
        self.paths = list(paths)
        self.skip_bad = skip_bad

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            # a folder of new images is checked as dataset prepare checks a dataset's: damaged
            # JPEG data or PNG CRCs (which PIL decodes without a word) are skipped too
            problem = damage_problem(self.paths[i]) if self.skip_bad else None
            if problem:
                raise ImageDecodeError(self.paths[i], f"cannot decode image ({problem})")
            image = load_rgb(self.paths[i])
        except ImageDecodeError as e:
            if not self.skip_bad:
                raise
            log.warning("skipped: %s", e)
            return None
        return i, torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _collate(batch):
    batch = [b for b in batch if b is not None]
    return collate(batch) if batch else ((), ())


def manifest_items(manifest_path, split):
    """(coco id, path, name) of a manifest split's images, and the manifest's classes."""
    m = read_manifest(manifest_path)
    records = m.split(split)
    if not records:
        raise InputError(manifest_path, f"no images in split {split!r} (splits: {m.splits})")
    return [(m.coco_image_id(r.id), r.path, r.id) for r in records], m.classes


def folder_items(folder, recursive=False):
    """(id, path, name) of the image files of a folder (and its sub-folders with `recursive`),
    sorted by name; the name is the path relative to the folder, the id its 1-based position."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "image folder not found")
    files = sorted((p for p in (folder.rglob("*") if recursive else folder.iterdir())
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise InputError(folder, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                                 + ("" if recursive else " (sub-folders: images_recursive)"))
    return [(i + 1, str(p), p.relative_to(folder).as_posix()) for i, p in enumerate(files)]


def configure(model, options):
    """Apply the prediction options to a loaded model."""
    model.roi_heads.score_thresh = options["score_threshold"]
    model.roi_heads.detections_per_img = options["box_detections_per_img"]
    model.rpn._pre_nms_top_n["testing"] = options["rpn_pre_nms_top_n_test"]
    model.rpn._post_nms_top_n["testing"] = options["rpn_post_nms_top_n_test"]
    set_test_size(model, options)


def to_results(output, image_id, options):
    """COCO results of one image's model output (masks pasted at image resolution)."""
    keep = output["scores"] >= options["score_threshold"]
    masks = (output["masks"][keep, 0] > options["mask_threshold"]).cpu().numpy()
    boxes = output["boxes"][keep].float().cpu().numpy()
    scores = output["scores"][keep].float().cpu().numpy()
    labels = output["labels"][keep].cpu().numpy()
    nonempty = masks.any(axis=(1, 2))  # an empty mask cannot match anything
    masks, boxes, scores, labels = masks[nonempty], boxes[nonempty], scores[nonempty], labels[nonempty]
    h, w = masks.shape[1:] if len(masks) else (0, 0)
    results = []
    for counts, box, score, label in zip(rle.encode(masks), boxes, scores, labels):
        x0, y0, x1, y1 = (float(v) for v in box)
        results.append({"image_id": int(image_id), "category_id": int(label),
                        "segmentation": rle.to_coco_segmentation(counts, h, w),
                        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        "score": round(float(score), 5)})
    return results, masks


def predict(model, items, options, device, class_names=(), overlays=None, progress=True,
            skip_bad=False, sink=None):
    """Run the model over items [(coco id, path, name)]: (COCO results list, per-image info
    [{id, file_name, width, height}], stats). `skip_bad`: log and skip undecodable images
    (a folder of images) instead of failing (a manifest, whose images were checked).
    `sink`: called with each image's results as they come (`ResultsWriter.write`), which are
    then not kept (the list returned is empty): memory does not grow with the detections."""
    amp = bool(options["amp"]) and device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        ImageList([p for _, p, _ in items], skip_bad), batch_size=options["predict_batch_size"],
        num_workers=options["num_workers"], collate_fn=_collate,
        pin_memory=device.type == "cuda")
    results, infos, skipped, detections = [], [], 0, 0
    if overlays is not None:
        Path(overlays).mkdir(parents=True, exist_ok=True)  # there even when no image decodes
    start = time.perf_counter()
    model.eval()
    for positions, images in tqdm(loader, desc="predict", disable=not progress, mininterval=2.0):
        if not positions:
            continue
        batch = [im.to(device, non_blocking=True).float().div_(255) for im in images]
        with torch.inference_mode(), torch.autocast(device.type, enabled=amp):
            outputs = model(batch)
        for pos, image, out in zip(positions, images, outputs):
            image_id, _path, name = items[pos]
            found, masks = to_results(out, image_id, options)
            detections += len(found)
            if sink is None:
                results.extend(found)
            else:
                sink(found)
            infos.append({"id": image_id, "file_name": name, "width": int(image.shape[2]),
                          "height": int(image.shape[1])})
            if overlays is not None:
                write_overlay(Path(overlays) / f"{urllib.parse.quote(name, safe='')}.png",
                              image.permute(1, 2, 0).numpy(), found, masks, class_names)
    seconds = time.perf_counter() - start
    skipped = len(items) - len(infos)
    stats = {"images": len(infos), "skipped": skipped, "detections": detections,
             "seconds": round(seconds, 3),
             "images_per_s": round(len(infos) / seconds, 3) if seconds > 0 else None}
    return results, infos, stats


class ResultsWriter:
    """Write a COCO results list to a JSON file result by result, in the bytes
    `core.atomic.write_json(path, results, indent=None)` writes (atomically too).

    with ResultsWriter(path) as w: predict(..., sink=w.write)
    """

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self._atomic = atomic_path(self.path)
        self._file = open(self._atomic.__enter__(), "w")
        self._file.write("[")
        self._first = True
        return self

    def write(self, results):
        for r in results:
            self._file.write(("" if self._first else ", ") + json.dumps(r))
            self._first = False

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._file.write("]\n")
        finally:
            self._file.close()
        return self._atomic.__exit__(exc_type, exc, tb)


def _palette(i):
    rng = np.random.default_rng(i + 7)
    return tuple(int(v) for v in rng.integers(40, 256, 3))


def write_overlay(path, image, results, masks, class_names):
    """The image with each predicted mask lightly tinted and outlined in its colour, and its
    class and score written once, on a dark label at the mask's top: readable on photos with
    many detections (no boxes)."""
    from scipy import ndimage

    h, w = image.shape[:2]
    canvas = image.astype(np.float32)
    width = max(1, round(min(h, w) / 250))  # outline thickness grows with the picture
    for k, m in enumerate(masks):
        colour = np.array(_palette(k), np.float32)
        canvas[m] = 0.7 * canvas[m] + 0.3 * colour
        canvas[m & ~ndimage.binary_erosion(m, iterations=width)] = colour
    img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(10, min(h, w) // 40))
    for k, (r, m) in enumerate(zip(results, masks)):
        c = r["category_id"] - 1
        name = class_names[c] if 0 <= c < len(class_names) else str(r["category_id"])
        rows = np.flatnonzero(m.any(1))
        top = int(rows[0]) if len(rows) else 0
        left = int(np.flatnonzero(m[top])[0]) if len(rows) else 0
        text = f"{name} {r['score']:.2f}"
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        x = min(max(0, left), max(0, w - (x1 - x0) - 4))
        y = max(0, top - (y1 - y0) - 4)
        draw.rectangle([x, y, x + x1 - x0 + 4, y + y1 + 2], fill=(0, 0, 0))
        draw.text((x + 2 - x0, y + 1), text, fill=_palette(k), font=font)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
