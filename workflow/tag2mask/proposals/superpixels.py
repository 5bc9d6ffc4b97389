"""The image side of the built-in proposals (tag2mask.proposals.builtin): the working image,
its colour spaces, Felzenszwalb over-segmentations (coarse ones nested into the fine one), the
atoms they overlay into, and per-region histograms, boxes and adjacency."""

import numpy as np
from PIL import Image
from scipy import ndimage, sparse
from skimage import color
from skimage.segmentation import felzenszwalb

COLOUR_SPACES = ("rgb", "hsv", "lab", "rgi", "opponent")
COLOUR_BINS = 25
TEXTURE_BINS = 10
TEXTURE_ORIENTATIONS = 8


def working_image(rgb, working_size):
    """RGB float [h, w, 3] in [0, 1], downscaled so the longest side is <= working_size."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    scale = working_size / max(h, w)
    if scale < 1:  # PIL's bilinear filter widens with the scale factor: antialiased
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    return rgb.astype(np.float64) / 255.0


def coarse_image(rgb, img, settings):
    """(RGB float image for the coarse over-segmentations, its Lab or None) or None: the
    image downscaled so its longest side is the working image's / `coarse_downscale`, when
    that is > 1 and there are scales above the smallest."""
    if settings.coarse_downscale <= 1 or len(set(settings.scales)) == 1:
        return None
    size = max(1, round(max(img.shape[:2]) / settings.coarse_downscale))
    small = working_image(rgb, size)  # from the image itself: one resampling
    return small, (color.rgb2lab(small) if "lab" in settings.colour_spaces else None)


def to_colour_space(img, space, lab=None):
    """Channels of `img` (RGB float in [0, 1]) in colour space `space`, each scaled to [0, 1]
    (`lab`: color.rgb2lab(img) if already computed)."""
    if space == "rgb":
        out = img
    elif space == "hsv":
        out = rgb_to_hsv(img)
    elif space == "lab":
        out = ((color.rgb2lab(img) if lab is None else lab) + [0.0, 128.0, 128.0]) / [
            100.0, 255.0, 255.0]
    elif space == "rgi":  # normalised r, g and intensity: invariant to shading
        s = img.sum(-1, keepdims=True) + 1e-6
        out = np.concatenate([img[..., :2] / s, img.mean(-1, keepdims=True)], -1)
    elif space == "opponent":
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        out = np.stack([(r - g + 1) / 2, (r + g - 2 * b + 2) / 4, (r + g + b) / 3], -1)
    else:
        raise ValueError(f"unknown colour space {space!r}")
    return np.clip(out, 0, 1)


def rgb_to_hsv(img):
    """skimage.color.rgb2hsv of RGB float [H, W, 3] (the same values), 5-8x faster: on
    contiguous channel planes, without boolean-mask assignments (one thread: 1.7 vs 8.8 ms at
    256x256, 2.5 vs 20 ms at 384x384). Hue and saturation are 0 where the pixel is grey."""
    r, g, b = np.ascontiguousarray(np.moveaxis(img, -1, 0))
    v = np.maximum(np.maximum(r, g), b)
    delta = v - np.minimum(np.minimum(r, g), b)
    grey = delta == 0
    d = np.where(grey, 1.0, delta)
    s = delta / np.where(grey, 1.0, v)
    # the channel that is the maximum sets the hue's sector; blue, then green win ties
    h = np.where(b == v, 4.0 + (r - g) / d, np.where(g == v, 2.0 + (b - r) / d, (g - b) / d))
    h = (h / 6.0) % 1.0
    h[grey] = 0.0
    return np.stack([h, s, v], -1)


def upsample_labels(labels, height, width):
    """Nearest-neighbour resize of a label map to (height, width) by index arithmetic."""
    h, w = labels.shape
    if (h, w) == (height, width):
        return labels
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def over_segmentations(cs, small, space, settings):
    """Felzenszwalb label maps of colour-space image `cs`, one per scale (settings.scales).

    The smallest scale runs on `cs`. With a coarse image (`coarse_image`), the others run on
    it, in this colour space, with k and min_size scaled by its share of the pixels (both
    count pixels, so they mean what they mean at the working resolution), and are nested
    into the fine one (`nest`): coarse superpixels are unions of fine ones. Without, all run
    on `cs`."""
    fine_k = min(settings.scales)

    def run(image, k, share=1.0):
        return felzenszwalb(image, scale=k * share, sigma=settings.sigma,
                            min_size=max(1, round(settings.min_size * share)))

    if small is None:
        return [run(cs, k) for k in settings.scales]
    fine = run(cs, fine_k)
    small_cs = to_colour_space(small[0], space, small[1])
    share = small_cs.shape[0] * small_cs.shape[1] / (cs.shape[0] * cs.shape[1])
    return [fine if k == fine_k else
            nest(fine, upsample_labels(run(small_cs, k, share), *cs.shape[:2]))
            for k in settings.scales]


def nest(fine, coarse, dense_limit=1 << 22):
    """Label map [h, w] whose regions are unions of `fine`'s: each fine region joins the
    `coarse` region covering most of its pixels (the first such on ties); consecutive
    labels. The overlap table is dense up to `dense_limit` entries, else sparse."""
    n_fine, n_coarse = int(fine.max()) + 1, int(coarse.max()) + 1
    if n_fine * n_coarse <= dense_limit:
        overlap = np.bincount((fine.astype(np.int64) * n_coarse + coarse).ravel(),
                              minlength=n_fine * n_coarse).reshape(n_fine, n_coarse)
    else:
        overlap = sparse.csr_matrix((np.ones(fine.size, np.int32),
                                     (fine.ravel(), coarse.ravel())), shape=(n_fine, n_coarse))
    majority = np.asarray(overlap.argmax(axis=1)).ravel()
    _, label = np.unique(majority, return_inverse=True)
    return label.ravel()[fine]


def overlay(label_maps):
    """Atoms: the common refinement of several label maps. Returns (atoms [h, w] int,
    number of atoms A, list of [A] arrays giving each atom's label in each input map)."""
    key = np.zeros(label_maps[0].size, np.int64)
    for lab in label_maps:
        key = key * (int(lab.max()) + 1) + lab.ravel()
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    atoms = inverse.reshape(label_maps[0].shape)
    return atoms, len(first), [lab.ravel()[first] for lab in label_maps]


def histogram_counts(labels, n, values, bins):
    """Per-region histograms (pixel counts) of `values` [H, W, K] in [0, 1]: [n, K*bins]."""
    k = values.shape[-1]
    b = np.minimum((values * bins).astype(np.int64), bins - 1)
    idx = labels[..., None] * (k * bins) + np.arange(k) * bins + b
    return np.bincount(idx.ravel(), minlength=n * k * bins).reshape(n, k * bins)


def normalised(counts):
    """Histogram counts [n, D] -> L1-normalised float64 rows."""
    hist = counts.astype(np.float64)
    return hist / np.maximum(hist.sum(1, keepdims=True), 1e-12)


def texture_values(img):
    """Gaussian-derivative responses in 8 orientations per channel, scaled to [0, 1]:
    [H, W, 8 * channels] (the SIFT-like texture of selective search)."""
    out = []
    angles = np.arange(TEXTURE_ORIENTATIONS) * (2 * np.pi / TEXTURE_ORIENTATIONS)
    for c in range(img.shape[-1]):
        gy = ndimage.gaussian_filter(img[..., c], 1.0, order=(1, 0))
        gx = ndimage.gaussian_filter(img[..., c], 1.0, order=(0, 1))
        d = np.cos(angles) * gx[..., None] + np.sin(angles) * gy[..., None]
        d = np.maximum(d, 0)
        out.append(d / max(d.max(), 1e-12))
    return np.concatenate(out, -1)


def adjacency(labels):
    """Unique 4-neighbour label pairs (a < b) and the number of pixel pairs on each boundary."""
    pairs = np.concatenate([
        np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
        np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()], 1)])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]].astype(np.int64)
    n = int(labels.max()) + 1
    key, counts = np.unique(pairs.min(1) * n + pairs.max(1), return_counts=True)
    return np.stack([key // n, key % n], 1), counts


def boxes_of(labels, n):
    """Bounding boxes [n, 4] (r0, c0, r1, c1 inclusive) of each label."""
    rows, cols = np.indices(labels.shape)
    flat = labels.ravel()
    box = np.empty((n, 4), np.int64)
    box[:, 0] = np.full(n, labels.shape[0]); box[:, 1] = np.full(n, labels.shape[1])
    box[:, 2] = -1; box[:, 3] = -1
    np.minimum.at(box[:, 0], flat, rows.ravel())
    np.minimum.at(box[:, 1], flat, cols.ravel())
    np.maximum.at(box[:, 2], flat, rows.ravel())
    np.maximum.at(box[:, 3], flat, cols.ravel())
    return box


def boundary_strength(img_lab, atoms, n_atoms):
    """Atom adjacency (pairs [E, 2], boundary length [E], summed contrast [E]).

    Contrast of a pixel pair across a boundary is their Euclidean distance in (lightly
    smoothed) Lab, so a region's contour strength is the mean over its contour pixels.
    """
    sm = ndimage.gaussian_filter(img_lab, (1, 1, 0))
    pa, pb, diff = [], [], []
    for sl_a, sl_b in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                       ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
        la, lb = atoms[sl_a].ravel(), atoms[sl_b].ravel()
        keep = la != lb
        pa.append(la[keep]); pb.append(lb[keep])
        diff.append(np.linalg.norm(sm[sl_a].reshape(-1, 3)[keep] - sm[sl_b].reshape(-1, 3)[keep],
                                   axis=1))
    a, b, d = np.concatenate(pa), np.concatenate(pb), np.concatenate(diff)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pair_id = lo * n_atoms + hi
    uniq, inv = np.unique(pair_id, return_inverse=True)
    length = np.bincount(inv).astype(np.float64)
    contrast = np.bincount(inv, weights=d)
    return np.stack([uniq // n_atoms, uniq % n_atoms], 1), length, contrast


def superpixel_adjacency(atom_edges, edge_length, edge_contrast, atom_label):
    """Adjacent superpixel pairs (a < b, sorted as `adjacency` gives them), their boundary
    length and summed contrast, from the atom adjacency (`boundary_strength`) and each
    atom's superpixel: every pixel pair across a superpixel boundary crosses an atom one."""
    a, b = atom_label[atom_edges[:, 0]], atom_label[atom_edges[:, 1]]
    keep = a != b
    a, b = a[keep], b[keep]
    n = int(atom_label.max()) + 1
    key, inv = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_inverse=True)
    length = np.bincount(inv, edge_length[keep], minlength=len(key))
    contrast = np.bincount(inv, edge_contrast[keep], minlength=len(key))
    return np.stack([key // n, key % n], 1), length, contrast
