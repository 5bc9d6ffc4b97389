"""IRNet's random walk on boundary-aware affinities, with a sparse transition matrix.

The affinity of cells i and j within `radius` of each other is a_ij = (1 - max boundary on the
line between them) ** beta (tag2mask.irnet.relations.pair_affinity); every cell also has
affinity 1 with itself, and cells further apart have none. The transition matrix is the
affinity matrix with each column normalised to sum 1; IRNet propagates the seed scores x
(instance CAMs, damped by 1 - boundary) as x T^t, t = 2 ** 8 = 256 (its `exp_times` 8 squares T
eight times).

IRNet builds T as a dense n x n matrix (n cells: 16,384 for a 512 x 512 image at stride 4,
1 GiB in float32, and squaring it costs n^3). Here T is a scipy.sparse CSR matrix with one row
per cell and one entry per neighbour (2 D + 1 per row, D = pairs per cell in one half-plane),
so memory grows linearly with the cells, and x T^t is t sparse products with the score maps
(`random_walk`). `dense_random_walk` is the dense reference (benchmarks/random_walk.py, tests).
"""

import numpy as np
import scipy.sparse as sp
import torch

from .relations import PairPaths


def neighbour_affinities(boundary, radius, beta):
    """(offsets [D, 2], affinities float64 [D, H, W]) of every cell and its half-plane pair
    offsets: (1 - max boundary on the line) ** beta, 0 for pairs leaving the grid."""
    paths = PairPaths(radius)
    b = torch.as_tensor(np.asarray(boundary, np.float32))
    aff = (1 - paths.max_on_lines(b)).clamp(min=0).double().numpy() ** beta
    return paths.offsets, aff


def affinity_matrix(boundary, radius, beta):
    """Symmetric scipy CSR [n, n] (n = H * W cells, row-major) of the affinities, with 1 on
    the diagonal; only pairs within `radius` are stored."""
    h, w = np.shape(boundary)
    offsets, aff = neighbour_affinities(boundary, radius, beta)
    idx = np.arange(h * w).reshape(h, w)
    rows, cols, vals = [idx.ravel()], [idx.ravel()], [np.ones(h * w)]
    for (dy, dx), a in zip(offsets, aff):
        ys, xs = np.nonzero(a > 0)  # pairs leaving the grid (or fully cut) are left out
        ty, tx = ys + dy, xs + dx
        src, dst, v = idx[ys, xs], idx[ty, tx], a[ys, xs]
        rows += [src, dst]
        cols += [dst, src]
        vals += [v, v]
    rows, cols, vals = (np.concatenate(x) for x in (rows, cols, vals))
    return sp.csr_matrix((vals, (rows, cols)), shape=(h * w, h * w))


def transition_matrix(boundary, radius, beta):
    """The walk's matrix P (CSR, float32) with P @ y = (y^T T)^T: row i of P averages the
    scores of i's neighbours weighted by affinity, P = D^-1 A (A symmetric, D its row sums)."""
    a = affinity_matrix(boundary, radius, beta)
    inv = 1.0 / np.asarray(a.sum(1)).ravel()
    return (sp.diags(inv) @ a).tocsr().astype(np.float32)


def random_walk(scores, boundary, radius=5, beta=10.0, steps=256):
    """Scores [K, H, W] after `steps` walk steps on the boundary map [H, W] (values in
    [0, 1]): x T^steps with x = scores * (1 - boundary). Sparse: memory linear in H * W."""
    scores = np.asarray(scores, np.float32)
    k, h, w = scores.shape
    if k == 0:
        return scores.copy()
    p = transition_matrix(boundary, radius, beta)
    y = (scores * (1 - np.asarray(boundary, np.float32))).reshape(k, h * w).T.copy()
    for _ in range(steps):
        y = p @ y
    return y.T.reshape(k, h, w)


def dense_random_walk(scores, boundary, radius=5, beta=10.0, steps=256, square=False):
    """The dense reference: the same walk with T as a dense n x n float32 matrix (IRNet's
    way, O(n^2) memory). square=True raises T to `steps` (a power of two) by repeated
    squaring as IRNet does (n^3 per squaring: practical on a GPU only); otherwise y is
    multiplied `steps` times by the dense matrix (the same result up to rounding)."""
    scores = np.asarray(scores, np.float32)
    k, h, w = scores.shape
    a = affinity_matrix(boundary, radius, beta).astype(np.float32).toarray()
    a /= a.sum(0, keepdims=True)  # column-normalised T, in place
    x = (scores * (1 - np.asarray(boundary, np.float32))).reshape(k, h * w)
    if square:
        times = round(np.log2(steps))
        if 2 ** times != steps:
            raise ValueError(f"square=True needs steps a power of two, not {steps}")
        t = torch.from_numpy(a)
        for _ in range(times):
            t = t @ t
        return (torch.from_numpy(x) @ t).numpy().reshape(k, h, w)
    y = x
    for _ in range(steps):
        y = y @ a
    return y.reshape(k, h, w)
