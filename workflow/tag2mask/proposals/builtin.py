"""Built-in mask proposals: selective-search style hierarchical grouping, vectorised.

No MATLAB, no learned model: scikit-image's Felzenszwalb over-segmentation plus numpy/scipy.

Per image:
1. The image is downscaled to `working_size` (longest side) for all the work below; the
   final masks are upsampled back to image resolution (nearest neighbour on a label map).
2. Over-segmentation: Felzenszwalb-Huttenlocher graph segmentation in each colour space and
   at each scale k (`colour_spaces` x `scales`). The smallest k runs on the working image;
   the larger ones (big superpixels) on it downscaled by `coarse_downscale`, nested into
   the fine superpixels (`over_segmentations`, `nest`): Felzenszwalb's cost is per pixel.
3. All over-segmentations are overlaid into "atoms" (pixels with the same superpixel in every
   over-segmentation; with nesting, those of the fine ones). Colour histograms (25 bins per
   channel) and texture histograms (Gaussian derivatives in 8 orientations, 10 bins per
   channel) are counted once per atom and colour space; a superpixel's are sums over its
   atoms. The atom adjacency (boundary length and Lab contrast of each adjacent pair) gives
   every over-segmentation's superpixel adjacency and, later, each region's contour.
4. Hierarchical grouping, once per (over-segmentation, similarity mix): the most similar
   pair of adjacent regions is merged until one region is left (Uijlings et al. 2013); a
   merge forms the new region's histograms as the size-weighted sum of its parts. Mixes are
   strings of the letters C (colour), T (texture), S (size: small regions merge first),
   F (fill: how well two regions fit into their joint box) and B (boundary: weak shared
   boundaries first), e.g. "CTSF". A hierarchy is its merge forest; the superpixels of
   every region are contiguous in the forest's depth-first leaf order, which gives all
   regions as rows of one sparse matrix [regions, atoms] without materialising dense masks.
5. Exact duplicates (equal atom rows, found by hashing) are joined. Near duplicates
   (IoU >= `dedup_iou`) are found with sparse matrix products of the atom-membership matrix
   weighted by atom areas, each block of regions compared only with regions of compatible
   area, regions over half the image entering as their complement.
6. Each region gets an objectness score (`objectness`: contour contrast, compactness,
   distance from the image border), stored as the proposal's score. Proposals are ranked by
   `rank_value` (objectness, compactness, selective search's randomised hierarchy-level
   order and near-duplicate agreement), then de-duplicated greedily in rank order (a
   proposal whose IoU with a better-ranked kept one is >= `dedup_iou` is dropped) until
   `max_proposals` are kept (`select_and_rank`).
7. Masks are written as COCO RLE straight from the atom representation
   (tag2mask.core.masks.encode_label_unions: sparse products over the label changes of the
   upsampled atom map, and a vectorised COCO string encoder).

Modules: this one (`ProposalSettings`, `Proposals`, `candidates`, `propose`: steps in order);
superpixels.py (steps 1-3), grouping.py (4), ranking.py (5-6).
Settings and measured quality/speed: `ProposalSettings`, config/schema.yaml (`proposals`),
config/voc.yaml (photographs), benchmarks/proposals_vs_selectivesearch.py.
"""

import logging
import zlib
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from skimage import color

from ..core.masks import encode_label_unions
from .grouping import SIMILARITY_LETTERS, forest_members, hierarchical_grouping
from .ranking import (
    distinct_rows,
    near_duplicates,
    objectness,
    rank_value,
    region_cues,
    select_and_rank,
)
from .superpixels import (
    COLOUR_BINS,
    COLOUR_SPACES,
    TEXTURE_BINS,
    boundary_strength,
    boxes_of,
    coarse_image,
    histogram_counts,
    normalised,
    over_segmentations,
    overlay,
    superpixel_adjacency,
    texture_values,
    to_colour_space,
    upsample_labels,
    working_image,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProposalSettings:
    """Generator settings: `proposals.builtin` and `proposals.max_proposals` (defaults as in
    core/schema.yaml)."""
    max_proposals: int = 2000
    working_size: int = 256
    scales: tuple = (30, 300)
    colour_spaces: tuple = ("hsv",)
    strategies: tuple = ("CSF", "BS", "F")
    sigma: float = 0.8
    min_size: int = 20
    dedup_iou: float = 0.9
    min_area: float = 0.0005
    coarse_downscale: float = 2.0
    seed: int = 0

    @classmethod
    def from_options(cls, options):
        """From a dict of these settings (others ignored)."""
        names = cls.__dataclass_fields__
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items()
                      if k in names})

    @classmethod
    def of_run(cls, options):
        """From a run's `proposals` options."""
        return cls.from_options({**options["builtin"], "max_proposals": options["max_proposals"]})

    def __post_init__(self):
        for cs in self.colour_spaces:
            if cs not in COLOUR_SPACES:
                raise ValueError(f"unknown colour space {cs!r}; known: {COLOUR_SPACES}")
        for s in self.strategies:
            if not s or set(s) - set(SIMILARITY_LETTERS):
                raise ValueError(f"similarity mix {s!r} must use letters of {SIMILARITY_LETTERS}")


@dataclass
class Proposals:
    """Proposals of one image in rank order (best first; `select_and_rank`) with their
    objectness `scores`. `members` [M, A] (CSR, bool) over `atoms` ([h, w] label map at
    working resolution); masks at image resolution via `rle` / `masks`."""
    members: np.ndarray
    scores: np.ndarray
    atoms: np.ndarray
    height: int
    width: int

    def __len__(self):
        return len(self.scores)

    def masks(self):
        """Bool [M, H, W] at image resolution (memory: M*H*W bytes; use rle() for many)."""
        full = upsample_labels(self.atoms, self.height, self.width)
        return self.members.toarray()[:, full]

    def rle(self):
        """COCO RLE counts strings at image resolution, one per proposal."""
        return encode_label_unions(self.members,
                                   upsample_labels(self.atoms, self.height, self.width))


def image_seed(seed, image_id):
    """Per-image random seed: same image, same proposals, whatever the shard."""
    return [int(seed), zlib.crc32(str(image_id).encode())]


def candidates(rgb, settings=ProposalSettings(), image_id=""):
    """All distinct regions of all hierarchies, with what ranking needs: a dict with members
    [R, A] (CSR bool over atoms), atoms [h, w], atom_area [A], near (CSR IoU >= dedup_iou),
    priority [R] (best selective-search priority over strategies), cues (dict of [R])."""
    img = working_image(rgb, settings.working_size)
    lab = color.rgb2lab(img)  # objectness's contrast; also the "lab" colour space
    rng = np.random.default_rng(image_seed(settings.seed, image_id))

    # over-segmentations, per colour space x scale
    use_colour = any("C" in mix for mix in settings.strategies)
    use_texture = any("T" in mix for mix in settings.strategies)
    segs, seg_space, spaces = [], [], []
    small = coarse_image(rgb, img, settings)
    for space in settings.colour_spaces:
        cs = to_colour_space(img, space, lab)
        spaces.append((cs, texture_values(cs) if use_texture else None))
        segs += over_segmentations(cs, small, space, settings)
        seg_space += [len(spaces) - 1] * len(settings.scales)
    atoms, n_atoms, atom_label = overlay(segs)
    atom_area = np.bincount(atoms.ravel(), minlength=n_atoms).astype(np.float64)
    # colour / texture histogram counts of the atoms once per colour space; a superpixel's
    # are the sums over its atoms (integer counts: the same as counting its pixels)
    atom_hists = [(histogram_counts(atoms, n_atoms, cs, COLOUR_BINS) if use_colour else None,
                   histogram_counts(atoms, n_atoms, tex, TEXTURE_BINS) if use_texture else None)
                  for cs, tex in spaces]
    edges, elen, econ = boundary_strength(lab, atoms, n_atoms)

    # one hierarchy per over-segmentation x similarity mix, in atom space
    rows, priority = [], []
    for s, labels in enumerate(segs):
        n = int(labels.max()) + 1
        adjacent = superpixel_adjacency(edges, elen, econ, atom_label[s])
        box = boxes_of(labels, n)
        to_atoms = sparse.csr_matrix((np.ones(n_atoms, bool), (atom_label[s],
                                                                np.arange(n_atoms))),
                                     shape=(n, n_atoms))
        ch, th = (None if c is None else normalised(to_atoms @ c)
                  for c in atom_hists[seg_space[s]])
        for mix in settings.strategies:
            merges = hierarchical_grouping(labels, n, ch, th, mix, adjacent, box)
            rows.append(forest_members(merges, n) @ to_atoms)
            # selective search ranking: hierarchy level (root = 1) x uniform random
            level = np.arange(n + len(merges), 0, -1, dtype=np.float64)
            priority.append(level * rng.random(len(level)))
    members = sparse.vstack(rows, format="csr")
    members.sort_indices()
    priority = np.concatenate(priority)

    # exact duplicates (same atoms): keep one row with the best priority
    first, inverse = distinct_rows(members)
    best_priority = np.full(len(first), np.inf)
    np.minimum.at(best_priority, inverse, priority)
    members = members[first]
    area = members @ atom_area
    keep = area >= settings.min_area * atoms.size
    members, best_priority = members[keep], best_priority[keep]

    # near duplicates: IoU on the atom representation (matrix products)
    near = near_duplicates(members, atom_area, settings.dedup_iou)

    border_atoms = np.bincount(np.concatenate([atoms[0], atoms[-1], atoms[:, 0], atoms[:, -1]]),
                               minlength=n_atoms)
    cues = region_cues(members, atom_area, edges, elen, econ, border_atoms)
    return {"members": members, "atoms": atoms, "atom_area": atom_area, "near": near,
            "priority": best_priority, "cues": cues}


def propose(rgb, settings=ProposalSettings(), image_id=""):
    """Mask proposals of one RGB uint8 image [H, W, 3], best ranked first (`Proposals`)."""
    rgb = np.asarray(rgb)
    c = candidates(rgb, settings, image_id)
    score = objectness(c["cues"])
    value = rank_value(c["cues"], score, c["priority"], c["near"])
    kept = select_and_rank(value, c["priority"], c["near"], settings.max_proposals)
    return Proposals(c["members"][kept], score[kept].astype(np.float32), c["atoms"],
                     rgb.shape[0], rgb.shape[1])
