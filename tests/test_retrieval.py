"""Proposal retrieval: known answers on constructed inputs (PRM, WISE, NMS merging, area limits),
the vectorised selection against the per-peak per-proposal loop, and the retrieve command."""

import json

import numpy as np
import pytest
from conftest import build_manifest
from retrieval_reference import select_reference_loop

from tag2mask.cli import main
from tag2mask.core import masks as mask_rle
from tag2mask.core.config import section_options
from tag2mask.core.errors import InputError
from tag2mask.core.store import StoreReader, StoreWriter, gather
from tag2mask.dataset.manifest import read_manifest
from tag2mask.retrieval.method import make_shard, retrieve_image
from tag2mask.retrieval.prm import contour_size, morphological_gradient
from tag2mask.retrieval.select import select
from tag2mask.retrieval.working import prepare_image, working_shape

H, W = 40, 60


# the options of each rule, nested under its name in the config
RULE_KEYS = {"a": "prm", "b": "prm", "contour_width": "prm", "background_factor": "prm",
             "power": "consensus", "grid_step": "consensus", "grid_threshold": "consensus"}


def opts(**kw):
    """Retrieval options; method prm unless asked (the tests below were written for it). A
    rule's own option (a, b, power, grid_step, ...) goes under the rule's name."""
    o = {**section_options("{}", "retrieval"), "method": "prm"}
    for key, value in kw.items():
        if key in RULE_KEYS:
            o[RULE_KEYS[key]] = {**o[RULE_KEYS[key]], key: value}
        else:
            o[key] = value
    return o


def box(y0, y1, x0, x1, shape=(H, W)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def peaks_entry(responses, classes, values, class_maps, map_classes, peak_yx=None):
    responses = np.asarray(responses, np.float32)
    responses = responses / np.maximum(responses.sum((1, 2)), 1e-12)[:, None, None]
    if peak_yx is None:
        peak_yx = [np.unravel_index(r.argmax(), r.shape) for r in responses]
    return {"peak_class": np.asarray(classes, np.int16),
            "peak_yx": np.asarray(peak_yx, np.float32).reshape(-1, 2),
            "peak_value": np.asarray(values, np.float32),
            "response_maps": responses.astype(np.float16),
            "map_classes": np.asarray(map_classes, np.int16),
            "class_maps": np.asarray(class_maps, np.float16)}


# The scene: one object (a 16x20 box); proposals: the object, the whole image, a small part of
# the object, a large box (70% of the image) containing the object, and one elsewhere.
OBJECT = box(10, 26, 15, 35)
PROPOSALS = [OBJECT, np.ones((H, W), bool), box(14, 22, 20, 28), box(2, 38, 5, 52),
             box(28, 38, 40, 55)]
OBJECTNESS = [0.2, 0.99, 0.5, 0.3, 0.95]


def scene_peaks(n_peaks=1):
    yy, xx = np.mgrid[:H, :W]
    r1 = OBJECT * np.exp(-((yy - 18) ** 2 + (xx - 25) ** 2) / 60.0) + 1e-6 * OBJECT
    r2 = OBJECT * np.exp(-((yy - 14) ** 2 + (xx - 31) ** 2) / 40.0) + 1e-6 * OBJECT
    class_map = np.where(OBJECT, 3.0, -1.0)
    resp = [r1, r2][:n_peaks]
    return peaks_entry(resp, [1] * n_peaks, [2.0, 1.0][:n_peaks], [class_map], [1])


def run_scene(peaks, **kw):
    props = {"masks": mask_rle.encode(np.stack(PROPOSALS)),
             "scores": np.asarray(OBJECTNESS, np.float32)}
    o = opts(working_size=64, **kw)
    inp = prepare_image(peaks, props["masks"], props["scores"], H, W, o)
    return inp, select(inp, o), select_reference_loop(inp, o)


def test_prm_picks_the_object():
    inp, sel, ref = run_scene(scene_peaks(1))
    assert inp.valid.tolist() == [True, False, True, True, True]  # whole image >= 0.85
    assert sel.proposal.tolist() == [0] and ref.proposal.tolist() == [0]
    assert sel.kept.tolist() == [0]
    # score = a * 1 (all response inside) + response on the contour band - b * 0 background
    assert 0.8 < sel.score[0] < 1.8
    # confidence = sigmoid(peak value) * response mass inside (all of it)
    assert sel.confidence[0] == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-4)


def test_prm_background_penalty_and_area_limits():
    peaks = scene_peaks(1)
    # The large box holds all the response too, but 70% of the image is background: with a
    # strong penalty it loses clearly, with none it loses only the contour term.
    _, sel, _ = run_scene(peaks, b=0.0)
    assert sel.proposal[0] == 0
    inp, sel, ref = run_scene(peaks, max_area=0.1)  # the object (13%) is now too large
    assert not inp.valid[0] and not inp.valid[3]
    assert sel.proposal[0] == 2 and ref.proposal[0] == 2  # the small part inside the object
    inp, sel, _ = run_scene(peaks, max_area=0.1, min_area=0.03)  # and the part too small
    assert sel.proposal[0] == 4 or sel.proposal[0] == -1
    assert not inp.valid[2]


def test_wise_picks_highest_objectness_covering_the_point():
    peaks = scene_peaks(1)
    inp, sel, ref = run_scene(peaks, method="wise")
    # The response argmax (18, 25) is covered by proposals 0, 1 (excluded: whole image), 2, 3;
    # proposal 4 (0.95) does not cover it.
    assert inp.covers[:, 0].tolist() == [True, True, True, True, False]
    assert sel.proposal[0] == 2 and ref.proposal[0] == 2
    assert sel.score[0] == pytest.approx(0.5)
    _, sel, _ = run_scene(peaks, method="wise", min_area=0.03)  # the part is now too small
    assert sel.proposal[0] == 3  # the large box (0.3) beats the object (0.2)
    # point=peak uses the stored peak location instead: (30, 45) lies only in proposals 1, 3, 4
    peaks["peak_yx"] = np.array([[30.0, 45.0]], np.float32)
    _, sel, _ = run_scene(peaks, method="wise", point="peak")
    assert sel.proposal[0] == 4


def test_nms_merges_two_peaks_on_one_object():
    peaks = scene_peaks(2)
    inp, sel, ref = run_scene(peaks)
    assert sel.proposal.tolist() == [0, 0]
    assert len(sel.kept) == 1
    keeper = sel.kept[0]
    assert sel.merged_into[1 - keeper] == keeper and sel.merged_into[keeper] == -1
    assert ref.kept.tolist() == sel.kept.tolist()
    assert ref.merged_into.tolist() == sel.merged_into.tolist()
    # Without NMS both instances stay.
    _, sel2, _ = run_scene(peaks, nms_iou=None)
    assert sorted(sel2.kept.tolist()) == [0, 1]
    # A peak of another class on the same object survives class-aware NMS only.
    peaks["peak_class"] = np.array([1, 2], np.int16)
    peaks["map_classes"] = np.array([1, 2], np.int16)
    peaks["class_maps"] = np.concatenate([peaks["class_maps"]] * 2)
    _, sel3, _ = run_scene(peaks, nms_class_agnostic=False)
    assert sorted(sel3.kept.tolist()) == [0, 1]
    _, sel4, _ = run_scene(peaks)
    assert len(sel4.kept) == 1


def test_merged_response_raises_confidence():
    # Peak 0: 60% of its response on the object, 40% on a ring just below it (the object's outer
    # contour band, so the object still scores best). Peak 1: all inside the object.
    # Peak 0 wins NMS and peak 1's response is merged in: the inside share goes 0.6 -> 0.8.
    ring = box(26, 28, 15, 35)
    r0 = 0.6 * OBJECT / OBJECT.sum() + 0.4 * ring / ring.sum()
    r1 = box(20, 24, 30, 33)  # inside the object, clear of its contour band and the part
    peaks = peaks_entry([r0, r1], [1, 1], [2.0, 1.0], [np.where(OBJECT, 3.0, -1.0)], [1])
    _, alone, _ = run_scene(peaks, nms_iou=None)
    _, merged, ref = run_scene(peaks)
    assert alone.proposal.tolist() == [0, 0] and merged.kept.tolist() == [0]
    sig = 1 / (1 + np.exp(-2.0))
    assert alone.confidence[alone.kept.tolist().index(0)] == pytest.approx(sig * 0.6, rel=2e-3)
    assert merged.confidence[0] == pytest.approx(sig * 0.8, rel=2e-3)
    np.testing.assert_allclose(merged.confidence, ref.confidence, rtol=1e-4)


def _random_blobs(rng, n, shape):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    cy, cx = rng.uniform(0, shape[0], n), rng.uniform(0, shape[1], n)
    ry, rx = rng.uniform(2, shape[0] / 2, n), rng.uniform(2, shape[1] / 2, n)
    return ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2 + \
        ((xx - cx[:, None, None]) / rx[:, None, None]) ** 2 < 1


@pytest.mark.parametrize("method,extra", [("prm", {}), ("wise", {}),
                                          ("prm", {"nms_class_agnostic": False, "b": 1e-3}),
                                          ("wise", {"point": "peak", "nms_iou": 0.5})])
def test_vectorised_equals_loop_on_random_inputs(method, extra):
    rng = np.random.default_rng(7)
    h, w, mh, mw = 75, 100, 24, 32
    for trial in range(2):
        n_props, n_peaks = 60, 7
        props = _random_blobs(rng, n_props, (h, w))
        # Smooth random responses and class maps at map resolution.
        resp = rng.random((n_peaks, mh, mw)) * (_random_blobs(rng, n_peaks, (mh, mw)) + 0.05)
        # Several peaks share a blob so that NMS has duplicates to merge.
        resp[1] = resp[0] * rng.uniform(0.5, 1.5, (mh, mw))
        peaks = peaks_entry(resp, rng.integers(0, 3, n_peaks), rng.normal(0, 2, n_peaks),
                            rng.normal(0, 1, (3, mh, mw)), [0, 1, 2],
                            peak_yx=rng.uniform(0, [h - 1, w - 1], (n_peaks, 2)))
        o = opts(method=method, working_size=64, top_proposals=50, **extra)
        counts = mask_rle.encode(props)
        inp = prepare_image(peaks, counts, rng.random(n_props).astype(np.float32), h, w, o)
        a, b = select(inp, o), select_reference_loop(inp, o)
        assert a.proposal.tolist() == b.proposal.tolist(), trial
        ok = b.proposal >= 0
        np.testing.assert_allclose(a.score[ok], b.score[ok], rtol=1e-4, atol=1e-6)
        assert a.kept.tolist() == b.kept.tolist()
        assert a.merged_into.tolist() == b.merged_into.tolist()
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-4, atol=1e-7)
        assert len(a.kept) > 0


def test_working_resolution_and_contour():
    assert working_shape(375, 500, 128) == (96, 128)
    assert working_shape(40, 60, 128) == (40, 60)  # never upsampled
    assert contour_size(5, 40, 40) == 5 and contour_size(5, 375, 96) == 3
    assert contour_size(11, 100, 100) == 11 and contour_size(10, 100, 50) == 5
    import torch
    stack = torch.from_numpy(np.stack([box(5, 15, 5, 15, (20, 20)), box(0, 20, 0, 20, (20, 20))]))
    grad = morphological_gradient(stack, 5).numpy()
    assert grad[0].sum() == 14 * 14 - 6 * 6  # 2 px outside + 2 px inside the box edge
    assert grad[1].sum() == 0  # the image border is no contour


def test_peak_without_class_map_is_an_input_error():
    peaks = scene_peaks(1)
    peaks["map_classes"] = np.array([0], np.int16)
    with pytest.raises(InputError, match="no stored class map"):
        run_scene(peaks)


def test_no_peaks_gives_an_empty_image():
    peaks = peaks_entry(np.zeros((0, 8, 12)), [], [], np.zeros((0, 8, 12)), [])
    arrays, attrs, _ = retrieve_image(peaks, {"masks": [], "scores": np.zeros(0)}, H, W, opts())
    assert attrs["retrieval_status"] == "no_peaks" and arrays["masks"] == []
    # peaks but no proposal at all, or only a peak whose response map is empty
    for method in ("prm", "wise"):
        arrays, attrs, _ = retrieve_image(scene_peaks(2), {"masks": [], "scores": np.zeros(0)},
                                          H, W, opts(method=method))
        assert attrs["retrieval_status"] == "no_proposal" and arrays["boxes"].shape == (0, 4)
        peaks = scene_peaks(1)
        peaks["response_maps"][:] = 0
        props = {"masks": mask_rle.encode(np.stack(PROPOSALS)), "scores": np.array(OBJECTNESS)}
        arrays, attrs, _ = retrieve_image(peaks, props, H, W, opts(method=method))
        assert attrs["retrieval_status"] == "no_proposal" and attrs["peaks_without_proposal"] == 1


def _write_inputs(tmp_path):
    manifest_path = build_manifest(tmp_path, n_images=5, size=(W, H))
    m = read_manifest(manifest_path)
    peaks = scene_peaks(2)
    props = np.stack(PROPOSALS)
    with StoreWriter(tmp_path / "peaks.h5", "peaks", m.classes, attrs={"map_size": 60}) as pw, \
            StoreWriter(tmp_path / "props.h5", "proposals", m.classes) as qw:
        for i, rec in enumerate(m.images[:4]):  # the last image is not in the peaks store
            entry = peaks if i != 2 else peaks_entry(np.zeros((0, 40, 60)), [], [],
                                                     np.zeros((0, 40, 60)), [])
            pw.add(rec.id, H, W, entry, {"num_peaks": len(entry["peak_class"])})
        for rec in m.images[:3] + m.images[4:]:  # img3 has no proposals
            qw.add(rec.id, H, W, {"masks": mask_rle.encode(props),
                                  "scores": np.asarray(OBJECTNESS, np.float32)})
    return manifest_path


def test_retrieve_command_writes_shards_that_gather(tmp_path):
    manifest_path = _write_inputs(tmp_path)
    cfg = json.dumps({"working_size": 64, "method": "prm", "panel_images": 1})
    shards = []
    for shard in range(2):
        out = tmp_path / f"shards/{shard}.h5"
        panels = ["--panels", str(tmp_path / "panels")] if shard == 0 else []
        assert main(["pseudo_masks", "make", "--method", "retrieval",
                     "--input", f"peaks={tmp_path / 'peaks.h5'}",
                     f"proposals={tmp_path / 'props.h5'}", "--manifest", str(manifest_path),
                     "--config", cfg, "--shard", str(shard), "--num-shards", "2",
                     "--out", str(out)] + panels) == 0
        shards.append(out)
    pictures = list((tmp_path / "panels").iterdir())
    assert [p.name for p in pictures] == ["img0.png"]
    from PIL import Image
    with Image.open(pictures[0]) as im:  # the pseudo masks + one tile per peak (2)
        assert im.width >= 3 * 128
    # the shards cut the 3 images both stores hold, not the manifest's 5
    for path, ids in zip(shards, (["img0", "img1"], ["img2"])):
        with StoreReader(path, "pseudo_masks") as r:
            assert r.image_ids == ids
    gather(shards, tmp_path / "pseudo.h5")
    with StoreReader(tmp_path / "pseudo.h5", "pseudo_masks") as r:
        assert r.attrs["method"] == "prm"
        assert r.attrs["count_images_with_masks"] == 2  # summed over the two shards
        assert r.attrs["count_images_without_peaks"] == 1
        assert r.attrs["count_images_not_in_peaks"] == 1
        assert r.attrs["count_images_not_in_proposals"] == 1
        assert r.attrs["count_instances"] == 2 and r.attrs["count_peaks_merged"] == 2
        # img3 has no proposals, img4 no peaks entry: both left out (and logged)
        assert sorted(r.image_ids) == ["img0", "img1", "img2"]
        e = r.read("img0")
        assert e["retrieval_status"] == "ok" and e["num_peaks"] == 2 and e["peaks_merged"] == 1
        np.testing.assert_array_equal(mask_rle.decode(e["masks"], H, W)[0], OBJECT)
        assert e["labels"].dtype == np.int16 and e["labels"].tolist() == [1]
        assert e["scores"].dtype == np.float32 and 0 < e["scores"][0] <= 1
        np.testing.assert_array_equal(e["boxes"], [[15, 10, 35, 26]])
        assert e["peak_index"].dtype == np.int32 and e["peak_yx"].shape == (1, 2)
        empty = r.read("img2")
        assert empty["retrieval_status"] == "no_peaks" and empty["masks"] == []
        assert empty["boxes"].shape == (0, 4)


def test_retrieve_refuses_mismatched_classes(tmp_path):
    manifest_path = _write_inputs(tmp_path)
    with StoreWriter(tmp_path / "other.h5", "proposals", ["x", "y", "z"]):
        pass
    with pytest.raises(InputError, match="differ from the manifest"):
        make_shard({"peaks": tmp_path / "peaks.h5", "proposals": tmp_path / "other.h5"},
                   manifest_path, opts(), 0, 1, tmp_path / "out.h5")


# Method consensus. One object made of two halves (as the synthetic objects' two-tone textures
# are); proposals: the left half (highest objectness), the right half, the whole object, the
# object with the background around it, a background box, and two near copies of the object
# (hierarchical grouping makes such: a region with or without a strip of its neighbour).
LEFT, RIGHT = box(10, 26, 15, 25), box(10, 26, 25, 35)
AROUND = box(4, 32, 8, 42)
PARTS = [LEFT, RIGHT, OBJECT, AROUND, box(28, 38, 40, 55), box(10, 27, 15, 35),
         box(11, 26, 15, 35)]
PART_OBJECTNESS = [0.9, 0.8, 0.7, 0.75, 0.95, 0.7, 0.7]


def expected_iou(j, covering, power=4):
    """Objectness-weighted mean IoU of proposal j with the covering proposals (by hand)."""
    w = np.asarray(PART_OBJECTNESS)[covering] ** power
    iou = [(PARTS[j] & PARTS[k]).sum() / (PARTS[j] | PARTS[k]).sum() for k in covering]
    return float(w @ iou / w.sum())


def consensus_scene(peak_yx, class_map=None, **kw):
    class_map = np.where(OBJECT, 3.0, -1.0) if class_map is None else class_map
    n = len(peak_yx)
    peaks = peaks_entry([OBJECT.astype(float)] * n, [1] * n, [2.0] * n, [class_map], [1],
                        peak_yx=peak_yx)
    props = {"masks": mask_rle.encode(np.stack(PARTS)),
             "scores": np.asarray(PART_OBJECTNESS, np.float32)}
    o = opts(**{"method": "consensus", "working_size": 64, "point": "peak", **kw})
    inp = prepare_image(peaks, props["masks"], props["scores"], H, W, o)
    return inp, select(inp, o)


def test_consensus_takes_the_whole_object_where_wise_takes_a_part():
    inp, sel = consensus_scene([(18, 20)], grid_step=0)  # a peak on the left half
    covering = [0, 2, 3, 5, 6]
    by_hand = {j: expected_iou(j, covering) for j in covering}
    assert max(by_hand, key=by_hand.get) == 2
    assert sel.proposal.tolist() == [2]  # the whole object
    assert sel.kept.tolist() == [0]
    _, wise = consensus_scene([(18, 20)], grid_step=0, method="wise", point="peak")
    assert wise.proposal.tolist() == [0]  # the most objectness-like part
    # confidence = expected IoU x mean evidence inside (the object: all of it evidence 1)
    np.testing.assert_allclose(sel.confidence, [by_hand[2]], rtol=1e-3)


def test_consensus_power_zero_and_large_bracket_the_choice():
    # objectness ** 0: every covering proposal counts alike -> still the whole object;
    # a very large power: the weights are WISE's single best -> its part wins the expectation
    assert consensus_scene([(18, 20)], grid_step=0, power=0)[1].proposal.tolist() == [2]
    assert consensus_scene([(18, 20)], grid_step=0,
                           power=200)[1].proposal.tolist() == [0]


def test_consensus_grid_finds_an_object_without_a_peak_and_keeps_one_per_object():
    # two objects of one class, a peak on the first only: the grid points on the second
    # (class map >= grid_threshold of its max) give it a mask; the many grid points on each
    # object collapse to one instance per object
    second = box(28, 38, 40, 55)
    class_map = np.where(OBJECT | second, 3.0, -1.0)
    inp, sel = consensus_scene([(18, 20)], class_map=class_map, grid_step=2)
    assert len(inp.point_class) > 10 and (inp.point_class == 1).all()
    chosen = sorted(sel.proposal[sel.kept].tolist())
    assert chosen == [2, 4]
    # the peak chose the object too; it is kept or merged into the grid point that is
    assert sel.proposal[0] == 2 and (0 in sel.kept or sel.merged_into[0] in sel.kept)


def test_consensus_background_proposal_scores_low():
    # a point where only the background box covers: its instance has no class evidence
    class_map = np.where(OBJECT, 3.0, -1.0)
    inp, sel = consensus_scene([(18, 20), (33, 50)], class_map=class_map, grid_step=0)
    assert sel.proposal.tolist() == [2, 4]
    conf = dict(zip(sel.kept.tolist(), sel.confidence.tolist()))
    assert conf[0] > 0.5 and conf.get(1, 0.0) == 0.0
    _, sel = consensus_scene([(18, 20), (33, 50)], class_map=class_map, grid_step=0,
                             min_score=0.01)
    assert sel.kept.tolist() == [0]


def test_consensus_point_that_no_proposal_covers_gets_none():
    # a peak in the image corner, outside every proposal (scale_run met an image where no
    # proposal covered any point): no choice, no instance, no crash
    inp, sel = consensus_scene([(1, 1)], grid_step=0)
    assert not inp.covers.any()
    assert sel.proposal.tolist() == [-1] and len(sel.kept) == 0
