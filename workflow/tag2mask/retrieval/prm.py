"""Retrieval rule `prm` (Zhou et al. 2018): every candidate proposal S gets, for every peak,

    score(S) = a * sum(R over S) + sum(R over contour(S)) - b * sum(Q over S)

with R the peak's response map, Q the background of the peak's class map (map <
background_factor x its mean) and contour(S) the morphological gradient of S (dilation minus
erosion with a square footprint). The best proposal per peak is kept; then
tag2mask.retrieval.select.suppress_and_merge. Options: `retrieval.prm`.

Scores for all peaks and proposals are two matrix products at the working resolution ([P, h*w]
@ [h*w, M]: the inside terms a*R - b*Q against the masks, R against the contours), per chunk
of 32 proposals so the float copies stay in cache; contours come from a separable bool
dilation/erosion. Resolution-independence: R sums to 1 at the working resolution (as at map
resolution), the contour footprint `contour_width` is given in image pixels and scaled (odd, at
least 3), and sum(Q over S) is counted in image pixels, so b keeps the meaning it has in PRM's
code, which scores at image resolution.
"""

import numpy as np
import torch

from .select import as_float, suppress_and_merge

# a proposal that vanishes at the working resolution cannot be scored
VANISHING_PROPOSALS_VALID = False


def contour_size(contour_width, height, work_height):
    """Odd footprint side at the working resolution for a `contour_width` in image pixels."""
    k = contour_width * work_height / height
    return max(3, 2 * int(round((k - 1) / 2)) + 1)


def _square_filter(stack, radius, combine):
    """OR (dilation) or AND (erosion) of a bool stack over a (2r+1)^2 square, separably by
    shifted copies; pixels outside the image take no part."""
    out = stack
    for axis in (1, 2):
        src, out = out, out.clone()
        n = src.shape[axis]
        for d in range(1, min(radius, n - 1) + 1):
            lo, hi = out.narrow(axis, d, n - d), out.narrow(axis, 0, n - d)
            combine(lo, src.narrow(axis, 0, n - d), out=lo)
            combine(hi, src.narrow(axis, d, n - d), out=hi)
    return out


def morphological_gradient(stack, size):
    """Dilation minus erosion of a bool stack [M, h, w] with a size x size square footprint.

    Pixels outside the image are ignored (neither dilate nor erode), as in OpenCV/scipy.
    Separable shifts of bool tensors: about 50x faster than a float max-pool of the stack.
    """
    r = size // 2
    return _square_filter(stack, r, torch.logical_or) & ~_square_filter(stack, r,
                                                                       torch.logical_and)


def background(inp, options):
    """Q per peak [P, h, w] (bool): its class map below background_factor x the map's mean."""
    maps = inp.class_maps
    q = maps < options["prm"]["background_factor"] * maps.flatten(1).mean(1)[:, None, None]
    return q[inp.point_map[:len(inp.peak_class)]]


def footprint(inp, options):
    """The contours' footprint side at the working resolution."""
    return contour_size(options["prm"]["contour_width"], inp.height, inp.masks.shape[1])


def prm_scores(inp, options, chunk=32):
    """PRM scores [P, M] of every proposal for every peak."""
    a, b = options["prm"]["a"], options["prm"]["b"]
    size = footprint(inp, options)
    r = inp.response.flatten(1)
    inside = a * r - (b * inp.pixel_area) * as_float(background(inp, options).flatten(1))
    scores = torch.empty((len(r), len(inp.masks)))
    for start in range(0, len(inp.masks), chunk):
        masks = inp.masks[start:start + chunk]
        contours = morphological_gradient(masks, size)
        scores[:, start:start + len(masks)] = (inside @ as_float(masks.flatten(1)).T
                                               + r @ as_float(contours.flatten(1)).T)
    return scores.double().numpy()


def select(inp, options):
    table = prm_scores(inp, options)
    return suppress_and_merge(inp, np.where(inp.valid[None], table, -np.inf), options)
