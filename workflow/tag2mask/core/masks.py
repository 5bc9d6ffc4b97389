"""Binary masks <-> COCO run-length encoding: the mask codec of the package.

Masks are stored as COCO compressed RLE `counts` strings (column-major runs, starting with a
run of zeros). Dense masks go through pycocotools (`encode`, `decode`, `area`, `boxes`);
masks that are unions of the regions of a label map are encoded without materialising them
(`encode_label_unions`, `encode_switches`, `encode_run_lengths`: a vectorised rleToString of
pycocotools' maskApi.c, giving the same strings). `decode_run_lengths` reads a counts string
back into run lengths, checking it; `segmentation_to_rle` and `checked_counts` turn COCO
`segmentation` values (trusted annotations, untrusted external files) into compressed RLE.
"""

import numpy as np
from pycocotools import mask as mask_utils
from scipy import sparse

from .errors import InputError


def encode(masks):
    """Encode a bool array [N, H, W] (or one [H, W]) as a list of COCO RLE counts strings."""
    masks = np.asarray(masks, dtype=bool)
    single = masks.ndim == 2
    if single:
        masks = masks[None]
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    counts = [r["counts"].decode("ascii") for r in rles]
    return counts[0] if single else counts


def decode(counts, height, width):
    """Decode COCO RLE counts strings into a bool array [N, H, W]."""
    if len(counts) == 0:
        return np.zeros((0, height, width), dtype=bool)
    rles = [{"size": [int(height), int(width)], "counts": _as_bytes(c)} for c in counts]
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def to_coco_segmentation(counts, height, width):
    """A COCO `segmentation` dict (compressed RLE) that pycocotools loads unchanged."""
    c = counts.decode("ascii") if isinstance(counts, bytes) else counts
    return {"size": [int(height), int(width)], "counts": c}


def area(counts, height, width):
    rles = [{"size": [int(height), int(width)], "counts": _as_bytes(c)} for c in counts]
    return safe_area(rles)


def safe_area(rles):
    """pycocotools' area() of RLE dicts, in chunks: pycocotools 2.0.11 with numpy 2 raises
    OverflowError ("out of bounds for uint8") for more than 255 masks in one call."""
    if not rles:
        return np.zeros(0, np.int64)
    return np.concatenate([mask_utils.area(rles[i:i + 255]).astype(np.int64)
                           for i in range(0, len(rles), 255)])


def boxes(counts, height, width):
    """Tight xyxy boxes of RLE masks (float32 [N, 4]); empty masks give zeros."""
    rles = [{"size": [int(height), int(width)], "counts": _as_bytes(c)} for c in counts]
    if not rles:
        return np.zeros((0, 4), np.float32)
    xywh = mask_utils.toBbox(rles)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)


def segmentation_to_rle(segmentation, image=None, where="ground truth"):
    """A compressed RLE dict pycocotools accepts, from compressed/uncompressed RLE or
    polygons; checks its size against the image's when `image` is given."""
    seg = segmentation
    if isinstance(seg, list):  # polygons
        if image is None:
            raise InputError(where, "polygon segmentation needs the image size")
        h, w = int(image["height"]), int(image["width"])
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise InputError(where, f"segmentation is neither RLE nor polygons: {str(seg)[:100]}")
    if image is not None and list(seg["size"]) != [int(image["height"]), int(image["width"])]:
        raise InputError(where, f"mask size {seg['size']} differs from image {image['id']}'s "
                                f"size {[image['height'], image['width']]}")
    if isinstance(seg["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(seg, *seg["size"])
    counts = seg["counts"]
    return {"size": list(seg["size"]),
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def checked_counts(segmentation, height, width, where):
    """The compressed counts string of an untrusted COCO RLE dict (compressed or uncompressed
    counts) of a (height, width) image. Everything is checked, since pycocotools trusts its
    input: polygons, a size other than the image's, a malformed counts string and run lengths
    that are negative or do not add up to height * width raise InputError(where, ...)."""
    seg = segmentation
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        raise InputError(where, "segmentation must be an RLE dict with 'size' and 'counts'")
    size = seg["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or [int(v) for v in size] != [height, width]):
        raise InputError(where, f"mask size {size} does not match the image size "
                                f"[{height}, {width}] (height, width)")
    counts = seg["counts"]
    if isinstance(counts, str):
        runs = decode_run_lengths(counts)
        if runs is None:
            raise InputError(where, "malformed compressed RLE counts string")
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                          for v in counts):
        runs = counts
    else:
        raise InputError(where, "counts must be a compressed RLE string or a list of integers")
    if any(v < 0 for v in runs) or sum(runs) != height * width:
        raise InputError(where, f"RLE run lengths must be >= 0 and add up to {height * width} "
                                f"pixels (found {sum(runs)})")
    rle = segmentation_to_rle({"size": [height, width], "counts": list(runs)})
    return rle["counts"].decode("ascii")


def decode_run_lengths(counts):
    """Run lengths of a COCO compressed counts string (pycocotools' rleFrString), or None when
    the string is malformed (pycocotools does not check)."""
    runs = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def encode_label_unions(members, labels, chunk=50_000):
    """Counts strings of the masks members[m][labels] (members [M, L] bool, dense or sparse:
    which labels each mask is the union of; labels [H, W] int < L), without materialising them.

    In COCO's column-major pixel order a mask can only switch between in and out where the
    label map does; such a change between labels a and b is a switch of mask m exactly when
    one of a, b is in m. So the label changes are grouped by their label pair, a sparse
    product finds the pairs each mask cuts, a second one (transposed to column order, which
    sorts) lists each mask's switch positions in pixel order, and their differences are the
    run lengths. The second product and the rest go by groups of masks with about `chunk`
    switches: small working arrays stay in cache and reuse memory (fresh multi-megabyte
    temporaries cost about as much again in page faults)."""
    n_masks = members.shape[0]
    if n_masks == 0:
        return []
    m = sparse.csr_matrix(members, dtype=np.int8)
    n_lab = m.shape[1]
    flat = labels.T.ravel()  # COCO RLE runs down columns
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # first pixel of each new label run
    a, b = flat[change - 1].astype(np.int64), flat[change].astype(np.int64)
    pair, pair_of_change = np.unique(np.minimum(a, b) * n_lab + np.maximum(a, b),
                                     return_inverse=True)
    pair_of_change = pair_of_change.ravel()
    n_pairs = len(pair)
    ends = sparse.csr_matrix((np.r_[np.ones(n_pairs, np.int8), -np.ones(n_pairs, np.int8)],
                              (np.r_[pair // n_lab, pair % n_lab], np.tile(np.arange(n_pairs), 2))),
                             shape=(n_lab, n_pairs))
    cut = m @ ends  # [M, pairs]: +-1 where exactly one label of the pair is in the mask
    cut.eliminate_zeros()
    cut.data[:] = 1
    at = sparse.csr_matrix((np.ones(len(change), np.int8), (np.arange(len(change)),
                                                             pair_of_change)),
                           shape=(len(change), n_pairs))
    n_switches = np.cumsum(cut @ np.bincount(pair_of_change, minlength=n_pairs))
    bounds = np.unique(np.r_[0, np.searchsorted(n_switches, np.arange(
        chunk, n_switches[-1], chunk), "right"), n_masks])
    starts_inside = m[:, flat[0]].toarray().ravel() != 0
    out = []
    for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        switches = (at @ cut[s:e].T).tocsc()  # [changes, M]; CSC: each mask's in order
        out += encode_switches(switches.indptr, change[switches.indices], starts_inside[s:e],
                               flat.size)
    return out


def encode_switches(indptr, switch, starts_inside, n_pix):
    """Counts strings of masks given by their switch positions in column-major pixel order
    (mask k's, ascending: switch[indptr[k]:indptr[k + 1]]), whether each starts inside (on
    pixel 0), and the pixel count."""
    n_sw = np.diff(indptr)
    # per mask the positions 0, (0 again if the first pixel is inside), switches..., n_pix;
    # their differences are the COCO counts (which start with a run of zeros, maybe empty)
    n_pos = n_sw + 2 + starts_inside
    first = np.r_[0, np.cumsum(n_pos)]
    pos = np.zeros(first[-1], np.int64)
    slot = np.arange(len(switch)) + np.repeat(first[:-1] + 1 + starts_inside - indptr[:-1],
                                              n_sw)
    pos[slot] = switch
    pos[first[1:] - 1] = n_pix
    counts = np.diff(pos)
    within = np.ones(len(counts), bool)  # drop the differences across masks
    within[first[1:-1] - 1] = False
    return encode_run_lengths(counts[within], np.r_[0, np.cumsum(n_pos - 1)])


def encode_run_lengths(counts, offsets):
    """Counts strings of several masks at once from their run lengths: counts [N] of all masks
    concatenated, mask k's being counts[offsets[k]:offsets[k+1]] (at least one each).

    Vectorised rleToString of pycocotools' maskApi.c: each run length (minus the one two
    before it, from a mask's fourth on) as little-endian 5-bit groups, 0x20 set on all but
    the last group, plus 48. A value's characters are packed into one little-endian word
    (unused bytes 0): from a lookup table for most values (the run-length differences are
    small), computed for the rest; the text is the words' non-zero bytes."""
    counts = np.asarray(counts, np.int64)
    offsets = np.asarray(offsets, np.int64)
    later = np.ones(len(counts), bool)  # from each mask's fourth count on
    for d in (0, 1, 2):
        later[np.minimum(offsets[:-1] + d, offsets[1:] - 1)] = False
    x = counts.copy()
    np.subtract(x[2:], counts[:-2], out=x[2:], where=later[2:])
    y = x ^ (x >> 63)  # ~x for negative values
    top = int(y.max()) if len(y) else 0
    word = "<u4" if top < (1 << 19) else "<u8"  # up to 4 groups fit 4 bytes, else 8
    table_chars, table_n = _CHARS_TABLE[word]
    key = x & _CHARS_TABLE_MASK
    packed = table_chars[key]
    n = table_n[key]
    big = np.flatnonzero(y >= (1 << _CHARS_TABLE_BITS))
    if len(big):
        packed[big], n[big] = _packed_chars(x[big], word)
    flat = packed.view(np.uint8)
    text = np.compress(flat != 0, flat).tobytes().decode("ascii")
    bounds = np.r_[0, np.cumsum(n)][offsets].tolist()
    return [text[i:j] for i, j in zip(bounds[:-1], bounds[1:])]


def _packed_chars(x, word):
    """Counts-string characters of values x (int64, already differenced), packed
    little-endian into words of dtype `word` (unused bytes 0), and their number per value."""
    y = x ^ (x >> 63)
    packed = np.zeros(len(x), word)
    n = np.ones(len(x), np.int64)
    g = 0
    while True:
        more = y >= (1 << (5 * g + 4))  # the value needs another group
        char = (((x >> (5 * g)) & 0x1F) + 48 + (more << 5)).astype(word) << (8 * g)
        packed |= char if g == 0 else np.where(n > g, char, 0).astype(word)
        if not more.any():
            return packed, n
        n += more
        g += 1


# values in [-2^14, 2^14) (at most 3 groups), indexed by value & _CHARS_TABLE_MASK
_CHARS_TABLE_BITS = 14
_CHARS_TABLE_MASK = (1 << (_CHARS_TABLE_BITS + 1)) - 1
_table_values = np.arange(_CHARS_TABLE_MASK + 1, dtype=np.int64)
_table_values[1 << _CHARS_TABLE_BITS:] -= _CHARS_TABLE_MASK + 1
_CHARS_TABLE = {word: _packed_chars(_table_values, word) for word in ("<u4", "<u8")}


def _as_bytes(c):
    return c.encode("ascii") if isinstance(c, str) else bytes(c)
