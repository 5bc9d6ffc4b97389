"""The mask codec (tag2mask.core.masks) against pycocotools: our encoders give pycocotools'
counts strings exactly, our decoder its run lengths and arrays, on random masks of odd sizes
and the edge cases (no masks, empty, full, single pixel, 1-pixel-wide images, long runs)."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from scipy import sparse

from tag2mask.core import masks
from tag2mask.core.errors import InputError


def pycocotools_strings(stack):
    """Counts strings of bool masks [N, H, W] straight from pycocotools."""
    if len(stack) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(stack.transpose(1, 2, 0).astype(np.uint8)))
    return [r["counts"].decode("ascii") for r in rles]


def run_lengths(mask):
    """COCO run lengths of one bool mask [H, W], computed with numpy (column-major order,
    starting with a run of zeros)."""
    flat = mask.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    return np.diff(np.r_[0, [0] if flat[0] else [], change, flat.size]).astype(int).tolist()


def random_masks(rng, n, h, w):
    """n masks of mixed density (empty, full, single pixel, blobs of random density)."""
    stack = rng.random((n, h, w)) < rng.random((n, 1, 1)) ** 2
    stack[: n // 4] = rng.random((n // 4, h, w)) < 0.97  # long runs
    if n >= 3:
        stack[0] = False
        stack[1] = True
        stack[2] = False
        stack[2, rng.integers(h), rng.integers(w)] = True
    return stack


SIZES = [(1, 1), (1, 17), (13, 1), (2, 3), (7, 13), (31, 29), (64, 48), (97, 101)]


def encode_as_label_unions(stack, chunk=50_000):
    """Any masks are unions of the labels of a map with one label per pixel."""
    n, h, w = stack.shape
    labels = np.arange(h * w).reshape(h, w)
    return masks.encode_label_unions(sparse.csr_matrix(stack.reshape(n, h * w)), labels, chunk)


@pytest.mark.parametrize("h, w", SIZES)
def test_encoders_give_pycocotools_strings(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    stack = random_masks(rng, 12, h, w)
    expected = pycocotools_strings(stack)
    assert masks.encode(stack) == expected
    assert masks.encode(stack[0]) == expected[0]  # one [H, W] mask: one string
    assert encode_as_label_unions(stack) == expected
    assert encode_as_label_unions(stack, chunk=int(rng.integers(1, 8))) == expected
    runs = [run_lengths(m) for m in stack]
    offsets = np.r_[0, np.cumsum([len(r) for r in runs])]
    assert masks.encode_run_lengths(np.concatenate(runs), offsets) == expected


def test_encoders_with_no_masks():
    assert masks.encode(np.zeros((0, 5, 4), bool)) == []
    assert encode_as_label_unions(np.zeros((0, 5, 4), bool)) == []
    assert masks.decode([], 5, 4).shape == (0, 5, 4)
    assert masks.area([], 5, 4).shape == (0,) and masks.boxes([], 5, 4).shape == (0, 4)


def test_label_unions_of_a_label_map():
    # masks as unions of regions of a map with runs crossing column boundaries
    rng = np.random.default_rng(5)
    for trial in range(60):
        h, w = rng.integers(1, 12, 2)
        n = int(rng.integers(1, 6))
        labels = rng.integers(0, n, (h, w))
        if trial % 2:
            labels[:, : w // 2] = n - 1
        members = rng.random((int(rng.integers(1, 8)), n)) < rng.random()
        expected = pycocotools_strings(members[:, labels])
        for m in (members, sparse.csr_matrix(members)):
            assert masks.encode_label_unions(m, labels) == expected
            assert masks.encode_label_unions(m, labels, chunk=int(rng.integers(1, 6))) == expected


def test_large_run_lengths():
    # runs of up to 1.1 million pixels: more than 3 characters per value, 8-byte words
    h, w = 1100, 1000
    stack = np.zeros((4, h, w), bool)
    stack[1] = True
    stack[2, 700, 900] = True
    stack[3, :, 600:] = True
    stack[3, 5, 3] = True
    expected = pycocotools_strings(stack)
    assert encode_as_label_unions(stack) == expected
    runs = [0, 1 << 30, 2, 70000, 3, 1, 2, 40, 1, 33, 2000, 1, 1]
    ref = mask_utils.frPyObjects({"size": [1, sum(runs)], "counts": runs}, 1, sum(runs))
    assert masks.encode_run_lengths(runs, [0, len(runs)]) == [ref["counts"].decode("ascii")]


def test_random_run_lengths():
    # run lengths as they come, zeros included: the strings of pycocotools' rleToString
    rng = np.random.default_rng(2)
    runs = [[0, 5], [7], [0], [3, 0, 0, 2], [3, 1, 2, 40, 1, 33, 2000, 1, 1],
            [0, 1, 1 << 30, 2, 70000]]
    runs += [rng.integers(0, 10 ** int(rng.integers(1, 7)), int(rng.integers(1, 9))).tolist()
             for _ in range(40)]
    offsets = np.r_[0, np.cumsum([len(r) for r in runs])]
    got = masks.encode_run_lengths(np.concatenate(runs), offsets)
    for r, g in zip(runs, got):
        n = max(int(sum(r)), 1)
        ref = mask_utils.frPyObjects({"size": [1, n], "counts": [int(v) for v in r]}, 1, n)
        assert g == ref["counts"].decode("ascii")


def test_many_masks():
    # more masks than pycocotools' area() takes at once (255 with numpy 2)
    rng = np.random.default_rng(9)
    stack = random_masks(rng, 700, 23, 19)
    expected = pycocotools_strings(stack)
    counts = encode_as_label_unions(stack, chunk=500)
    assert counts == expected == masks.encode(stack)
    np.testing.assert_array_equal(masks.decode(counts, 23, 19), stack)
    np.testing.assert_array_equal(masks.area(counts, 23, 19), stack.sum((1, 2)))
    expected_boxes = np.zeros((len(stack), 4), np.float32)
    for k, m in enumerate(stack):
        if m.any():
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            expected_boxes[k] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    np.testing.assert_array_equal(masks.boxes(counts, 23, 19), expected_boxes)


@pytest.mark.parametrize("h, w", SIZES)
def test_decoders_give_pycocotools_arrays_and_run_lengths(h, w):
    rng = np.random.default_rng(h * 7 + w)
    stack = random_masks(rng, 10, h, w)
    counts = pycocotools_strings(stack)
    rles = [{"size": [h, w], "counts": c.encode()} for c in counts]
    np.testing.assert_array_equal(masks.decode(counts, h, w),
                                  mask_utils.decode(rles).transpose(2, 0, 1).astype(bool))
    np.testing.assert_array_equal(masks.decode(counts, h, w), stack)
    for m, c in zip(stack, counts):
        runs = masks.decode_run_lengths(c)
        assert runs == run_lengths(m)
        back = mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)
        assert back["counts"].decode("ascii") == c


def test_decode_run_lengths_rejects_malformed_strings():
    assert masks.decode_run_lengths("") == []
    assert masks.decode_run_lengths("\x7f") is None  # not a counts character
    assert masks.decode_run_lengths("0\x2f") is None
    assert masks.decode_run_lengths("P") is None  # continuation bit set, string ends


def test_checked_counts_gives_the_canonical_string():
    rng = np.random.default_rng(4)
    m = rng.random((9, 14)) < 0.4
    (counts,) = pycocotools_strings(m[None])
    runs = run_lengths(m)
    assert masks.checked_counts({"size": [9, 14], "counts": counts}, 9, 14, "x") == counts
    assert masks.checked_counts({"size": (9, 14), "counts": runs}, 9, 14, "x") == counts
    # a run of zero length in the middle is kept, as pycocotools keeps it
    ref = mask_utils.frPyObjects({"size": [9, 14], "counts": [3, 0, 0, 123]}, 9, 14)
    assert (masks.checked_counts({"size": [9, 14], "counts": [3, 0, 0, 123]}, 9, 14, "x")
            == ref["counts"].decode("ascii"))


@pytest.mark.parametrize("segmentation, message", [
    ([[1, 2, 3, 4, 5, 6]], "must be an RLE dict"),
    ({"size": [9, 15], "counts": "0"}, "does not match the image size"),
    ({"size": 9, "counts": "0"}, "does not match the image size"),
    ({"size": [9, 14], "counts": "\x7f"}, "malformed compressed RLE"),
    ({"size": [9, 14], "counts": [3, True]}, "counts must be"),
    ({"size": [9, 14], "counts": [3, -1, 124]}, "add up to 126"),
    ({"size": [9, 14], "counts": [3, 4]}, "add up to 126"),
])
def test_checked_counts_errors(segmentation, message):
    with pytest.raises(InputError, match=message):
        masks.checked_counts(segmentation, 9, 14, "file.json: proposal 3")
