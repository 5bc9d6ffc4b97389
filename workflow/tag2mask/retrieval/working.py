"""One image's retrieval inputs at a reduced working resolution (longest side
`retrieval.working_size`), vectorised over all peaks and proposals.

Proposals are area-downsampled and thresholded at 0.5 into a bool stack [M, h, w]; response and
class maps are bilinearly resized to [P, h, w]; the peaks (and a rule's extra candidate points,
tag2mask.retrieval.select) are the candidates, each with the proposals that cover its point at
full resolution. Only the first `top_proposals` proposals of the store (ranked best first) are
candidates; proposals outside the area limits are not valid. The final pseudo masks are the
chosen proposals' full-resolution RLE, copied unchanged from the proposals store.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core import masks as mask_rle
from ..core.errors import InputError
from .select import rule as retrieval_rule


def working_shape(height, width, working_size):
    """(h, w) of the working resolution: longest side `working_size`, never upsampled."""
    scale = min(1.0, working_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def block_edges(size, work_size):
    """Start index of each working pixel's block of image pixels along one axis (a partition)."""
    return np.floor(np.arange(work_size) * size / work_size).astype(np.int64)


def proposal_stack(counts, height, width, shape, points=None, chunk=64):
    """Decode RLE proposals and area-downsample them to `shape`.

    Working pixel (i, j) covers the image pixels [y_i, y_i+1) x [x_j, x_j+1) with
    y_i = floor(i * H / h) (a partition of the image); it is set when at least half of them are.
    Returns (bool tensor [M, h, w], bool array [M, len(points)]): the second says whether each
    proposal covers each (row, col) point at full resolution. Decoded in chunks so memory stays
    bounded for many proposals on large images.
    """
    h, w = shape
    n = len(counts)
    points = np.zeros((0, 2), np.int64) if points is None else np.asarray(points, np.int64)
    work = np.zeros((n, h, w), bool)
    covers = np.zeros((n, len(points)), bool)
    ey, ex = block_edges(height, h), block_edges(width, w)
    block = np.diff(np.r_[ey, height])[:, None] * np.diff(np.r_[ex, width])[None, :]
    for start in range(0, n, chunk):
        full = mask_rle.decode(counts[start:start + chunk], height, width)
        stop = start + len(full)
        if len(points):
            covers[start:stop] = full[:, points[:, 0], points[:, 1]]
        if (h, w) == (height, width):
            work[start:stop] = full
        else:  # block sums by two reductions (no float copy of the full-resolution stack)
            sums = np.add.reduceat(full, ey, axis=1, dtype=np.uint32)
            sums = np.add.reduceat(sums, ex, axis=2, dtype=np.uint32)
            work[start:stop] = 2 * sums >= block
    return torch.from_numpy(work), covers


def resize_maps(maps, shape):
    """Bilinearly resize float maps [N, h0, w0] to [N, h, w] (float32 tensor)."""
    t = torch.as_tensor(np.asarray(maps, np.float32))
    if len(t) == 0 or tuple(t.shape[1:]) == tuple(shape):
        return t.reshape(len(t), *shape) if len(t) == 0 else t.clone()
    return F.interpolate(t[:, None], size=tuple(shape), mode="bilinear", align_corners=False)[:, 0]


def map_point(flat_index, map_shape, height, width):
    """Map-pixel centre (flat index into a [h0, w0] map) -> (row, col) image pixel."""
    r, c = np.unravel_index(flat_index, map_shape)
    y = (r + 0.5) * height / map_shape[0] - 0.5
    x = (c + 0.5) * width / map_shape[1] - 0.5
    return np.stack([np.clip(np.round(y), 0, height - 1),
                     np.clip(np.round(x), 0, width - 1)], axis=-1).astype(np.int64)


@dataclass
class WorkingInputs:
    """Everything one image's retrieval needs, at the working resolution."""
    masks: torch.Tensor          # bool [M, h, w] candidate proposals
    valid: np.ndarray            # bool [M]: within the area limits (and, for rules that need
    #                              it, with a pixel at the working resolution)
    objectness: np.ndarray       # float32 [M]
    covers: np.ndarray           # bool [M, K]: proposal covers candidate k's point
    response: torch.Tensor       # float32 [P, h, w], each sums to 1 (or 0 if no response)
    peak_class: np.ndarray       # int [P]
    peak_value: np.ndarray       # float32 [P]
    has_response: np.ndarray     # bool [P]
    pixel_area: float            # image pixels per working pixel
    height: int                  # image height (pixels)
    # Candidates k < P are the peaks; a rule may add others (consensus: grid points).
    point_class: np.ndarray      # int [K]
    point_yx: np.ndarray         # float [K, 2] image pixels
    class_maps: torch.Tensor     # float32 [K', h, w]: the stored class maps, resized
    class_evidence: torch.Tensor  # float32 [K', h, w]: class map clamped at 0 / its max
    point_map: np.ndarray        # int [K]: row of class_maps of the candidate's class


def prepare_image(peaks, proposal_counts, objectness, height, width, options, where="image"):
    """Build WorkingInputs from one image's peaks-store entry and its proposals.

    `peaks` is the dict StoreReader.read gives (peak_class, peak_yx, peak_value, response_maps,
    map_classes, class_maps, optionally response_argmax_yx); `proposal_counts` are the RLE masks
    of the proposals store, best first; only the first `top_proposals` are candidates.
    """
    o = options
    top = o["top_proposals"]
    counts = list(proposal_counts[:top] if top else proposal_counts)
    objectness = np.asarray(objectness, np.float32)[:len(counts)]
    peak_class = np.asarray(peaks["peak_class"], np.int64)
    n_peaks = len(peak_class)
    shape = working_shape(height, width, o["working_size"])

    response_maps = np.asarray(peaks["response_maps"], np.float32)
    if response_maps.shape[0] != n_peaks:
        raise InputError(where, f"{response_maps.shape[0]} response maps for {n_peaks} peaks")
    map_shape = response_maps.shape[1:]

    # The point WISE looks up: the argmax of the response map (WISE), or the peak itself.
    if o["point"] == "argmax" and "response_argmax_yx" in peaks:
        points = np.asarray(peaks["response_argmax_yx"], np.float64).reshape(-1, 2)
    elif o["point"] == "argmax":
        points = map_point(response_maps.reshape(n_peaks, -1).argmax(1), map_shape, height, width)
    else:
        points = np.asarray(peaks["peak_yx"], np.float64).reshape(-1, 2)
    points = np.stack([np.clip(np.round(points[:, 0]), 0, height - 1),
                       np.clip(np.round(points[:, 1]), 0, width - 1)], axis=-1).astype(np.int64)

    map_classes = [int(c) for c in np.asarray(peaks["map_classes"]).ravel()]
    missing = sorted(set(peak_class.tolist()) - set(map_classes))
    if missing:
        raise InputError(where, f"peaks of classes {missing} have no stored class map")
    class_maps = resize_maps(peaks["class_maps"], shape)
    evidence = class_maps.clamp(min=0)
    evidence /= evidence.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    point_class = peak_class
    point_map = np.asarray([map_classes.index(int(c)) for c in peak_class], np.int64)
    rule = retrieval_rule(o["method"])
    if hasattr(rule, "extra_points"):
        extra_map, extra_yx = rule.extra_points(evidence, o, height, width)
        points = np.concatenate([points, extra_yx])
        point_class = np.concatenate([peak_class, np.asarray(map_classes, np.int64)[extra_map]])
        point_map = np.concatenate([point_map, extra_map])
    work, covers = proposal_stack(counts, height, width, shape, points)
    area = mask_rle.area(counts, height, width) / float(height * width)
    valid = (area >= o["min_area"]) & (area < o["max_area"])
    if not getattr(rule, "VANISHING_PROPOSALS_VALID", True):
        valid &= work.flatten(1).any(1).numpy()

    response = resize_maps(response_maps, shape).clamp_(min=0)
    total = response.flatten(1).sum(1)
    has_response = (total > 0).numpy()
    response /= torch.where(total > 0, total, torch.ones_like(total))[:, None, None]

    return WorkingInputs(
        masks=work, valid=valid, objectness=objectness, covers=covers, response=response,
        peak_class=peak_class, peak_value=np.asarray(peaks["peak_value"], np.float32),
        has_response=has_response, pixel_area=height * width / float(shape[0] * shape[1]),
        height=height, point_class=point_class, point_yx=points.astype(np.float32),
        class_maps=class_maps, class_evidence=evidence, point_map=point_map)
