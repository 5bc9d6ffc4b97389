"""Peak extraction (peaks extract, the peaks store) and peak quality figures."""

import json

import numpy as np
import pytest
import torch
from conftest import build_manifest

from tag2mask.classifier.model import build_classifier, save_classifier
from tag2mask.cli import main
from tag2mask.core.config import section_options
from tag2mask.core.store import StoreReader, StoreWriter
from tag2mask.dataset.groundtruth import CocoBuilder
from tag2mask.dataset.manifest import make_record, read_manifest
from tag2mask.peaks.extract import options_digest, select_peaks, to_image_pixels
from tag2mask.peaks.quality import (
    own_instances,
    pairwise_similarity,
    peak_quality,
    response_localisation,
    response_map_parts,
    response_map_quality,
)

ARRAYS = {  # name -> (dtype, trailing shape given P, K, map shape, C)
    "peak_class": np.int16, "peak_yx": np.float32, "peak_value": np.float32,
    "response_maps": np.float16, "response_argmax_yx": np.float32, "map_classes": np.int16,
    "class_maps": np.float16, "class_scores": np.float32,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """7 random 40x30 images (classes a/b/c) and a random tiny classifier at 32 px."""
    folder = tmp_path_factory.mktemp("peaks")
    manifest = build_manifest(folder, n_images=7, size=(40, 30))
    classes = read_manifest(manifest).classes
    options = section_options(json.dumps({"backbone": "tiny", "pretrained": False,
                                          "input_size": 32, "stride": 8}), "classifier")
    torch.manual_seed(0)
    model = build_classifier(options, classes)
    save_classifier(folder / "classifier.pt", model, options, 0)
    return folder, manifest, folder / "classifier.pt"


def extract(setup, name, options, shard=0, num_shards=1, panels=False):
    folder, manifest, checkpoint = setup
    out = folder / f"{name}.h5"
    argv = ["peaks", "extract", "--manifest", str(manifest), "--checkpoint", str(checkpoint),
            "--config", json.dumps(options), "--shard", str(shard), "--num-shards",
            str(num_shards), "--out", str(out), "--no-progress", "--threads", "1"]
    if panels:
        argv += ["--panels", str(folder / f"{name}_panels")]
    assert main(argv) == 0
    return out


def read_all(path):
    with StoreReader(path, "peaks") as r:
        return dict(r.attrs), {i: r.read(i) for i in r.image_ids}


def test_store_layout(setup):
    options = {"peak_threshold": -1e9, "max_peaks": 5, "map_size": 24, "upsample": 4,
               "panels": 2, "device": "cpu"}
    path = extract(setup, "one", options, panels=True)
    attrs, images = read_all(path)
    manifest = read_manifest(setup[1])
    full = section_options(json.dumps(options), "peaks")
    assert attrs["format_version"] == 1 and attrs["kind"] == "peaks"
    assert attrs["map_size"] == 24 and attrs["config_digest"] == options_digest(full)
    assert attrs["count_images"] == 7 and attrs["count_images_without_peaks"] == 0
    assert attrs["count_peaks"] == sum(int(e["num_peaks"]) for e in images.values())
    assert list(images) == [r.id for r in manifest.images]
    for rec in manifest.images:
        e = images[rec.id]
        p = int(e["num_peaks"])
        assert 1 <= p <= 5
        for name, dtype in ARRAYS.items():
            assert e[name].dtype == dtype, name
        assert e["peak_class"].shape == (p,) and e["peak_yx"].shape == (p, 2)
        assert e["response_maps"].shape == (p, 18, 24)  # 30x40 image, longest side 24
        assert e["class_maps"].shape == (len(rec.labels), 18, 24)
        assert e["class_scores"].shape == (3,)
        assert e["map_classes"].tolist() == manifest.label_indices(rec)  # tags mode
        assert set(e["peak_class"].tolist()) <= set(manifest.label_indices(rec))
        sums = e["response_maps"].astype(np.float64).sum((1, 2))
        np.testing.assert_allclose(sums, 1, atol=5e-3)
        for yx in (e["peak_yx"], e["response_argmax_yx"]):
            assert (yx >= -0.5).all() and (yx[:, 0] <= 29.5).all() and (yx[:, 1] <= 39.5).all()
        assert np.all(np.diff(e["peak_value"]) <= 0)  # strongest first
    pngs = sorted(p.name for p in (setup[0] / "one_panels").iterdir())
    assert pngs == ["img0.png", "img1.png"]


def test_shards_gather_equal_one_shard(setup):
    options = {"peak_threshold": -1e9, "max_peaks": 4, "map_size": 16, "upsample": 2,
               "panels": 0}
    one = extract(setup, "whole", options)
    shards = [extract(setup, f"shard{i}", options, shard=i, num_shards=3) for i in range(3)]
    gathered = setup[0] / "gathered.h5"
    assert main(["peaks", "gather", "--out", str(gathered), *map(str, shards)]) == 0
    attrs_a, a = read_all(one)
    attrs_b, b = read_all(gathered)
    assert list(a) == list(b)
    for k in ("config_digest", "map_size", "count_images", "count_peaks",
              "count_images_without_peaks"):
        assert attrs_a[k] == attrs_b[k], k
    for image_id in a:
        for name in ARRAYS:
            np.testing.assert_array_equal(a[image_id][name], b[image_id][name], err_msg=name)


def test_images_without_peaks_are_recorded_and_counted(setup, caplog):
    options = {"peak_threshold": 1e9, "keep_best_peak": False, "map_size": 16, "upsample": 2,
               "panels": 1}
    with caplog.at_level("INFO"):
        path = extract(setup, "none", options, panels=True)
    attrs, images = read_all(path)
    assert len(images) == 7 and attrs["count_images_without_peaks"] == 7
    assert attrs["count_peaks"] == 0
    for e in images.values():
        assert e["num_peaks"] == 0
        assert e["response_maps"].shape == (0, 12, 16) and e["peak_yx"].shape == (0, 2)
        assert len(e["map_classes"]) >= 1  # the tagged classes' maps are still stored
    assert "7 images without any peak" in caplog.text
    # predicted classes above an unreachable score: no class, no peak
    _, images = read_all(extract(setup, "pred", {"classes": "predicted",
                                                 "score_threshold": 1e9, "panels": 0}))
    assert all(e["num_peaks"] == 0 and len(e["map_classes"]) == 0 for e in images.values())


def test_response_layer(setup, capsys):
    options = {"peak_threshold": -1e9, "max_peaks": 3, "map_size": 16, "upsample": 2,
               "panels": 0}
    _, at_input = read_all(extract(setup, "at_input", options))
    attrs, at_layer = read_all(extract(setup, "at_layer", {**options,
                                                           "response_layer": "backbone.features.2"}))
    assert attrs["response_layer"] == "backbone.features.2"
    for image_id, e in at_layer.items():
        np.testing.assert_array_equal(e["peak_yx"], at_input[image_id]["peak_yx"])
        np.testing.assert_allclose(e["response_maps"].astype(np.float64).sum((1, 2)), 1,
                                   atol=5e-3)
        assert not np.array_equal(e["response_maps"], at_input[image_id]["response_maps"])
    # a mapping picks by the classifier's backbone (tiny here); one not in it: the input
    by_backbone = {"tiny": "backbone.features.2", "efficientnet_lite0": "backbone.net.blocks.5"}
    attrs, picked = read_all(extract(setup, "picked", {**options, "response_layer": by_backbone}))
    assert attrs["response_layer"] == "backbone.features.2"
    other = {"resnet18": "backbone.features.6"}
    attrs, other = read_all(extract(setup, "other", {**options, "response_layer": other}))
    assert attrs["response_layer"] == "input"
    for image_id in at_layer:
        np.testing.assert_array_equal(picked[image_id]["response_maps"],
                                      at_layer[image_id]["response_maps"])
        np.testing.assert_array_equal(other[image_id]["response_maps"],
                                      at_input[image_id]["response_maps"])
    folder, manifest, checkpoint = setup
    argv = ["peaks", "extract", "--manifest", str(manifest), "--checkpoint", str(checkpoint),
            "--config", json.dumps({**options, "response_layer": "backbone.nope"}),
            "--out", str(folder / "bad.h5"), "--no-progress"]
    assert main(argv) == 2
    assert "no layer 'backbone.nope'" in capsys.readouterr().err


def test_select_peaks_threshold_keep_best_and_cap():
    maps = torch.full((1, 3, 6, 6), -5.0)
    maps[0, 0, 1, 1], maps[0, 0, 4, 4], maps[0, 0, 1, 4] = 3.0, 1.0, -1.0
    maps[0, 1, 2, 2] = -2.0  # class 1: only a weak peak
    maps[0, 2, 3, 3] = 9.0   # class 2: not asked for
    opts = {"peak_threshold": 0.5, "relative_threshold": 0.0, "keep_best_peak": False,
            "max_peaks": 10}
    peaks, values = select_peaks(maps, [0, 1], opts, 3, "median")
    assert peaks.tolist() == [[0, 1, 1], [0, 4, 4]] and values.tolist() == [3.0, 1.0]
    # relative: 1.0 is a third of class 0's best (3.0)
    peaks, _ = select_peaks(maps, [0, 1], {**opts, "relative_threshold": 0.4}, 3, "median")
    assert peaks.tolist() == [[0, 1, 1]]
    peaks, _ = select_peaks(maps, [0, 1], {**opts, "keep_best_peak": True}, 3, "median")
    assert peaks.tolist() == [[0, 1, 1], [0, 4, 4], [1, 2, 2]]
    peaks, _ = select_peaks(maps, [0, 1], {**opts, "max_peaks": 1}, 3, "median")
    assert peaks.tolist() == [[0, 1, 1]]
    assert len(select_peaks(maps, [], opts, 3, "median")[0]) == 0


def test_one_peak_per_plateau():
    maps = torch.zeros((1, 2, 8, 8))
    maps[0, 0, 2:5, 3:6] = 2.0   # a flat 3x3 top: one peak, its top-left pixel
    maps[0, 0, 7, 0] = 1.0       # a separate peak
    maps[0, 1] = 1.0             # a constant map: all plateau
    opts = {"peak_threshold": 0.5, "relative_threshold": 0.0, "keep_best_peak": False,
            "max_peaks": 20}
    peaks, _values = select_peaks(maps, [0, 1], opts, 3, "median")
    assert sorted(map(tuple, peaks.tolist())) == [(0, 2, 3), (0, 7, 0), (1, 0, 0)]


def test_to_image_pixels_maps_pixel_centres():
    # an 8-pixel grid over a 32-pixel image: cell i's centre is at 4 i + 1.5
    got = to_image_pixels([[0, 0], [7, 3]], (8, 4), (32, 8))
    np.testing.assert_allclose(got, [[1.5, 0.5], [29.5, 6.5]])


def test_quality_known_answer(tmp_path):
    """Two images, three GT instances; peaks placed so that the figures are known."""
    classes = ["a", "b"]
    h, w = 20, 30
    gt = CocoBuilder(classes)
    inst = np.zeros((3, h, w), bool)
    inst[0, 2:8, 2:8] = True      # image 1, class a
    inst[1, 10:18, 15:25] = True  # image 1, class b
    inst[2, 5:15, 5:15] = True    # image 2, class a
    rec1 = make_record("im1", tmp_path / "1.png", w, h, "train", ["a", "b"], classes)
    rec2 = make_record("im2", tmp_path / "2.png", w, h, "train", ["a"], classes)
    gt.add_image(1, rec1, inst[:2], [0, 1])
    gt.add_image(2, rec2, inst[2:], [0])
    gt_path = tmp_path / "train.json"
    gt_path.write_text(json.dumps(gt.to_dict()))

    def arrays(peak_class, peak_yx, values, scores):
        p = len(peak_class)
        return {"peak_class": np.array(peak_class, np.int16),
                "peak_yx": np.array(peak_yx, np.float32).reshape(p, 2),
                "peak_value": np.array(values, np.float32),
                "response_maps": np.full((p, 4, 6), 1 / 24, np.float16),
                "response_argmax_yx": np.array(peak_yx, np.float32).reshape(p, 2),
                "map_classes": np.array([0, 1], np.int16),
                "class_maps": np.zeros((2, 4, 6), np.float16),
                "class_scores": np.array(scores, np.float32)}

    store = tmp_path / "peaks.h5"
    with StoreWriter(store, "peaks", classes, attrs={"map_size": 6}) as wr:
        # image 1: two peaks in the class-a instance (a duplicate), one class-a peak inside
        # the class-b instance (wrong class), none on b
        wr.add("im1", h, w, arrays([0, 0, 0], [[3, 3], [6, 6], [12, 20]], [5, 4, 1], [2, 1]),
               attrs={"num_peaks": 3})
        # image 2: one peak in its instance, one on background
        wr.add("im2", h, w, arrays([0, 0], [[10, 10], [1, 28]], [3, 2], [1, -1]),
               attrs={"num_peaks": 2})
    q = peak_quality(store, [gt_path])
    assert q["images"] == 2 and q["peaks"] == 5 and q["gt_instances"] == 3
    assert q["peak_precision"] == pytest.approx(3 / 5)
    assert q["instance_recall"] == pytest.approx(2 / 3)
    assert q["duplicate_rate"] == pytest.approx(1 / 3)
    assert q["per_class"]["a"]["instance_recall"] == 1.0
    assert q["per_class"]["b"]["instance_recall"] == 0.0
    # class a: scores 2 (pos), 1 (pos) -> AP 1; class b: scores 1 (pos), -1 (neg) -> AP 1
    assert q["classification_mAP"] == pytest.approx(1.0)
    sweep = {s["threshold"]: s for s in q["threshold_sweep"]}
    at3 = peak_quality(store, [gt_path], thresholds=[3.0])["threshold_sweep"][0]
    assert at3["peaks"] == 3 and at3["precision"] == 1.0
    assert at3["instance_recall"] == pytest.approx(2 / 3) and at3["duplicate_rate"] == \
        pytest.approx(1 / 3)
    assert sweep  # quantile thresholds by default
    r = q["response_maps"]  # uniform maps: every pair is the same map
    assert r["pairs"] == 4 and r["pair_cosine"] == pytest.approx(1.0)
    assert r["pair_overlap"] == pytest.approx(1.0, abs=1e-3)
    assert r["peaks_in_own_instance"] == 3 and r["pairs_different_instances"] == 0
    assert r["different_instances_cosine"] is None
    assert main(["peaks", "evaluate", "--peaks", str(store), "--gt", str(gt_path),
                 "--out", str(tmp_path / "q.json")]) == 0
    assert json.loads((tmp_path / "q.json").read_text())["peak_precision"] == \
        pytest.approx(3 / 5)


def test_response_map_figures_known_answer():
    """Two class-0 instances (top-left, bottom-right) and a class-1 one (top-right) on an 8x8
    image; maps on a 4x4 grid: peak 0's on its own instance, peak 1's on peak 0's instance,
    peak 2 (class 0 on the class-1 instance) has no own instance."""
    inst = np.zeros((3, 8, 8), bool)
    inst[0, :4, :4] = inst[1, 4:, 4:] = inst[2, :4, 4:] = True
    icls = np.array([0, 0, 1])
    maps = np.zeros((3, 4, 4))
    maps[0, :2, :2] = maps[1, :2, :2] = maps[2, 2:, 2:] = 0.25
    cosine, overlap = pairwise_similarity(maps)
    np.testing.assert_allclose(cosine, [[1, 1, 0], [1, 1, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(overlap, cosine, atol=1e-12)
    own = own_instances([[1, 1], [6, 6], [2, 5]], [0, 0, 0], inst, icls)
    assert own.tolist() == [0, 1, -1]
    loc = response_localisation(maps, own, inst, argmax_yx=[[1, 1], [1, 1], [7, 7]])
    np.testing.assert_allclose(loc["mass_own"], [1, 0])
    np.testing.assert_allclose(loc["mass_other"], [0, 1])
    np.testing.assert_allclose(loc["own_share"], [1, 0])
    np.testing.assert_allclose(loc["area_share"], [1 / 3, 1 / 3])
    assert loc["argmax_in_own"].tolist() == [True, False]
    q = response_map_quality([(maps, own, loc)])
    assert q["pairs"] == 3 and q["pair_cosine"] == pytest.approx(1 / 3)
    assert q["pairs_different_instances"] == 1  # peaks 0 and 1
    assert q["different_instances_cosine"] == pytest.approx(1.0)
    assert q["peaks_in_own_instance"] == 2 and q["peaks_with_other_instances"] == 2
    assert q["mass_own"] == pytest.approx(0.5) and q["own_share"] == pytest.approx(0.5)
    assert q["own_share_by_area"] == pytest.approx(1 / 3)
    assert q["argmax_in_own"] == pytest.approx(0.5)
    # what peak_quality keeps per image instead of the maps gives the same figures
    assert response_map_quality(None, parts=[response_map_parts(maps, own, loc)]) == q
    # no peak in any instance: empty figures, no error
    none = response_localisation(maps, np.full(3, -1), inst, argmax_yx=np.zeros((3, 2)))
    assert all(len(v) == 0 for v in none.values())


def test_averaged_maps_of_one_scale_twice_are_the_single_pass(setup):
    """The multi-scale path samples every pass at the upsampled and stored map pixels with the
    cell geometry; one scale twice (no flip) must give the single pass's peaks and maps."""
    single = extract(setup, "single", {"scales": [1.0], "flip": False, "map_size": 16})
    twice = extract(setup, "twice", {"scales": [1.0, 1.0], "flip": False, "map_size": 16})
    _, a = read_all(single)
    _, b = read_all(twice)
    for image_id in a:
        np.testing.assert_array_equal(a[image_id]["peak_class"], b[image_id]["peak_class"])
        np.testing.assert_allclose(a[image_id]["peak_yx"], b[image_id]["peak_yx"])
        np.testing.assert_allclose(a[image_id]["peak_value"], b[image_id]["peak_value"],
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(a[image_id]["class_maps"].astype(np.float32),
                                   b[image_id]["class_maps"].astype(np.float32),
                                   rtol=1e-2, atol=1e-2)


def test_flip_averages_a_mirrored_pass(setup):
    """With flip, the averaged maps of a mirror-symmetric image are mirror-symmetric."""
    from tag2mask.classifier.cams import multiscale_class_maps
    from tag2mask.classifier.model import load_classifier

    model, _ = load_classifier(setup[2])
    rng = np.random.default_rng(0)
    half = rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)
    rgb = np.concatenate([half, half[:, ::-1]], 1)
    maps = multiscale_class_maps(model, rgb, 32, [1.0], flip=True, positive=False,
                                 pixels_yx=(torch.arange(32.0), torch.arange(32.0)))
    np.testing.assert_allclose(maps.numpy(), maps.flip(-1).numpy(), atol=1e-5)
