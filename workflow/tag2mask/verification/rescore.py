"""Pseudo masks checked by the classifier that found them.

A peak on background texture or on a part of an object still gets a mask, and often a fair
confidence from the stage that made it: the class maps are high there. The classifier itself
can tell such masks from whole objects when it is shown the mask alone. Each mask is shown in
two views, each resized to the classifier's input size:

- crop: the mask's box, widened by `margin` of its size on every side (the object with a
  little context, at the scale the classifier was trained on);
- masked: the whole image with every pixel outside the mask set to the image's mean colour
  (the mask's shape and content, nothing else; a colour near the image's own keeps the
  blanked part from looking like an object: the classifier's normalisation mean as the fill
  told objects from background far less well on the synthetic demo).

The verification score is the classifier's probability (sigmoid of its class score) for the
mask's class, averaged over the two views. The mask's new confidence is the geometric mean of
its old confidence and that verification score, so a mask that the classifier does not
recognise loses confidence, and a mask that it does keeps or gains some.

Masks whose confidence is below `skip_below` are not shown to the classifier (on a CPU the
views are most of a run's cost): they keep their confidence, and their verification score is
NaN. With the default cut-off of Mask R-CNN's training (maskrcnn.min_score 0.5), a mask below
0.25 cannot reach it whatever the classifier says (the geometric mean of 0.25 and 1 is 0.5).
"""

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..core.masks import decode

log = logging.getLogger(__name__)

VIEWS = ("crop", "masked")


def mask_views(rgb, mask, size, margin, fill):
    """The two views of one mask: float [2, 3, size, size] in [0, 1].

    rgb: uint8 [H, W, 3]; mask: bool [H, W], not empty; fill: 3 values in [0, 1] (the colour
    outside the mask in the masked view).
    """
    image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dy, dx = int(np.ceil(margin * (y1 - y0))), int(np.ceil(margin * (x1 - x0)))
    h, w = mask.shape
    crop = image[:, max(0, y0 - dy):min(h, y1 + dy), max(0, x0 - dx):min(w, x1 + dx)]
    inside = torch.from_numpy(mask)[None]
    masked = torch.where(inside, image, torch.as_tensor(fill, dtype=image.dtype).view(3, 1, 1))
    return torch.stack([_resize(crop, size), _resize(masked, size)])


def _resize(image, size):
    # antialiased like the classifier's training resize (PIL bilinear) when it shrinks
    return F.interpolate(image[None], size=(size, size), mode="bilinear",
                         align_corners=False, antialias=True)[0]


@torch.no_grad()
def verification_scores(model, rgb, masks, labels, size, margin=0.15, batch_size=32,
                        device="cpu", score_upsample=1):
    """The classifier's probability for each mask's class, averaged over its views: float32 [N].

    model: a PeakClassifier in eval mode; masks: bool [N, H, W]; labels: int [N] class indices.
    An empty mask scores 0.
    """
    fill = (rgb.reshape(-1, 3).mean(axis=0) / 255.0).tolist()
    nonempty = [i for i in range(len(masks)) if masks[i].any()]
    out = np.zeros(len(masks), np.float32)
    for start in range(0, len(nonempty), batch_size):
        chunk = nonempty[start:start + batch_size]
        views = torch.cat([mask_views(rgb, masks[i], size, margin, fill) for i in chunk])
        logits = model.scores(model(views.to(device)), upsample=score_upsample)
        probs = torch.sigmoid(logits.float()).view(len(chunk), len(VIEWS), -1).mean(dim=1)
        out[chunk] = probs[torch.arange(len(chunk)), torch.as_tensor(labels[chunk])].cpu().numpy()
    return out


def combined_scores(scores, verification):
    """The geometric mean of a mask's confidence and its verification score."""
    return np.sqrt(np.clip(scores, 0, None) * np.clip(verification, 0, None)).astype(np.float32)


def rescore_image(model, rgb, entry, options, device="cpu", score_upsample=1):
    """(scores, verification) of one image's pseudo masks (`entry`: a store entry with masks,
    labels and scores; `options`: the verification section with input_size set). Masks below
    options["skip_below"] keep their score; their verification is NaN."""
    h, w = int(entry["height"]), int(entry["width"])
    if rgb.shape[:2] != (h, w):
        raise ValueError(f"image is {rgb.shape[1]}x{rgb.shape[0]}, the store says {w}x{h}")
    scores = np.asarray(entry["scores"], np.float32)
    shown = np.flatnonzero(scores >= options["skip_below"])
    verification = np.full(len(scores), np.nan, np.float32)
    verification[shown] = verification_scores(
        model, rgb, decode([entry["masks"][i] for i in shown], h, w),
        np.asarray(entry["labels"], np.int64)[shown], options["input_size"], options["margin"],
        options["batch_size"], device, score_upsample)
    rescored = scores.copy()
    rescored[shown] = combined_scores(scores[shown], verification[shown])
    return rescored, verification


def rescore_store(store_path, manifest, model, options, out_path, device="cpu",
                  score_upsample=1, progress=True):
    """A copy of the pseudo-mask store at `store_path` with its masks rescored (those below
    `skip_below` keep their score): `scores` becomes the combined confidence, the old one is
    kept as `unverified_scores` and the classifier's as `verification_scores`; everything else
    is copied as it is."""
    from tqdm import tqdm

    from ..core.errors import InputError
    from ..core.store import StoreReader, StoreWriter
    from ..dataset.images import load_rgb

    records = {r.id: r for r in manifest.images}
    with StoreReader(store_path, "pseudo_masks") as store:
        if list(store.class_names) != list(manifest.classes):
            raise InputError(store_path, f"class names {store.class_names} differ from the "
                                         f"manifest's {manifest.classes}")
        root = {k: v for k, v in store.attrs.items()
                if k not in ("format", "kind", "format_version", "class_names", "config_digest")}
        root["verification"] = "classifier views " + "+".join(VIEWS)
        counts = np.zeros(4, np.int64)  # masks, masks whose confidence fell, rose, not shown
        with StoreWriter(out_path, "pseudo_masks", store.class_names,
                         config_digest=store.attrs.get("config_digest", ""), attrs=root) as out:
            for image_id in tqdm(store.image_ids, desc="verification", disable=not progress):
                if image_id not in records:
                    raise InputError(store_path, f"image {image_id!r} is not in the manifest")
                arrays, attrs = store.read_parts(image_id)
                entry = {**arrays, "height": attrs["height"], "width": attrs["width"]}
                rgb = load_rgb(records[image_id].path)
                try:
                    scores, verification = rescore_image(model, rgb, entry, options, device,
                                                         score_upsample)
                except ValueError as e:
                    raise InputError(records[image_id].path, str(e)) from None
                old = np.asarray(arrays["scores"], np.float32)
                counts += [len(old), int((scores < old).sum()), int((scores > old).sum()),
                           int(np.isnan(verification).sum())]
                arrays.update(scores=scores, unverified_scores=old,
                              verification_scores=verification)
                out.add(image_id, attrs.pop("height"), attrs.pop("width"), arrays,
                        {k: v for k, v in attrs.items() if k != "image_id"})
            for name, n in zip(("verified_masks", "verified_masks_lowered",
                                "verified_masks_raised", "verified_masks_skipped"), counts):
                out.file.attrs[f"count_{name}"] = int(n)
    log.info("%d masks: confidence lowered for %d, raised for %d; %d below skip_below not "
             "shown to the classifier", *counts)
    return counts
