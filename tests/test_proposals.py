"""Mask proposals: generator (known objects recovered, ranked, de-duplicated, capped,
deterministic), RLE conversion, store layout, shards + gather, external import, quality."""

import json

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy import sparse
from skimage.segmentation import felzenszwalb

from tag2mask import cli
from tag2mask.core import masks as mask_rle
from tag2mask.core.errors import InputError
from tag2mask.core.store import StoreReader, StoreWriter
from tag2mask.dataset.groundtruth import CocoBuilder
from tag2mask.dataset.manifest import Manifest, make_record, read_manifest, write_manifest
from tag2mask.proposals.builtin import ProposalSettings, propose
from tag2mask.proposals.external import import_external
from tag2mask.proposals.grouping import forest_members, hierarchical_grouping
from tag2mask.proposals.quality import best_overlaps, evaluate_store, image_figures
from tag2mask.proposals.ranking import (
    distinct_rows,
    near_duplicates,
    rank_value,
    region_cues,
    select_and_rank,
)
from tag2mask.proposals.superpixels import (
    adjacency,
    boxes_of,
    nest,
    rgb_to_hsv,
    to_colour_space,
    upsample_labels,
    working_image,
)

SMALL = {"max_proposals": 300, "working_size": 128, "scales": [100, 300],
         "colour_spaces": ["hsv", "lab"], "strategies": ["CTSF", "TSF"]}


def scene(seed=0, size=(96, 112)):
    """A noisy background with three flat-coloured objects: rectangle, disc, ellipse."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    img = np.empty((h, w, 3))
    img[:] = (90, 140, 90)
    objects = [
        (yy >= 10) & (yy < 40) & (xx >= 12) & (xx < 50),
        (yy - 62) ** 2 + (xx - 34) ** 2 <= 18 ** 2,
        ((yy - 55) / 22.0) ** 2 + ((xx - 85) / 14.0) ** 2 <= 1,
    ]
    for m, colour in zip(objects, [(220, 40, 40), (40, 60, 210), (240, 220, 60)]):
        img[m] = colour
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), objects


def iou_matrix(a, b, weights):
    """Brute-force IoU between rows of bool matrices a [P, A] and b [Q, A] whose columns have
    `weights` (float32, as near_duplicates tests IoU)."""
    af = a.astype(np.float32)
    bf = b.astype(np.float32)
    w = weights.astype(np.float32)
    inter = (af * w) @ bf.T
    union = (af @ w)[:, None] + (bf @ w)[None, :] - inter
    return inter / np.maximum(union, 1e-9)


@pytest.fixture(scope="module")
def scene_proposals():
    rgb, objects = scene()
    return rgb, objects, propose(rgb, ProposalSettings.from_options(SMALL), "scene")


def test_known_objects_are_recovered(scene_proposals):
    rgb, objects, props = scene_proposals
    masks = props.masks()
    assert masks.shape[1:] == rgb.shape[:2]
    for obj in objects:
        inter = (masks & obj).sum((1, 2))
        iou = inter / (masks.sum((1, 2)) + obj.sum() - inter)
        assert iou.max() > 0.9


def test_objects_outrank_background_parts(scene_proposals):
    # the objectness score puts each object's near-exact mask among the first proposals
    rgb, objects, props = scene_proposals
    masks = props.masks()[:10]
    for obj in objects:
        inter = (masks & obj).sum((1, 2))
        assert (inter / (masks.sum((1, 2)) + obj.sum() - inter)).max() > 0.9


def test_ranked_deduplicated_capped(scene_proposals):
    rgb, objects, props = scene_proposals
    assert props.scores.dtype == np.float32
    assert np.all((props.scores >= 0) & (props.scores <= 1))
    flat = props.masks().reshape(len(props), -1)
    iou = iou_matrix(flat, flat, np.ones(flat.shape[1]))
    np.fill_diagonal(iou, 0)
    assert iou.max() < SMALL.get("dedup_iou", 0.9)
    assert flat.any(1).all()
    capped = propose(rgb, ProposalSettings.from_options({**SMALL, "max_proposals": 7}), "scene")
    # the cap keeps the best-ranked ones
    assert len(capped) == 7 and capped.rle() == props.rle()[:7]
    np.testing.assert_array_equal(capped.scores, props.scores[:7])


def test_deterministic(scene_proposals):
    rgb, objects, props = scene_proposals
    again = propose(rgb, ProposalSettings.from_options(SMALL), "scene")
    assert again.rle() == props.rle()
    np.testing.assert_array_equal(again.scores, props.scores)


def test_downscaled_working_image_gives_full_resolution_masks():
    rgb, objects = scene(1, size=(150, 200))
    props = propose(rgb, ProposalSettings.from_options({**SMALL, "working_size": 80}), "big")
    assert props.atoms.shape == (60, 80)
    counts = props.rle()
    decoded = mask_rle.decode(counts, 150, 200)
    np.testing.assert_array_equal(decoded, props.masks())
    best = iou_matrix(decoded.reshape(len(decoded), -1),
                      np.array([o.ravel() for o in objects]), np.ones(150 * 200)).max(0)
    assert np.all(best > 0.85)  # coarser working resolution: boundaries within a pixel or two


def test_settings_defaults_are_the_schema_defaults():
    from tag2mask.core.config import section_options
    schema = section_options("{}", "proposals")
    schema = {**schema["builtin"], "max_proposals": schema["max_proposals"]}
    settings = ProposalSettings()
    for key in ProposalSettings.__dataclass_fields__:
        value = schema[key]
        assert getattr(settings, key) == (tuple(value) if isinstance(value, list) else value), key


def test_select_and_rank_known_order():
    value = np.array([2.0, 0.0, 2.0, 4 / 3])
    priority = np.array([1.0, 4.0, 3.0, 2.0])  # selective search: lower first (breaks ties)
    no_dups = sparse.identity(4, dtype=bool, format="csr")
    np.testing.assert_array_equal(select_and_rank(value, priority, no_dups, 10), [0, 2, 3, 1])
    dups = sparse.csr_matrix(np.eye(4, dtype=bool) | np.array(
        [[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], bool))  # 3 duplicates 0
    np.testing.assert_array_equal(select_and_rank(value, priority, dups, 10), [0, 2, 1])
    np.testing.assert_array_equal(select_and_rank(value, priority, dups, 2), [0, 2])


def test_rank_value_known_answer():
    cues = {"compactness": np.array([0.1, 0.9, 0.5])}
    score = np.array([0.2, 0.8, 0.5])
    priority = np.array([3.0, 1.0, 2.0])  # candidate 1 first in selective search's order
    near = sparse.csr_matrix(np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], bool))
    # ranks: score [0, 1, .5], compactness [0, 1, .5], -priority [0, 1, .5],
    # agreement (2, 1, 2 candidates) [.75, 0, .75] at half weight
    np.testing.assert_allclose(rank_value(cues, score, priority, near),
                               [0.375, 3.0, 1.875])


def test_flat_and_tiny_images_give_the_whole_image():
    for rgb in (np.full((40, 30, 3), 128, np.uint8), np.zeros((1, 1, 3), np.uint8)):
        props = propose(rgb, ProposalSettings.from_options(SMALL), "flat")
        assert len(props) == 1 and props.masks().all()


def test_forest_members_known_tree():
    # 5 superpixels; merges: 5 = {0, 3}, 6 = {5, 1}, 7 = {2, 4}; two trees (6 and 7)
    merges = np.array([[0, 3], [5, 1], [2, 4]])
    m = forest_members(merges, 5)
    assert m.has_sorted_indices
    expected = np.eye(5, dtype=bool).tolist() + [
        [1, 0, 0, 1, 0], [1, 1, 0, 1, 0], [0, 0, 1, 0, 1]]
    np.testing.assert_array_equal(m.toarray(), np.array(expected, bool))


def test_hierarchical_grouping_merges_most_similar_first():
    # a 1 x 4 strip of superpixels: colours a a b b, so the two equal pairs merge first,
    # then the two halves; colour similarity only
    labels = np.array([[0, 0, 1, 1, 2, 2, 3, 3]])
    colour = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    merges = hierarchical_grouping(labels, 4, colour, None, "C")
    assert sorted(map(sorted, merges[:2].tolist())) == [[0, 1], [2, 3]]
    assert sorted(merges[2].tolist()) == [4, 5]
    # a disconnected adjacency graph (label 1 has no pixels): no merge, a forest of roots
    assert len(hierarchical_grouping(np.array([[0, 0, 2]]), 3, colour[:3], None, "S")) == 1
    assert len(hierarchical_grouping(np.array([[0, 0]]), 2, colour[:2], None, "SF")) == 0


def greedy_reference(labels, n):
    """Size + fill grouping the slow way: every step scores all adjacent living pairs and
    merges the best; ties by the key the generator gives a pair: (-similarity, a, b), a < b
    for two superpixels, else (newer, older)."""
    total = labels.size
    size = np.bincount(labels.ravel(), minlength=n).astype(float).tolist()
    boxes = [tuple(b) for b in boxes_of(labels, n).tolist()]
    neighbours = {a: set() for a in range(n)}
    for a, b in adjacency(labels)[0].tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)

    def key(a, b):
        (a0, a1, a2, a3), (b0, b1, b2, b3) = boxes[a], boxes[b]
        joint = (max(a2, b2) - min(a0, b0) + 1) * (max(a3, b3) - min(a1, b1) + 1)
        s = 0.0 + (1.0 - (size[a] + size[b]) / total)
        s += 1.0 - (joint - size[a] - size[b]) / total
        lo, hi = min(a, b), max(a, b)
        return (-s, hi, lo) if hi >= n else (-s, lo, hi)

    merges = []
    while True:
        keys = [key(a, b) for a in neighbours for b in neighbours[a] if a < b]
        if not keys:
            return merges
        _, i, j = min(keys)
        t = len(size)
        merges.append([i, j])
        size.append(size[i] + size[j])
        boxes.append(tuple(map(min, boxes[i][:2], boxes[j][:2]))
                     + tuple(map(max, boxes[i][2:], boxes[j][2:])))
        joined = (neighbours.pop(i) | neighbours.pop(j)) - {i, j}
        for k in joined:
            neighbours[k] -= {i, j}
            neighbours[k].add(t)
        neighbours[t] = joined


def test_hierarchical_grouping_matches_exhaustive_greedy_with_ties():
    # blocks of equal size and equal boxes: many tied similarities
    rng = np.random.default_rng(7)
    for trial in range(20):
        cells = rng.integers(0, 12, (4, 5)).repeat(2, 0).repeat(2, 1)
        _, labels = np.unique(cells, return_inverse=True)
        labels = labels.reshape(cells.shape)
        n = int(labels.max()) + 1
        merges = hierarchical_grouping(labels, n, None, None, "SF")
        assert merges.tolist() == greedy_reference(labels, n)


def test_boundary_similarity_merges_weak_boundaries_first():
    # the same strip; boundaries 0|1 and 2|3 strong, 1|2 weak: B merges 1 and 2 first, then
    # the merged region with 0 (equal similarity to 0 and 3: the lower index first), then 3
    labels = np.array([[0, 0, 1, 1, 2, 2, 3, 3]])
    adjacent = (np.array([[0, 1], [1, 2], [2, 3]]), np.ones(3), np.array([5.0, 1.0, 5.0]))
    merges = hierarchical_grouping(labels, 4, None, None, "B", adjacent)
    np.testing.assert_array_equal(merges, [[1, 2], [4, 0], [5, 3]])
    # colour alone merges the equally coloured 0 and 1 first
    colour = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert sorted(hierarchical_grouping(labels, 4, colour, None, "C", adjacent)[0]) == [0, 1]
    with pytest.raises(ValueError, match="boundary contrast"):
        hierarchical_grouping(labels, 4, None, None, "B")


def test_region_cues_known_contours():
    # four atoms in a row: 0 | 1 | 2 | 3, boundaries of length 2, 3, 4 and contrast sums
    # 10, 30, 80; areas 5 each; border pixel pairs 4, 2, 2, 4
    edges = np.array([[0, 1], [1, 2], [2, 3]])
    length, contrast = np.array([2.0, 3.0, 4.0]), np.array([10.0, 30.0, 80.0])
    members = sparse.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]], bool))
    cues = region_cues(members, np.full(4, 5.0), edges, length, contrast,
                       np.array([4, 2, 2, 4]))
    # region {0}: contour edge 0|1; {1, 2}: edges 0|1 and 2|3; everything: no contour
    np.testing.assert_allclose(cues["contrast"], [10 / 2, (10 + 80) / (2 + 4), 0.0])
    perimeter = np.array([2 + 4, 6 + 4, 0 + 12])
    np.testing.assert_allclose(cues["border"], np.array([4, 4, 12]) / perimeter)
    np.testing.assert_allclose(cues["area"], [0.25, 0.5, 1.0])
    np.testing.assert_allclose(cues["compactness"],
                               4 * np.pi * np.array([5, 10, 20]) / perimeter ** 2)


def test_distinct_rows_first_occurrence_order():
    rows = np.array([[0, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0]], bool)
    first, inverse = distinct_rows(sparse.csr_matrix(rows))
    np.testing.assert_array_equal(first, [0, 1, 3])
    np.testing.assert_array_equal(inverse, [0, 1, 0, 2, 1, 2])


def test_rgb_to_hsv_is_skimages():
    from skimage import color
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (40, 50, 3)).astype(np.float64) / 255
    img[:5] = img[:5, :, :1]  # greys: hue and saturation 0
    img[5:10, :, 2] = img[5:10, :, 1]  # ties between the maximum channels
    img[10:12] = 0
    np.testing.assert_array_equal(rgb_to_hsv(img), color.rgb2hsv(img))


def test_nest_known_answer():
    fine = np.array([[0, 0, 1, 1, 2],
                     [3, 3, 1, 4, 2]])
    coarse = np.array([[5, 5, 5, 5, 7],
                       [5, 7, 7, 7, 7]])
    # 0: all in 5; 1: two of three in 5; 2 and 4: in 7; 3: one each, the first (5) wins
    for dense_limit in (100, 0):  # dense and sparse overlap tables
        np.testing.assert_array_equal(nest(fine, coarse, dense_limit), [[0, 0, 0, 0, 1],
                                                                        [0, 0, 0, 1, 1]])


def test_coarse_scales_nested_into_the_fine_superpixels():
    rgb, objects = scene(2, size=(120, 140))
    options = {**SMALL, "colour_spaces": ["hsv"], "scales": [30, 300]}
    flat = propose(rgb, ProposalSettings.from_options({**options, "coarse_downscale": 1}), "s")
    nested = propose(rgb, ProposalSettings.from_options({**options, "coarse_downscale": 2}), "s")
    # atoms are the fine superpixels themselves (overlaid, the coarse boundaries cut them)
    fine = felzenszwalb(to_colour_space(working_image(rgb, 128), "hsv"), scale=30, sigma=0.8,
                        min_size=20)
    n_fine = fine.max() + 1
    assert len(np.unique(nested.atoms * n_fine + fine)) == nested.atoms.max() + 1 == n_fine
    assert flat.atoms.max() + 1 > n_fine
    # the coarse scale adds regions the fine one's hierarchies do not have
    fine_only = propose(rgb, ProposalSettings.from_options({**options, "scales": [30]}), "s")
    assert not set(nested.rle()) <= set(fine_only.rle())
    masks = nested.masks().reshape(len(nested), -1)
    best = iou_matrix(masks, np.array([o.ravel() for o in objects]), np.ones(masks.shape[1]))
    assert np.all(best.max(0) > 0.9)


def test_upsample_labels_nearest():
    labels = np.arange(6).reshape(2, 3)
    up = upsample_labels(labels, 4, 6)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(labels, 2, 0), 2, 1))


def test_near_duplicates_matches_brute_force():
    rng = np.random.default_rng(0)
    # sparse and dense rows: rows over half the total weight take the complement path
    base = rng.random((40, 60)) < np.r_[np.full(20, 0.3), np.full(20, 0.85)][:, None]
    flips = rng.random((40, 60)) < 0.03
    members = np.concatenate([base, base ^ flips])  # 40 near-duplicate pairs
    weights = rng.integers(1, 5, 60).astype(float)
    for t in (0.5, 0.8, 0.9):
        for m in (members, sparse.csr_matrix(members)):
            near = near_duplicates(m, weights, t, block=16).toarray()
            brute = iou_matrix(members, members, weights) >= t
            np.testing.assert_array_equal(near, brute)


# ---------------------------------------------------------------------------------------
# the stage command, its store, shards and gather


def scene_manifest(folder, n=5, split="train"):
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        rgb, _ = scene(i, size=(64 + 8 * i, 80))
        path = folder / f"im{i}.png"
        Image.fromarray(rgb).save(path)
        records.append(make_record(f"im/{i}", path, 80, 64 + 8 * i, split, ["a"], ["a", "b"]))
    val_rgb, _ = scene(9, size=(64, 64))
    Image.fromarray(val_rgb).save(folder / "val.png")
    records.append(make_record("val0", folder / "val.png", 64, 64, "val", ["b"], ["a", "b"]))
    write_manifest(folder / "manifest.json", Manifest("test", ["a", "b"], records))
    return folder / "manifest.json"


def read_store(path):
    with StoreReader(path, "proposals") as r:
        return {i: r.read(i) for i in r.image_ids}, dict(r.attrs)


def test_store_layout_and_shards_gather(tmp_path):
    manifest = scene_manifest(tmp_path / "data")
    options = json.dumps({**SMALL, "max_proposals": 50})
    one = tmp_path / "one.h5"
    assert cli.main(["proposals", "make", "--manifest", str(manifest), "--config", options,
                     "--out", str(one)]) == 0
    shards = []
    for i in range(3):
        shards.append(tmp_path / f"s{i}.h5")
        assert cli.main(["proposals", "make", "--manifest", str(manifest), "--config", options,
                         "--shard", str(i), "--num-shards", "3", "--out", str(shards[i])]) == 0
    gathered = tmp_path / "all.h5"
    assert cli.main(["proposals", "gather", "--out", str(gathered),
                     *map(str, shards)]) == 0
    a, attrs = read_store(one)
    b, _ = read_store(gathered)
    assert sorted(a) == [f"im/{i}" for i in range(5)]  # train split only (the default)
    assert sorted(b) == sorted(a)
    assert attrs["kind"] == "proposals" and attrs["method"] == "builtin"
    assert json.loads(attrs["class_names"]) == ["a", "b"]
    m = read_manifest(manifest)
    for rec in m.split("train"):
        ea, eb = a[rec.id], b[rec.id]
        assert ea["masks"] == eb["masks"]
        np.testing.assert_array_equal(ea["scores"], eb["scores"])
        assert (ea["height"], ea["width"]) == (rec.height, rec.width)
        assert 0 < len(ea["masks"]) <= 50 and ea["num_proposals"] == len(ea["masks"])
        assert ea["scores"].dtype == np.float32
        assert ea["seconds"] > 0 and ea["cpu_seconds"] > 0
        assert mask_rle.decode(ea["masks"], rec.height, rec.width).shape[1:] == (rec.height,
                                                                                rec.width)
    with h5py.File(one) as f:  # masks are RLE strings, never one byte per pixel
        g = f["images"][next(iter(f["images"]))]
        assert h5py.check_string_dtype(g["masks"].dtype) is not None


def test_propose_bad_shard_is_an_input_error(tmp_path, capsys):
    manifest = scene_manifest(tmp_path / "data", n=1)
    rc = cli.main(["proposals", "make", "--manifest", str(manifest), "--config", "{}",
                   "--shard", "2",
                   "--num-shards", "2", "--out", str(tmp_path / "x.h5")])
    assert rc == 2 and "shard 2" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


# ---------------------------------------------------------------------------------------
# external proposals


def rle_dict(mask, compressed=True):
    counts = mask_rle.encode(mask)
    h, w = mask.shape
    if compressed:
        return {"size": [h, w], "counts": counts}
    return {"size": [h, w], "counts": mask_rle.decode_run_lengths(counts)}


def test_import_round_trip(tmp_path):
    manifest = scene_manifest(tmp_path / "data", n=2)
    m = read_manifest(manifest)
    r0, r1 = m.images[0], m.images[1]
    rng = np.random.default_rng(0)
    masks0 = rng.random((3, r0.height, r0.width)) < 0.3
    masks1 = rng.random((2, r1.height, r1.width)) < 0.3
    data = {
        r0.id: [{"segmentation": rle_dict(masks0[0]), "score": 0.2},
                {"segmentation": rle_dict(masks0[1], compressed=False), "score": 0.9},
                {"segmentation": rle_dict(masks0[2]), "score": 0.5}],
        "im1.png": [{"segmentation": rle_dict(k), "score": 1} for k in masks1],  # by file name
    }
    path = tmp_path / "ext.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "ext.h5"
    assert cli.main(["proposals", "import", "--manifest", str(manifest), "--json", str(path),
                     "--out", str(out)]) == 0
    store, attrs = read_store(out)
    assert attrs["method"] == "external"
    e0 = store[r0.id]
    np.testing.assert_array_equal(mask_rle.decode(e0["masks"], r0.height, r0.width),
                                  masks0[[1, 2, 0]])  # ranked by score
    np.testing.assert_allclose(e0["scores"], [0.9, 0.5, 0.2])
    np.testing.assert_array_equal(mask_rle.decode(store[r1.id]["masks"], r1.height, r1.width),
                                  masks1)
    # the same through the stage command (method external), capped
    cfg = json.dumps({"method": "external", "external": {"json": str(path)}, "max_proposals": 2})
    out2 = tmp_path / "ext2.h5"
    assert cli.main(["proposals", "make", "--manifest", str(manifest), "--config", cfg,
                     "--out", str(out2)]) == 0
    s2, _ = read_store(out2)
    assert s2[r0.id]["masks"] == e0["masks"][:2]


@pytest.mark.parametrize("case, message", [
    ("unknown", "unknown image 'nope.jpg'"),
    ("size", "does not match the image size"),
    ("runs", "add up to"),
    ("string", "malformed compressed RLE"),
    ("score", "score must be a finite number"),
    ("shape", "expected a list of proposals"),
    ("twice", "is given twice"),
])
def test_import_errors(tmp_path, case, message):
    manifest = scene_manifest(tmp_path / "data", n=1)
    rec = read_manifest(manifest).images[0]
    good = rle_dict(np.ones((rec.height, rec.width), bool))
    item = {"segmentation": good, "score": 1.0}
    data = {
        "unknown": {rec.id: [item], "nope.jpg": [item]},
        "size": {rec.id: [{"segmentation": {"size": [5, 5], "counts": "25"}, "score": 1}]},
        "runs": {rec.id: [{"segmentation": {"size": good["size"], "counts": [3, 4]},
                           "score": 1}]},
        "string": {rec.id: [{"segmentation": {"size": good["size"], "counts": "\x7f\x7f"},
                             "score": 1}]},
        "score": {rec.id: [{"segmentation": good, "score": "high"}]},
        "shape": {rec.id: {"segmentation": good}},
        "twice": {rec.id: [item], "im0.png": [item]},
    }[case]
    path = tmp_path / "ext.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as e:
        import_external(path, read_manifest(manifest).images, [rec.id], 10)
    assert message in str(e.value) and str(path) in str(e.value)


def test_import_malformed_json_cli(tmp_path, capsys):
    manifest = scene_manifest(tmp_path / "data", n=1)
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    rc = cli.main(["proposals", "import", "--manifest", str(manifest), "--json", str(path),
                   "--out", str(tmp_path / "x.h5")])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.json" in err and "not valid JSON" in err
    assert not (tmp_path / "x.h5").exists()


# ---------------------------------------------------------------------------------------
# quality


def box(h, w, r0, r1, c0, c1):
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_best_overlaps_known_values_and_void():
    h, w = 20, 20
    gt = [box(h, w, 0, 10, 0, 10)]  # area 100
    props = [box(h, w, 0, 10, 0, 5),  # IoU 0.5
             box(h, w, 0, 10, 0, 20)]  # IoU 100/200; 0.5 too
    iou = best_overlaps(mask_rle.encode(np.array(props)), mask_rle.encode(np.array(gt)), h, w)
    np.testing.assert_allclose(iou[:, 0], [0.5, 0.5])
    void = {"size": [h, w], "counts": mask_rle.encode(box(h, w, 0, 10, 10, 20)).encode()}
    iou = best_overlaps(mask_rle.encode(np.array(props)), mask_rle.encode(np.array(gt)), h, w,
                        void)
    np.testing.assert_allclose(iou[:, 0], [0.5, 1.0])  # the void half no longer counts


def test_quality_of_store_known_answers(tmp_path):
    h, w = 30, 40
    classes = ["a"]
    rec = make_record("x", tmp_path / "x.png", w, h, "train", ["a"], classes)
    rec2 = make_record("y", tmp_path / "y.png", w, h, "train", ["a"], classes)
    g1, g2, g3 = box(h, w, 0, 10, 0, 10), box(h, w, 15, 25, 20, 40), box(h, w, 0, 30, 0, 40)
    crowd = box(h, w, 20, 30, 0, 10)
    b = CocoBuilder(classes)
    b.add_image(1, rec, np.array([g1, g2]), [0, 0], crowd=[(0, crowd)])
    b.add_image(2, rec2, np.array([g3]), [0])
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(b.to_dict()))
    p_x = [box(h, w, 15, 25, 20, 30),  # g2 IoU 0.5
           box(h, w, 0, 10, 0, 8),  # g1 IoU 0.8, covers g1's interior point
           box(h, w, 0, 10, 0, 10),  # g1 IoU 1.0, ranked after
           crowd]  # matches only the crowd region: ignored
    p_y = [box(h, w, 0, 30, 0, 20)]  # g3 IoU 0.5
    store = tmp_path / "p.h5"
    with StoreWriter(store, "proposals", classes) as wtr:
        for image_id, props in (("x", p_x), ("y", p_y)):
            wtr.add(image_id, h, w, {"masks": mask_rle.encode(np.array(props)),
                                     "scores": np.linspace(1, 0.5, len(props), dtype=np.float32)},
                    attrs={"seconds": 2.0 if image_id == "x" else 4.0})
    q = evaluate_store(store, gt_path)
    assert q["gt_instances"] == 3
    assert q["abo"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert q["recall@0.5"] == pytest.approx(1.0)
    assert q["recall@0.7"] == pytest.approx(1 / 3)
    assert q["proposals_per_image"] == pytest.approx(2.5)
    assert q["seconds_per_image"] == pytest.approx(3.0)
    # point retrieval: the interior point is the first maximum of the distance transform:
    # g1 (4, 4) -> first covering proposal p_x[1] (IoU 0.8, although p_x[2] is exact);
    # g2 (19, 24) -> p_x[0] (0.5)
    best, retrieved, top = image_figures(mask_rle.encode(np.array(p_x)),
                                    [{"size": [h, w], "counts": mask_rle.encode(g).encode()}
                                     for g in (g1, g2)], h, w)
    np.testing.assert_allclose(best, [1.0, 0.5])
    assert retrieved[0] == pytest.approx(0.8)
    assert retrieved[1] == pytest.approx(0.5)
    assert q["point_retrieval_miou"] == pytest.approx((0.8 + 0.5 + 0.5) / 3)
    np.testing.assert_allclose(top, best)  # fewer than 100 proposals
    # WISE's rule reads scores, not ranks: the exact g1 mask scoring highest is chosen
    _, retrieved, _ = image_figures(mask_rle.encode(np.array(p_x)), [
        {"size": [h, w], "counts": mask_rle.encode(g1).encode()}], h, w,
        scores=np.array([0.1, 0.2, 0.9, 0.3]))
    assert retrieved[0] == pytest.approx(1.0)
    assert q["abo_top100"] == pytest.approx(q["abo"])


def test_evaluate_proposals_command(tmp_path):
    h, w = 30, 40
    rec = make_record("x", tmp_path / "x.png", w, h, "train", ["a"], ["a"])
    b = CocoBuilder(["a"])
    b.add_image(1, rec, np.array([box(h, w, 0, 10, 0, 10)]), [0])
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(b.to_dict()))
    store = tmp_path / "p.h5"
    with StoreWriter(store, "proposals", ["a"], attrs={"method": "builtin",
                                                        "options": "{}"}) as wtr:
        wtr.add("x", h, w, {"masks": mask_rle.encode(box(h, w, 0, 10, 0, 5)[None]),
                            "scores": np.ones(1, np.float32)})
    out = tmp_path / "q.json"
    assert cli.main(["proposals", "evaluate", "--proposals", str(store), "--gt",
                     f"train={gt_path}", "--out", str(out)]) == 0
    q = json.loads(out.read_text())
    assert q["splits"]["train"]["abo"] == pytest.approx(0.5)
    assert q["splits"]["train"]["recall@0.5"] == pytest.approx(1.0)
