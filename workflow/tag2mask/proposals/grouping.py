"""Hierarchical grouping of the built-in proposals (tag2mask.proposals.builtin): greedy merging
of the most similar adjacent regions (selective search's similarity mixes) and the regions of
the resulting merge forest."""

import heapq

import numpy as np
from scipy import sparse

from .superpixels import adjacency, boxes_of

SIMILARITY_LETTERS = "CTSFB"


def hierarchical_grouping(labels, n, colour_hist, texture_hist, mix, adjacent=None, box=None):
    """Greedy grouping of adjacent regions by similarity `mix` (letters of SIMILARITY_LETTERS).

    Returns merges [m, 2] int64: region n+i is the union of regions merges[i] (regions
    0..n-1 are the superpixels; m = n-1, fewer when the adjacency graph is disconnected).
    `adjacent`: (pairs [E, 2], boundary length [E], summed boundary contrast [E]) of the
    adjacent superpixels, as `superpixel_adjacency` gives (needed for B); without it, the
    pairs of `adjacency(labels)`. `box` (boxes_of) may be passed in when several mixes group
    the same over-segmentation.
    """
    total = labels.size
    size_m = 2 * n - 1
    size0 = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    box0 = boxes_of(labels, n) if box is None else box
    use_c, use_t, use_s, use_f, use_b = (ch in mix for ch in SIMILARITY_LETTERS)
    if adjacent is None:
        adjacent = (*adjacency(labels), None)
    pairs, length, contrast = adjacent
    if use_b and contrast is None:
        raise ValueError("similarity B needs the boundary contrast of adjacent superpixels")
    # B: weak boundaries first; 0.5 where the mean contrast along the shared boundary is the
    # mean over all superpixel boundaries of the image
    typical = (float(contrast.sum() / max(length.sum(), 1)) if use_b else 1.0) or 1.0
    hists = []  # colour and/or texture histograms of all regions, filled as regions form
    for use, h in ((use_c, colour_hist), (use_t, texture_hist)):
        if use:
            hists.append(np.zeros((size_m, h.shape[1])))
            hists[-1][:n] = h

    def histogram_similarity(i, js):  # region(s) i with regions js: summed intersections
        if not hists:
            return np.zeros(len(js))
        s = np.minimum(hists[0][i], hists[0][js]).sum(1)
        for h in hists[1:]:
            s += np.minimum(h[i], h[js]).sum(1)
        return s

    # neighbours[a] = {b: (boundary length, summed contrast)}
    neighbours = [{} for _ in range(size_m)]
    con = contrast if contrast is not None else np.zeros(len(pairs))
    for a, b, ln, c in zip(pairs[:, 0].tolist(), pairs[:, 1].tolist(), length.tolist(),
                           con.tolist()):
        neighbours[a][b] = neighbours[b][a] = (ln, c)
    # Lazy greedy merging: the heap holds one pair (-similarity, owner, other) per living
    # region, the best of the pairs it owns (the initial pairs their first region, later
    # pairs the new region); the rest wait in owned[r], best last. A pair popped with a dead
    # other region makes way for its owner's next one; the most similar living pair is
    # always on top (ties: the smaller key), as with every pair in the heap.
    owned = [[] for _ in range(n)] + [None] * (size_m - n)
    heap = []
    if len(pairs):  # all initial pairs at once (numpy); the same formulas as in the loop
        a, b = pairs[:, 0], pairs[:, 1]
        sims = histogram_similarity(a, b)
        if use_s:
            sims += 1.0 - (size0[a] + size0[b]) / total
        if use_f:
            ext = np.maximum(box0[a, 2:], box0[b, 2:]) - np.minimum(box0[a, :2], box0[b, :2]) + 1
            sims += 1.0 - (ext[:, 0] * ext[:, 1] - size0[a] - size0[b]) / total
        if use_b:
            sims += typical / (typical + con / length)
        for key in sorted(zip((-sims).tolist(), a.tolist(), b.tolist()), reverse=True):
            owned[key[1]].append(key)
        heap = [keys.pop() for keys in owned[:n] if keys]
        heapq.heapify(heap)
    # per-merge work is on few neighbours: sizes and boxes as Python numbers are faster
    # there than numpy calls (and IEEE arithmetic gives the same values)
    size = size0.tolist()
    boxes = [tuple(r) for r in box0.tolist()]
    alive = [True] * n + [False] * (size_m - n)
    merges = []
    t = n
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        _, i, j = pop(heap)
        if not alive[i]:
            continue
        if not alive[j]:  # the owner's next pair with a living region
            keys = owned[i]
            while keys and not alive[keys[-1][2]]:
                keys.pop()
            if keys:
                push(heap, keys.pop())
            continue
        owned[i] = owned[j] = None
        alive[i] = alive[j] = False
        alive[t] = True
        st = size[i] + size[j]
        size.append(st)
        wi, wj = size[i] / st, size[j] / st
        for h in hists:
            ht = h[t]
            np.multiply(h[i], wi, out=ht)
            ht += wj * h[j]
        i0, i1, i2, i3 = boxes[i]
        j0, j1, j2, j3 = boxes[j]
        t0, t1 = (i0 if i0 < j0 else j0), (i1 if i1 < j1 else j1)
        t2, t3 = (i2 if i2 > j2 else j2), (i3 if i3 > j3 else j3)
        boxes.append((t0, t1, t2, t3))
        merges.append((i, j))
        nb = neighbours[i]
        neighbours[i] = None
        for k, (ln, c) in neighbours[j].items():
            if k in nb:
                l0, c0 = nb[k]
                nb[k] = (l0 + ln, c0 + c)
            else:
                nb[k] = (ln, c)
        neighbours[j] = None
        del nb[j]
        nb.pop(i, None)
        for k, v in nb.items():
            nk = neighbours[k]
            nk.pop(i, None)
            nk.pop(j, None)
            nk[t] = v
        neighbours[t] = nb
        if nb:
            js = list(nb)
            sims = (histogram_similarity(t, js).tolist() if hists else [0.0] * len(js))
            keys = []
            for s, k in zip(sims, js):
                if use_s:
                    s += 1.0 - (st + size[k]) / total
                if use_f:
                    k0, k1, k2, k3 = boxes[k]
                    joint = (((t2 if t2 > k2 else k2) - (t0 if t0 < k0 else k0) + 1)
                             * ((t3 if t3 > k3 else k3) - (t1 if t1 < k1 else k1) + 1))
                    s += 1.0 - (joint - st - size[k]) / total
                if use_b:
                    ln, c = nb[k]
                    s += typical / (typical + c / ln)
                keys.append((-s, t, k))
            keys.sort(reverse=True)
            push(heap, keys.pop())
            owned[t] = keys
        t += 1
    return np.array(merges, np.int64).reshape(-1, 2)


def forest_members(merges, n):
    """Superpixels of every region of a merge forest (hierarchical_grouping's merges):
    CSR bool [n + len(merges), n] with sorted indices.

    Leaves are laid out in depth-first order, so every region's leaves are one contiguous
    stretch of that order: a region's start is its parent's start (plus the left sibling's
    leaf count for a right child)."""
    m = len(merges)
    total = n + m
    pairs = merges.tolist()  # the loops run on Python lists (no numpy calls per merge)
    leaves = [1] * total
    for t, (i, j) in enumerate(pairs, n):
        leaves[t] = leaves[i] + leaves[j]
    is_child = np.zeros(total, bool)
    is_child[merges.ravel()] = True
    roots = np.flatnonzero(~is_child)
    root_leaves = np.array(leaves, np.int64)[roots]
    start = [0] * total
    for r, s in zip(roots.tolist(), (np.cumsum(root_leaves) - root_leaves).tolist()):
        start[r] = s
    for t in range(m - 1, -1, -1):  # parents before children
        i, j = pairs[t]
        start[i] = start[n + t]
        start[j] = start[n + t] + leaves[i]
    leaves, start = np.array(leaves, np.int64), np.array(start, np.int64)
    order = np.empty(n, np.int64)
    order[start[:n]] = np.arange(n)
    indptr = np.r_[0, np.cumsum(leaves)]
    indices = order[np.repeat(start - indptr[:-1], leaves) + np.arange(indptr[-1])]
    out = sparse.csr_matrix((np.ones(len(indices), bool), indices, indptr), shape=(total, n))
    out.sort_indices()
    return out
