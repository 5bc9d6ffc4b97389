"""Inter-pixel relations (IRNet, Ahn et al. 2019): seeds, pixel pairs, relation labels and
boundary-aware affinities, on the stride-`feature_stride` grid of the IRNet input.

- Seeds (`seed_map`): from the class activation maps (each class normalised to max 1) of the
  image's tagged classes: a cell is foreground of class c (value c + 1) where the largest map
  is c's and reaches `fg_threshold`, background (0) where every map is below `bg_threshold`,
  and unknown (IGNORE) in between.
- Pairs (`pair_offsets`): each cell is paired with the cells at offsets (dy, dx) within
  `radius` (Euclidean distance < radius) in one half-plane (dy > 0, or dy = 0 and dx > 0), so
  every unordered pair is counted once.
- Relation labels (`relation_labels`), per offset and source cell: BG_POS (both background),
  FG_POS (both foreground of the same class), NEG (both known, different labels) or
  PAIR_IGNORE (either unknown, or the destination outside the grid).
- Affinity (`pair_affinity`): a_ij = 1 - max of the class-boundary map B on the line between
  cells i and j (both ends included); pairs leaving the grid get 0. Differentiable in B, so
  training uses it for the boundary loss and the random walk for its transition matrix.
"""

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = 255  # seed value of a cell that is neither confident foreground nor background
PAIR_IGNORE, BG_POS, FG_POS, NEG = 0, 1, 2, 3


def pair_offsets(radius):
    """int64 [D, 2] offsets (dy, dx) of the half-plane pairs within `radius` (distance <
    radius), in raster order."""
    r = int(np.ceil(radius))
    out = [(dy, dx) for dy in range(r) for dx in range(-r + 1, r)
           if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius]
    return np.array(out, np.int64).reshape(-1, 2)


def line_cells(dy, dx):
    """int64 [L, 2] offsets of the cells on the line from (0, 0) to (dy, dx), both included:
    one per unit step along the longer axis, the other coordinate rounded."""
    n = max(abs(dy), abs(dx))
    t = np.arange(n + 1) / max(n, 1)
    cells = np.stack([np.round(t * dy), np.round(t * dx)], 1).astype(np.int64)
    return np.unique(cells, axis=0)


def seed_map(cams, classes, fg_threshold, bg_threshold):
    """uint8 [h, w] seeds from normalised CAMs [K, h, w] of the class indices `classes` [K]:
    c + 1 (foreground of class c), 0 (background) or IGNORE."""
    cams = np.asarray(cams, np.float32)
    h, w = cams.shape[-2:]
    seeds = np.full((h, w), IGNORE, np.uint8)
    if len(cams) == 0:
        seeds[:] = 0  # no tagged class: all background
        return seeds
    best = cams.max(0)
    label = np.asarray(classes, np.int64)[cams.argmax(0)] + 1
    seeds[best < bg_threshold] = 0
    fg = best >= fg_threshold
    seeds[fg] = label[fg].astype(np.uint8)
    return seeds


def _shifted(x, dy, dx, fill):
    """x [..., H, W] shifted so that out[p] = x[p + (dy, dx)], `fill` outside."""
    h, w = x.shape[-2:]
    pad = (max(0, -dx), max(0, dx), max(0, -dy), max(0, dy))
    if isinstance(x, np.ndarray):
        widths = [(0, 0)] * (x.ndim - 2) + [(pad[2], pad[3]), (pad[0], pad[1])]
        p = np.pad(x, widths, constant_values=fill)
    else:
        p = F.pad(x, pad, value=fill)
    y0, x0 = pad[2] + dy, pad[0] + dx
    return p[..., y0:y0 + h, x0:x0 + w]


def relation_labels(seeds, radius):
    """uint8 [D, h, w] relation label of the pair (cell p, cell p + offset d) for the
    pair_offsets(radius) offsets: BG_POS, FG_POS, NEG or PAIR_IGNORE. `seeds`: uint8
    [..., h, w] (leading dims are kept in front of D)."""
    seeds = np.asarray(seeds)
    offsets = pair_offsets(radius)
    src_known = seeds != IGNORE
    out = []
    for dy, dx in offsets:
        dst = _shifted(seeds, int(dy), int(dx), IGNORE)
        known = src_known & (dst != IGNORE)
        same = seeds == dst
        label = np.full(seeds.shape, PAIR_IGNORE, np.uint8)
        label[known & same & (seeds == 0)] = BG_POS
        label[known & same & (seeds != 0)] = FG_POS
        label[known & ~same] = NEG
        out.append(label)
    return np.stack(out, -3) if out else np.zeros(seeds.shape[:-2] + (0,) + seeds.shape[-2:],
                                                  np.uint8)


class PairPaths:
    """The line cells of every pair offset within a radius, as indices into one stack of
    shifted boundary maps, so that the max of B along every pair's line is one gather and
    one max (`max_on_lines`)."""

    def __init__(self, radius):
        self.radius = radius
        self.offsets = pair_offsets(radius)
        lines = [line_cells(int(dy), int(dx)) for dy, dx in self.offsets]
        shifts = sorted({tuple(c) for line in lines for c in line})
        self.shifts = np.array(shifts, np.int64).reshape(-1, 2)
        where = {s: i for i, s in enumerate(shifts)}
        longest = max((len(line) for line in lines), default=1)
        # pad each line with its last cell (repeats do not change a max)
        index = np.zeros((len(lines), longest), np.int64)
        for i, line in enumerate(lines):
            ids = [where[tuple(c)] for c in line]
            index[i] = ids + [ids[-1]] * (longest - len(ids))
        self.index = torch.from_numpy(index)

    def max_on_lines(self, boundary):
        """[..., D, H, W]: max of boundary [..., H, W] (tensor) over each pair's line; cells
        outside the grid count as 1 (a pair leaving the grid is cut)."""
        stack = torch.stack([_shifted(boundary, int(dy), int(dx), 1.0)
                             for dy, dx in self.shifts], -3)
        picked = stack.index_select(-3, self.index.flatten().to(stack.device))
        picked = picked.unflatten(-3, tuple(self.index.shape))
        return picked.amax(-3)


def pair_affinity(boundary, paths):
    """Affinities [..., D, H, W] = 1 - max boundary on each pair's line (boundary in [0, 1])."""
    return 1 - paths.max_on_lines(boundary)


def pair_displacement(field, offsets):
    """[..., 2, D, H, W]: field(p) - field(p + offset) for displacement fields [..., 2, H, W];
    0 where p + offset leaves the grid (such pairs are PAIR_IGNORE)."""
    return torch.stack([field - _shifted(field, int(dy), int(dx), 0.0) for dy, dx in offsets],
                       -3)
