"""The built-in synthetic dataset: textured shapes on cluttered backgrounds, made from a seed.

Six classes that differ only by form (circle, square, triangle, star, ring, cross). Colour
carries no class information: each image draws a small palette of random colours and the
background, the clutter and every object mix two jittered palette colours through a random
texture (stripes, checks, smooth noise or a gradient); background and clutter use the same
colours with subdued textures. A classifier must therefore learn shape, and foreground cannot be
cut from background by a colour threshold. Objects are upright up to +-max_rotation degrees
(config; 180 gives any orientation, which a small CNN learns from tags far more slowly) and
their size (diameter of the enclosing circle) is uniform in [min, max]_object_size x image side.

Instances are drawn one on top of the other, so later ones occlude earlier ones; about half are
placed against an instance already there, so objects touch and overlap. A new instance is only
accepted if every instance below it keeps at least MIN_VISIBLE of its area and
MIN_PIXELS_FRACTION of the image visible, so each ground-truth mask (the visible part of its
object) is substantial, and the image-level labels are exactly the classes of the instances in
the ground truth.

Every image is generated from its own random stream seeded by (seed, split, index), so the
result does not depend on generation order: same seed, byte-identical images and ground truth.
"""

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation
from skimage import color
from skimage.draw import polygon2mask
from tqdm import tqdm

from ..core.errors import InputError
from .common import Prepared
from .groundtruth import CocoBuilder
from .manifest import Manifest, make_record

log = logging.getLogger(__name__)

CLASSES = ("circle", "square", "triangle", "star", "ring", "cross")
SPLIT_CODES = {"train": 0, "val": 1}  # part of each image's seed

MAX_ROTATION = 25.0  # degrees either way from each shape's upright pose (config default)
MIN_VISIBLE = 0.5  # an occluded instance keeps at least this share of its own area visible
MIN_PIXELS_FRACTION = 0.002  # ... and at least this share of the image (20 px at 100x100)
NEAR_PLACEMENT = 0.5  # chance that a new instance is placed against an existing one
PLACEMENT_TRIES = 40
IMAGE_TRIES = 20  # redraws of an image that ended with fewer than min_instances
PALETTE_SIZE = 3
# HSV saturation and value ranges of palette colours. Muted colours: a small CNN trained from
# scratch on a few hundred images learns shapes under random vivid colours far more slowly
# (colour invariance costs data), and muted colours still overlap fully between classes.
PALETTE_SATURATION = (0.0, 0.4)
PALETTE_VALUE = (0.2, 1.0)
COLOUR_JITTER = 24.0  # per-channel std (0..255) when a palette colour is used
PIXEL_NOISE = 7.0  # per-pixel std added to the finished image
# texture strength (0 flat .. 1 two independent colours) and amount of each layer
BACKGROUND_STRENGTH = (0.1, 0.35)
BACKGROUND_SCALE = 3.0  # background texture periods are this many times the objects' ones
CLUTTER_STRENGTH = (0.1, 0.4)
CLUTTER_ITEMS = (0, 4)  # [low, high) per image
OBJECT_STRENGTH = (0.4, 0.8)
# luminance (0..255) between an object's mean and the median of a band just outside it;
# the object is lighter or darker than its surroundings at random
OBJECT_CONTRAST = (55.0, 90.0)
LUMINANCE = np.array([0.299, 0.587, 0.114])


@dataclass
class SyntheticImage:
    rgb: np.ndarray  # uint8 [S, S, 3]
    masks: np.ndarray  # bool [N, S, S], visible part of each instance, pairwise disjoint
    classes: np.ndarray  # int [N], index into CLASSES, in drawing order (bottom first)


def image_rng(seed, split, index):
    """The random stream of one image; independent of every other image's."""
    if seed < 0:
        raise InputError("dataset.synthetic.seed", f"must be >= 0, got {seed}")
    return np.random.default_rng([int(seed), SPLIT_CODES[split], int(index)])


# ---------------------------------------------------------------- shapes
# Outlines in unit coordinates, y pointing down as in the image: every shape fits the unit
# disc, so `radius` is its half-extent; angle 0 is the upright pose (triangle and star point up).

def _regular(n, radius=1.0, phase=-math.pi / 2):
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _star(inner=0.42):
    a = -math.pi / 2 + math.pi * np.arange(10) / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _cross(arm=0.32):
    # A plus sign: arms of half-width `arm` reaching the unit square's edge scaled to the disc.
    e, t = 0.95, arm
    return np.array([[t, e], [t, t], [e, t], [e, -t], [t, -t], [t, -e],
                     [-t, -e], [-t, -t], [-e, -t], [-e, t], [-t, t], [-t, e]])


POLYGONS = {
    "square": _regular(4, radius=1.0, phase=math.pi / 4),
    "triangle": _regular(3),
    "star": _star(),
    "cross": _cross(),
}


def shape_mask(name, size, cx, cy, radius, angle, stretch, ring_inner=0.55):
    """Boolean [size, size] mask of one shape centred at (cx, cy) (pixels, x right, y down)."""
    c, s = math.cos(angle), math.sin(angle)
    if name in POLYGONS:
        pts = POLYGONS[name] * radius * np.array([stretch, 1.0 / stretch])
        x = cx + c * pts[:, 0] - s * pts[:, 1]
        y = cy + s * pts[:, 0] + c * pts[:, 1]
        return polygon2mask((size, size), np.stack([y, x], axis=1))
    # circle and ring: an (optionally stretched, rotated) ellipse in the image grid
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xx - cx, yy - cy
    u = (c * dx + s * dy) / (radius * stretch)
    v = (-s * dx + c * dy) / (radius / stretch)
    rho2 = u * u + v * v
    inside = rho2 <= 1.0
    if name == "ring":
        inside &= rho2 >= ring_inner ** 2
    return inside


# ---------------------------------------------------------------- textures and colours

def _smooth_noise(rng, shape, cells):
    """Bilinearly interpolated random grid: smooth noise in [0, 1] of `shape` (h, w)."""
    grid = rng.random((cells + 1, cells + 1))
    rows, cols = (_interpolation_weights(n, cells) for n in shape)
    return rows @ grid @ cols.T


def _interpolation_weights(n, cells):
    pos = (np.arange(n) + 0.5) / n * cells
    i0 = np.minimum(pos.astype(int), cells - 1)
    f = pos - i0
    weights = np.zeros((n, cells + 1))
    weights[np.arange(n), i0] = 1 - f
    weights[np.arange(n), i0 + 1] = f
    return weights


def texture(rng, shape, scale):
    """A random mixing pattern in [0, 1] of `shape`: stripes, checks, noise or gradient.
    Stripe and check periods are fractions of `scale` (the image side, or a multiple of it
    for coarser textures)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    kind = rng.integers(4)
    if kind == 0:  # stripes, soft or hard
        period = rng.uniform(0.04, 0.16) * scale
        w = 0.5 + 0.5 * np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi))
        return (w > 0.5).astype(np.float64) if rng.random() < 0.5 else w
    if kind == 1:  # checks
        period = rng.uniform(0.05, 0.15) * scale
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float64)
    if kind == 2:  # noise with cells of about 0.08-0.3 x scale
        cells = max(1, round(max(shape) / (rng.uniform(0.08, 0.3) * scale)))
        return _smooth_noise(rng, shape, cells)
    return (u - u.min()) / max(np.ptp(u), 1e-9)  # linear gradient


def palette(rng):
    """PALETTE_SIZE random colours (float RGB 0..255) from one distribution for all uses."""
    hsv = np.stack([rng.random(PALETTE_SIZE), rng.uniform(*PALETTE_SATURATION, PALETTE_SIZE),
                    rng.uniform(*PALETTE_VALUE, PALETTE_SIZE)], axis=1)
    return 255.0 * color.hsv2rgb(hsv)


def textured_fill(rng, shape, scale, colours, strength):
    """[h, w, 3] float image mixing two jittered palette colours through a texture.

    `strength` in [0, 1] pulls the second colour towards the first: 0 is a flat colour, 1
    mixes two independent palette colours."""
    a, b = rng.choice(len(colours), 2, replace=False)
    ca = colours[a] + rng.normal(0, COLOUR_JITTER, 3)
    cb = colours[b] + rng.normal(0, COLOUR_JITTER, 3)
    w = texture(rng, shape, scale)[..., None]
    return ca + strength * w * (cb - ca)


def _box(mask, pad):
    """Slices of the bounding box of `mask`, grown by `pad` pixels within the image."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    h, w = mask.shape
    return (slice(max(ys[0] - pad, 0), min(ys[-1] + 1 + pad, h)),
            slice(max(xs[0] - pad, 0), min(xs[-1] + 1 + pad, w)))


def paint(rng, img, mask, colours, strength):
    """Fill `mask` in `img` (in place) with a textured fill computed over its box only."""
    if mask.any():
        box = _box(mask, 0)
        crop = mask[box]
        fill = textured_fill(rng, crop.shape, img.shape[0], colours, rng.uniform(*strength))
        img[box][crop] = fill[crop]


def paint_object(rng, img, mask, colours):
    """Paint an object with a mildly textured fill that stands out from what lies around it.

    Colours stay random and shared by all classes; only the fill's brightness is shifted (the
    same amount on R, G and B) so that its mean luminance lies OBJECT_CONTRAST above or below
    (at random) the median luminance of a thin band just outside the outline. So every object
    is visible by its local contrast, while over the dataset lighter and darker objects, on
    lighter and darker backgrounds, leave no global colour or brightness threshold that
    separates objects from background or tells a class."""
    box = _box(mask, 3)
    crop = mask[box]
    fill = textured_fill(rng, crop.shape, img.shape[0], colours, rng.uniform(*OBJECT_STRENGTH))
    outer = binary_dilation(crop, iterations=2) & ~crop
    if outer.any():
        around = float(np.median(img[box][outer] @ LUMINANCE))
        contrast = rng.uniform(*OBJECT_CONTRAST)
        # lighter or darker at random, unless only one side leaves room within 0..255
        sign = rng.choice([-1.0, 1.0])
        if not 20 <= around + sign * contrast <= 235:
            sign = -sign
        fill += around + sign * contrast - float((fill[crop] @ LUMINANCE).mean())
    img[box][crop] = fill[crop]


# ---------------------------------------------------------------- background and clutter

def background(rng, size, colours):
    """Two subdued, coarse textures split by a smooth noise field, with a little clutter.

    Same colours as the objects, but textures of lower contrast (BACKGROUND_STRENGTH) and
    larger periods (BACKGROUND_SCALE), so objects stand out by their outline against the
    local background, not by their colour."""
    shape, scale = (size, size), BACKGROUND_SCALE * size
    img = textured_fill(rng, shape, scale, colours, rng.uniform(*BACKGROUND_STRENGTH))
    region = _smooth_noise(rng, shape, int(rng.integers(2, 4))) > rng.uniform(0.35, 0.65)
    if region.any():
        box = _box(region, 0)
        fill = textured_fill(rng, region[box].shape, scale, colours,
                             rng.uniform(*BACKGROUND_STRENGTH))
        img[box][region[box]] = fill[region[box]]
    for _ in range(rng.integers(*CLUTTER_ITEMS)):
        paint(rng, img, clutter_mask(rng, size), colours, CLUTTER_STRENGTH)
    return img


def clutter_mask(rng, size):
    """A small irregular blob (thresholded local noise) or a thin line: no class shape."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    cx, cy = rng.uniform(0, size, 2)
    angle = rng.uniform(0, math.pi)
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    if rng.random() < 0.5:
        # an elongated ellipse (far more than a stretched circle) with a strongly noisy edge:
        # lumpy, never a clean class shape
        r = rng.uniform(0.012, 0.03) * size
        aspect = rng.uniform(2.0, 3.5)
        d2 = (u / (r * aspect)) ** 2 + (v / r) ** 2
        noise = _smooth_noise(rng, (size, size), int(rng.integers(8, 18)))
        return d2 + 2.0 * (noise - 0.5) < 1.0
    length = rng.uniform(0.2, 0.7) * size
    width = rng.uniform(0.004, 0.01) * size  # half-width: 1-3 px lines at 128 px
    return (np.abs(u) <= length / 2) & (np.abs(v) <= width)


# ---------------------------------------------------------------- one image

def generate_image(seed, split, index, size=128, min_instances=1, max_instances=6,
                   min_object_size=0.2, max_object_size=0.5, max_rotation=MAX_ROTATION):
    """One image with its instance masks and classes; depends only on the arguments."""
    rng = image_rng(seed, split, index)
    for _ in range(IMAGE_TRIES):
        wanted = int(rng.integers(min_instances, max_instances + 1))
        full, classes = place_instances(rng, size, wanted, min_object_size, max_object_size,
                                        max_rotation)
        if len(full) >= min_instances:
            break
    else:
        raise InputError("dataset.synthetic", f"cannot place {min_instances} instances in a "
                         f"{size}px image; lower min_instances or object sizes")
    colours = palette(rng)
    img = background(rng, size, colours)
    for m in full:  # bottom first: later instances cover earlier ones
        paint_object(rng, img, m, colours)
    img += rng.normal(0, PIXEL_NOISE, img.shape)
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return SyntheticImage(rgb, visible_parts(full), np.array(classes, dtype=np.int64))


def visible_parts(full):
    """Visible part of each mask when later masks are drawn over earlier ones."""
    if len(full) == 0:
        return np.zeros((0,) + full.shape[1:], dtype=bool)
    above = np.zeros(full.shape[1:], dtype=bool)
    out = np.empty_like(full)
    for i in range(len(full) - 1, -1, -1):
        out[i] = full[i] & ~above
        above |= full[i]
    return out


def place_instances(rng, size, wanted, min_object_size, max_object_size, max_rotation=180.0):
    """Up to `wanted` instance masks (full, unoccluded; bottom first) and their classes.

    A candidate is accepted when every instance already placed keeps enough visible area; the
    candidate itself is on top, so it is whole (apart from the image border)."""
    min_pixels = max(4, MIN_PIXELS_FRACTION * size * size)
    full, classes, visible, own_area, centres = [], [], [], [], []
    for _ in range(wanted):
        for _ in range(PLACEMENT_TRIES):
            cls = int(rng.integers(len(CLASSES)))
            # object extent (2 * radius) uniform in [min, max] x image side
            extent = rng.uniform(min_object_size, max_object_size)
            radius = 0.5 * extent * size
            if centres and rng.random() < NEAR_PLACEMENT:
                ox, oy, oradius = centres[rng.integers(len(centres))]
                d = (oradius + radius) * rng.uniform(0.55, 1.05)
                a = rng.uniform(0, 2 * math.pi)
                cx, cy = ox + d * math.cos(a), oy + d * math.sin(a)
            else:
                cx, cy = rng.uniform(0, size, 2)
            margin = 0.6 * radius  # most of the object stays inside the image
            cx = min(max(cx, margin), size - margin)
            cy = min(max(cy, margin), size - margin)
            angle = math.radians(rng.uniform(-max_rotation, max_rotation))
            mask = shape_mask(CLASSES[cls], size, cx, cy, radius, angle,
                              math.exp(rng.uniform(-0.15, 0.15)), rng.uniform(0.45, 0.65))
            area = int(mask.sum())
            if area < min_pixels:
                continue
            left = [int(np.count_nonzero(vis & ~mask)) for vis in visible]
            if all(n >= MIN_VISIBLE * a and n >= min_pixels for n, a in zip(left, own_area)):
                visible = [vis & ~mask for vis in visible] + [mask]
                full.append(mask)
                classes.append(cls)
                own_area.append(area)
                centres.append((cx, cy, radius))
                break
    full = np.array(full, dtype=bool).reshape(-1, size, size)
    return full, classes


# ---------------------------------------------------------------- the reader

def read(options, out_dir, limits):
    """Generate the dataset into out_dir/images/<split>/<id>.png; return manifest + GT."""
    seed, size = options["seed"], options["image_size"]
    lo, hi = options["min_instances"], options["max_instances"]
    smin, smax = options["min_object_size"], options["max_object_size"]
    if lo > hi:
        raise InputError("dataset.synthetic", f"min_instances ({lo}) > max_instances ({hi})")
    if smin > smax:
        raise InputError("dataset.synthetic",
                         f"min_object_size ({smin}) > max_object_size ({smax})")
    if size * size > limits["max_image_pixels"]:
        raise InputError("dataset.synthetic.image_size",
                         f"{size}x{size} exceeds dataset.max_image_pixels "
                         f"({limits['max_image_pixels']})")
    out_dir = Path(out_dir)
    counts = {"train": options["train_images"], "val": options["val_images"]}
    start = time.perf_counter()
    records, ground_truth = [], {}
    for split, n in counts.items():  # all train, then all val: COCO id = manifest position
        if n == 0:
            continue
        folder = out_dir / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        builder = CocoBuilder(CLASSES, description=f"tag2mask synthetic, seed {seed}, {split}")
        for index in tqdm(range(n), desc=f"synthetic {split}", unit="img", leave=False):
            sample = generate_image(seed, split, index, size, lo, hi, smin, smax,
                                    options["max_rotation"])
            image_id = f"{split}_{index:05d}"
            path = folder / f"{image_id}.png"
            Image.fromarray(sample.rgb).save(path)
            labels = [CLASSES[c] for c in sample.classes]
            record = make_record(image_id, path, size, size, split, labels, CLASSES)
            records.append(record)
            builder.add_image(len(records), record, sample.masks, sample.classes)
        ground_truth[split] = builder.to_dict()
    log.info("generated %d synthetic images of %dpx (seed %d) in %.1f s", len(records), size,
             seed, time.perf_counter() - start)
    manifest = Manifest(
        dataset="synthetic", classes=list(CLASSES), images=records,
        # no instance counts: the manifest carries tags only (counts are ground truth)
        stats={"images": len(records), "skipped": 0, "skipped_files": [], "seed": seed})
    return Prepared(manifest, ground_truth)
