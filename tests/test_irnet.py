"""IRNet (tag2mask.irnet): known answers on constructed inputs (relation labels, the random
walk, centroids, a pseudo-mask store scored by the evaluator), the multi-scale CAM grid, the
commands chained on a tiny classifier, and kill-and-resume of the training."""

import json

import numpy as np
import pytest
import torch
from conftest import build_manifest
from test_kills import epochs_in, killed_and_resumed, run

from tag2mask.classifier.cams import multiscale_class_maps, sample_on_grid
from tag2mask.classifier.model import build_classifier, save_classifier
from tag2mask.core.config import section_options
from tag2mask.core.store import StoreReader, StoreWriter
from tag2mask.dataset.manifest import read_manifest
from tag2mask.evaluation.metrics import evaluate, pseudo_masks_to_results
from tag2mask.irnet import instances
from tag2mask.irnet.instances import cluster_cells, find_centroids, write_instances
from tag2mask.irnet.random_walk import affinity_matrix, dense_random_walk, random_walk
from tag2mask.irnet.relations import (
    BG_POS,
    FG_POS,
    IGNORE,
    NEG,
    PAIR_IGNORE,
    PairPaths,
    pair_affinity,
    pair_offsets,
    relation_labels,
    seed_map,
)

# ------------------------------------------------------------------------ relations


def test_pair_offsets_are_one_half_plane_within_the_radius():
    offsets = pair_offsets(1.5)
    assert offsets.tolist() == [[0, 1], [1, -1], [1, 0], [1, 1]]
    big = pair_offsets(5)
    assert len(big) == 34  # (cells within 5, less the centre) / 2: each pair once
    assert all(dy > 0 or (dy == 0 and dx > 0) for dy, dx in big)
    assert all(dy * dy + dx * dx < 25 for dy, dx in big)


def test_seed_map_thresholds():
    cams = np.array([[[0.9, 0.5, 0.0]], [[0.2, 0.6, 0.04]]], np.float32)  # classes 2 and 4
    seeds = seed_map(cams, [2, 4], fg_threshold=0.55, bg_threshold=0.05)
    assert seeds.tolist() == [[3, 5, 0]]  # class 2 + 1, class 4 + 1, background
    assert seed_map(cams, [2, 4], 0.95, 0.05).tolist() == [[IGNORE, IGNORE, 0]]


def test_relation_labels_from_a_constructed_seed_map():
    # columns: class 1 (seed 2), class 1, background, unknown
    seeds = np.array([[2, 2, 0, IGNORE],
                      [2, 2, 0, 0]], np.uint8)
    labels = relation_labels(seeds, 1.5)  # offsets (0,1), (1,-1), (1,0), (1,1)
    right, down_left, down, down_right = labels
    assert right.tolist() == [[FG_POS, NEG, PAIR_IGNORE, PAIR_IGNORE],
                              [FG_POS, NEG, BG_POS, PAIR_IGNORE]]
    assert down.tolist() == [[FG_POS, FG_POS, BG_POS, PAIR_IGNORE],
                             [PAIR_IGNORE] * 4]  # the last row's partners are off the grid
    assert down_right[0].tolist() == [FG_POS, NEG, BG_POS, PAIR_IGNORE]
    assert down_left[0].tolist() == [PAIR_IGNORE, FG_POS, NEG, PAIR_IGNORE]


def test_affinity_is_one_minus_the_max_boundary_on_the_line():
    boundary = torch.zeros(5, 5)
    boundary[2, 2] = 0.8
    paths = PairPaths(3)
    aff = pair_affinity(boundary, paths)
    offsets = paths.offsets.tolist()
    right2 = aff[offsets.index([0, 2])]
    assert right2[2, 1] == pytest.approx(0.2)  # (2,1) -> (2,3) passes (2,2)
    assert right2[1, 1] == pytest.approx(1.0)  # (1,1) -> (1,3) passes no boundary
    assert right2[2, 4] == 0                   # the partner (2,6) is off the grid
    assert aff[offsets.index([2, 2]), 0, 0] == pytest.approx(0.2)  # (0,0) -> (2,2) ends on it


# ------------------------------------------------------------------------ random walk


def ring(size=20, lo=5, hi=14):
    """A closed square ring of boundary 1 on rows/cols lo and hi."""
    b = np.zeros((size, size), np.float32)
    b[lo, lo:hi + 1] = b[hi, lo:hi + 1] = b[lo:hi + 1, lo] = b[lo:hi + 1, hi] = 1
    return b


def test_random_walk_spreads_a_seed_within_a_closed_boundary_and_not_across_it():
    boundary = ring()
    seed = np.zeros((1, 20, 20), np.float32)
    seed[0, 9, 9] = 1.0
    walked = random_walk(seed, boundary, radius=3, beta=10, steps=64)[0]
    inside = np.zeros((20, 20), bool)
    inside[6:14, 6:14] = True
    assert (walked[inside] > 0).all()        # it reached every cell inside
    assert walked[~inside].max() == 0        # and not one cell on or beyond the ring
    # more even inside than the seed was: it spread
    assert walked[inside].min() > 0.1 * walked[inside].max()
    # without the ring the same seed spreads outside
    free = random_walk(seed, np.zeros((20, 20), np.float32), radius=3, beta=10, steps=64)[0]
    assert free[~inside].max() > 0


def test_sparse_walk_equals_the_dense_reference():
    rng = np.random.default_rng(0)
    boundary = np.clip(rng.random((12, 15)) ** 4, 0, 1).astype(np.float32)
    scores = rng.random((3, 12, 15)).astype(np.float32)
    sparse = random_walk(scores, boundary, radius=3, beta=4, steps=16)
    np.testing.assert_allclose(sparse, dense_random_walk(scores, boundary, 3, 4, 16),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sparse, dense_random_walk(scores, boundary, 3, 4, 16,
                                                         square=True), rtol=1e-3, atol=1e-6)
    # memory linear in the cells: at most 2 D + 1 entries a row (D pairs per cell)
    a = affinity_matrix(boundary, 3, 4)
    assert a.nnz <= 12 * 15 * (2 * len(pair_offsets(3)) + 1)
    assert abs(a - a.T).max() == 0


# ------------------------------------------------------------------------ centroids

CENTRES = [(10, 10), (20, 30)]


def two_disks(h=30, w=40, r=6):
    """Displacement field [2, h, w] of two disk instances pointing at their centres (0 on the
    background) and the disks' masks."""
    yy, xx = np.mgrid[0:h, 0:w]
    field = np.zeros((2, h, w), np.float32)
    disks = []
    for cy, cx in CENTRES:
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        field[0][disk] = (cy - yy)[disk]
        field[1][disk] = (cx - xx)[disk]
        disks.append(disk)
    return field, disks


def test_centroids_from_a_constructed_displacement_field_with_two_instances():
    field, disks = two_disks()
    ends = find_centroids(field, iterations=100)
    for (cy, cx), disk in zip(CENTRES, disks):
        np.testing.assert_allclose(ends[0][disk], cy, atol=0.5)
        np.testing.assert_allclose(ends[1][disk], cx, atol=0.5)
    clusters, regions = cluster_cells(ends, field, threshold=2.5)
    ids = [np.unique(clusters[d]) for d in disks]
    assert [len(i) for i in ids] == [1, 1] and ids[0][0] != ids[1][0] and 0 not in ids[0]
    for (cy, cx), i in zip(CENTRES, ids):
        assert regions[cy, cx] == i[0]  # the region around each centre
    background = ~(disks[0] | disks[1])
    assert not np.isin(clusters[background], [ids[0][0], ids[1][0]]).any()


# ------------------------------------------------------------------------ the store


def constructed_image(size=64, grid=16):
    """A displacement field of two disk instances (radius 3 cells) on the grid, boundary rings
    around them, CAMs of class 1 on both, and the disks at image resolution (cell i at pixel
    4 i, radius 12.5 pixels)."""
    yy, xx = np.mgrid[0:grid, 0:grid]
    field = np.zeros((2, grid, grid), np.float32)
    boundary = np.zeros((grid, grid), np.float32)
    cams = np.zeros((1, grid, grid), np.float32)
    masks = []
    for cy, cx in [(4, 4), (11, 10)]:
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        disk = d2 <= 9
        field[0][disk], field[1][disk] = (cy - yy)[disk], (cx - xx)[disk]
        boundary[(d2 > 9) & (d2 <= 25)] = 1.0  # thick enough that no diagonal step jumps it
        cams[0][disk] = 1.0 - np.sqrt(d2[disk]) / 4
        py, px = np.mgrid[0:size, 0:size]
        masks.append(((py - 4 * cy) ** 2 + (px - 4 * cx) ** 2) <= 12.5 ** 2)
    return field, boundary, cams, masks


def test_irnet_store_reads_back_through_the_evaluator(tmp_path, monkeypatch):
    manifest_path = build_manifest(tmp_path / "data", n_images=2, size=(64, 64))
    manifest = read_manifest(manifest_path)
    field, boundary, cams, masks = constructed_image()
    monkeypatch.setattr(instances, "boundary_and_displacement",
                        lambda model, rgb, size, device: (boundary, field))
    cams_path = tmp_path / "cams.h5"
    with StoreWriter(cams_path, "cams", manifest.classes,
                     attrs={"input_size": 64, "grid_stride": 4}) as w:
        for rec in manifest.images:
            w.add(rec.id, 64, 64, {"classes": np.array([1], np.int16),
                                   "cams": cams.astype(np.float16),
                                   "cam_max": np.ones(1, np.float32)})
    options = section_options(json.dumps({"walk_radius": 3, "walk_steps": 32,
                                          "centroid_threshold": 1.5,
                                          "seed_superpixels": None}), "irnet")
    meta = {"input_size": 64, "feature_stride": 4, "config": {}}
    out = tmp_path / "pseudo_masks.h5"
    counts = write_instances(None, meta, cams_path, manifest_path, options, 0, 1, out, "cpu",
                             progress=False)
    assert counts["instances"] == 4 and counts["images_with_masks"] == 2
    with StoreReader(out, "pseudo_masks") as store:
        assert store.attrs["method"] == "irnet"
        e = store.read("img0")
        assert e["labels"].tolist() == [1, 1] and e["peak_index"].tolist() == [-1, -1]
        assert sorted(e["peak_yx"].round().tolist()) == [[16.0, 16.0], [44.0, 40.0]]
    results = pseudo_masks_to_results(out, manifest)
    gt = {"images": [{"id": manifest.coco_image_id(r.id), "width": 64, "height": 64}
                     for r in manifest.images],
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(manifest.classes)],
          "annotations": []}
    from tag2mask.core import masks as mask_rle
    for rec in manifest.images:
        for m in masks:
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": manifest.coco_image_id(rec.id),
                "category_id": 2, "iscrowd": 0, "area": int(m.sum()), "bbox": [0, 0, 1, 1],
                "segmentation": mask_rle.to_coco_segmentation(mask_rle.encode(m), 64, 64)})
    figures = evaluate(gt, results)
    assert figures["mAP@0.5"] == pytest.approx(1.0) and figures["ABO"] > 0.7


# ------------------------------------------------------------------------ CAMs


def test_class_maps_on_the_grid_follow_the_cell_geometry():
    # a stride-8 map of 4 cells (at input pixels 0, 8, 16, 24) sampled on a stride-4 grid of
    # the same 32 px input: cell i at pixel 4 i, halfway between map cells for odd i
    maps = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 1, 4).expand(1, 1, 4, 4).contiguous()
    out = sample_on_grid(maps, 8, 32, 32, 8, 4)[0, 0, 0]
    np.testing.assert_allclose(out.numpy(), [0, 0.5, 1, 1.5, 2, 2.5, 3, 3], atol=1e-6)
    mirrored = sample_on_grid(maps.flip(-1), 8, 32, 32, 8, 4, mirrored=True)[0, 0, 0]
    # the mirror's cell k lies at input pixel 31 - 8 k, so its ramp value at pixel p is
    # (p - 7) / 8: 7 / 8 lower, clamped at the borders
    np.testing.assert_allclose(mirrored.numpy(), np.clip((np.arange(8) * 4 - 7) / 8, 0, 3),
                               atol=1e-6)


def tiny_classifier(folder, classes, input_size=64):
    options = section_options(json.dumps({"backbone": "tiny", "pretrained": False,
                                          "input_size": input_size, "stride": 8}), "classifier")
    torch.manual_seed(0)
    model = build_classifier(options, classes)
    save_classifier(folder / "classifier.pt", model, options, 0)
    return model.eval(), folder / "classifier.pt"


def test_multiscale_class_maps_average_scales_and_flips(tmp_path):
    model, _ = tiny_classifier(tmp_path, ["a", "b", "c"])
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    one = multiscale_class_maps(model, rgb, 64, [1.0], flip=False, grid_stride=4)
    assert one.shape == (3, 16, 16) and one.min() >= 0
    both = multiscale_class_maps(model, rgb, 64, [1.0, 1.5], flip=True, grid_stride=4,
                                 classes=[2])
    assert both.shape == (1, 16, 16)
    raw = multiscale_class_maps(model, rgb, 64, [1.0], flip=False, positive=False)
    assert raw.shape == (3, 8, 8)  # the classifier's own stride by default


# ------------------------------------------------------------------------ commands


IRNET = {"input_size": 64, "cam_scales": [1.0], "epochs": 2, "batch_size": 4, "device": "cpu",
         "walk_steps": 16, "walk_radius": 3, "relation_radius": 3, "fg_threshold": 0.5,
         "bg_threshold": 0.3, "seed_superpixels": 50}


def test_commands_chain_from_classifier_to_pseudo_masks(tmp_path):
    manifest = build_manifest(tmp_path / "data", n_images=8, size=(48, 40))
    _, classifier = tiny_classifier(tmp_path, read_manifest(manifest).classes)
    config = json.dumps(IRNET)
    shards = []
    for i in range(2):
        shards.append(tmp_path / f"cams/shards/{i}.h5")
        run("irnet", "cams", "--manifest", str(manifest), "--checkpoint", str(classifier),
            "--config", config, "--shard", str(i), "--num-shards", "2", "--out", str(shards[-1]),
            "--threads", "1", "--no-progress")
    cams = tmp_path / "cams/cams.h5"
    run("irnet", "gather", "--out", str(cams), *map(str, shards))
    seeds = tmp_path / "irnet/relation_seeds.h5"
    run("irnet", "relations", "--cams", str(cams), "--manifest", str(manifest), "--config",
        config, "--out", str(seeds), "--no-progress")
    run("irnet", "train", "--manifest", str(manifest), "--checkpoint", str(classifier),
        "--seeds", str(seeds), "--config", config, "--out-dir", str(tmp_path / "irnet"),
        "--threads", "1", "--no-progress")
    assert epochs_in(tmp_path / "irnet/log.jsonl") == [1, 2]
    out = tmp_path / "pseudo_masks/shards/0.h5"
    run("pseudo_masks", "make", "--method", "irnet", "--manifest", str(manifest), "--input",
        f"model={tmp_path / 'irnet/irnet.pt'}", f"cams={cams}", "--config", config,
        "--out", str(out), "--no-progress")
    with StoreReader(cams, "cams") as store:
        assert len(store) == 8 and store.attrs["input_size"] == 64
        e = store.read("img0")
        assert e["cams"].shape == (1, 16, 16) and e["classes"].tolist() == [0]
    with StoreReader(seeds, "relation_seeds") as store:
        assert store.read("img1")["seeds"].shape == (16, 16)
    with StoreReader(out, "pseudo_masks") as store:
        assert len(store) == 8 and store.attrs["method"] == "irnet"
        for image_id in store.image_ids:
            e = store.read(image_id)
            assert set(e) >= {"masks", "labels", "scores", "boxes", "peak_index", "peak_yx"}
            assert e["irnet_status"] in ("ok", "no_instance")
    pseudo_masks_to_results(out, read_manifest(manifest))  # the evaluator's reader takes it


def random_relation_seeds(path, manifest, unknown_share=0.0):
    """A relation-seed store of random 16x16 seed maps for 64x64 images: background or the
    image's first label, half each, and `unknown_share` of the cells unknown (255)."""
    rng = np.random.default_rng(0)
    with StoreWriter(path, "relation_seeds", manifest.classes) as w:
        for rec in manifest.images:
            s = np.where(rng.random((16, 16)) < 0.5, 0, 1 + manifest.label_indices(rec)[0])
            if unknown_share:
                s[rng.random((16, 16)) < unknown_share] = 255
            w.add(rec.id, 64, 64, {"seeds": s.astype(np.uint8)})
    return path


def test_train_irnet_resumes_after_sigkill(tmp_path):
    manifest = build_manifest(tmp_path / "data", n_images=48, size=(64, 64))
    m = read_manifest(manifest)
    _, classifier = tiny_classifier(tmp_path, m.classes)
    seeds = random_relation_seeds(tmp_path / "relation_seeds.h5", m)
    out = tmp_path / "irnet"
    config = json.dumps({**IRNET, "epochs": 4, "batch_size": 1})
    args = ["irnet", "train", "--manifest", str(manifest), "--checkpoint", str(classifier),
            "--seeds", str(seeds), "--config", config, "--out-dir", str(out), "--threads", "1",
            "--no-progress"]
    killed_and_resumed(args, out, "irnet.pt", 4)
