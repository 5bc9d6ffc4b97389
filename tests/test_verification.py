"""Verification: the classifier's views of each pseudo mask, and the rescored store."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tag2mask.core.errors import InputError
from tag2mask.core.masks import encode
from tag2mask.core.store import StoreReader, StoreWriter
from tag2mask.dataset.manifest import Manifest, make_record, write_manifest
from tag2mask.verification.rescore import (
    combined_scores,
    mask_views,
    rescore_store,
    verification_scores,
)

OPTIONS = {"margin": 0.15, "input_size": 32, "batch_size": 2, "skip_below": 0.0}


class RedDetector(nn.Module):
    """Class 0 "red": logit map 10 x (red - blue) per pixel, its score the map's maximum (a
    peak); class 1 "blue" the opposite."""

    def forward(self, x):
        red_minus_blue = x[:, 0] - x[:, 2]
        return 10 * torch.stack([red_minus_blue, -red_minus_blue], dim=1)

    def scores(self, maps, upsample=1):
        return maps.float().amax(dim=(2, 3))


def red_square_image():
    """64x64, blue with a red square at rows/cols 20-39; masks: the square, a blue patch."""
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 2] = 255
    rgb[20:40, 20:40] = (255, 0, 0)
    square = np.zeros((64, 64), bool)
    square[20:40, 20:40] = True
    patch = np.zeros((64, 64), bool)
    patch[0:10, 45:60] = True
    return rgb, square, patch


def test_mask_views_crop_the_box_with_margin_and_blank_outside_the_mask():
    rgb, square, _ = red_square_image()
    views = mask_views(rgb, square, 26, margin=0.15, fill=[0.5, 0.5, 0.5])
    assert views.shape == (2, 3, 26, 26)
    crop, masked = views
    # the box (20 px) widened by 3 px a side: 26 px, so no resampling: red inside, blue around
    assert torch.allclose(crop[:, 3:23, 3:23], torch.tensor([1.0, 0, 0]).view(3, 1, 1))
    assert torch.allclose(crop[:, 0, :], torch.tensor([0, 0, 1.0]).view(3, 1))
    # the masked view keeps the whole image: outside the square is the fill, not blue
    corner = masked[:, 0, 0]
    assert torch.allclose(corner, torch.tensor([0.5, 0.5, 0.5]))


def test_the_classifier_lowers_a_background_mask_below_the_object():
    rgb, square, patch = red_square_image()
    model = RedDetector()
    masks = np.stack([square, patch, np.zeros_like(square)])
    verification = verification_scores(model, rgb, masks, np.array([0, 0, 0]), 32,
                                       batch_size=2)
    assert verification[0] > 0.99 and verification[1] < 0.01  # the square is red, the patch not
    assert verification[2] == 0  # an empty mask shows the classifier nothing
    # the background patch came with the higher confidence; verified, the square ranks first
    scores = combined_scores(np.array([0.4, 0.6, 0.9], np.float32), verification)
    assert scores[0] > scores[1] and scores[2] == 0
    assert scores[0] == pytest.approx(np.sqrt(0.4 * verification[0]))
    # the same patch is the "blue" class's object: verified as such
    blue = verification_scores(model, rgb, patch[None], np.array([1]), 32)
    assert blue[0] > 0.99


def write_case(folder):
    """A manifest of the red-square image and a pseudo-mask store of its two masks."""
    rgb, square, patch = red_square_image()
    path = folder / "img.png"
    Image.fromarray(rgb).save(path)
    classes = ["red", "blue"]
    manifest = Manifest("test", classes, [make_record("img", path, 64, 64, "train", ["red"],
                                                      classes)])
    write_manifest(folder / "manifest.json", manifest)
    store = folder / "unverified.h5"
    with StoreWriter(store, "pseudo_masks", classes, config_digest="abc",
                     attrs={"method": "consensus"}) as w:
        w.add("img", 64, 64, {"masks": encode(np.stack([square, patch])),
                              "labels": np.array([0, 0]),
                              "scores": np.array([0.4, 0.6], np.float32),
                              "peak_yx": np.array([[30, 30], [5, 50]])},
              {"num_peaks": 2})
    return manifest, store


def test_rescore_store_replaces_scores_and_keeps_everything_else(tmp_path):
    manifest, store = write_case(tmp_path)
    out = tmp_path / "verified.h5"
    counts = rescore_store(store, manifest, RedDetector(), OPTIONS, out, progress=False)
    assert list(counts) == [2, 1, 1, 0]  # the patch fell, the square rose
    with StoreReader(out, "pseudo_masks") as r, StoreReader(store, "pseudo_masks") as before:
        assert r.attrs["method"] == "consensus" and r.attrs["config_digest"] == "abc"
        assert r.attrs["count_verified_masks_lowered"] == 1
        new, old = r.read("img"), before.read("img")
        assert new["num_peaks"] == 2 and new["masks"] == old["masks"]
        assert np.array_equal(new["peak_yx"], old["peak_yx"])
        assert np.array_equal(new["unverified_scores"], old["scores"])
        assert np.allclose(new["scores"], np.sqrt(old["scores"] * new["verification_scores"]))
        assert new["scores"][0] > new["scores"][1]


def test_a_damaged_verified_store_names_the_verify_rule(tmp_path):
    from tag2mask.core.store import writer_of

    manifest, store = write_case(tmp_path)
    out = tmp_path / "verified.h5"
    rescore_store(store, manifest, RedDetector(), OPTIONS, out, progress=False)
    with StoreReader(out, "pseudo_masks") as r, StoreReader(store, "pseudo_masks") as before:
        assert writer_of("pseudo_masks", r.attrs) == ("verify", "verification rescore")
        assert writer_of("pseudo_masks", before.attrs) == ("make_pseudo_masks",
                                                           "pseudo_masks make")


def test_masks_below_skip_below_keep_their_score_unseen(tmp_path):
    manifest, store = write_case(tmp_path)  # scores 0.4 (the square), 0.6 (the patch)
    out = tmp_path / "verified.h5"
    counts = rescore_store(store, manifest, RedDetector(), {**OPTIONS, "skip_below": 0.5}, out,
                           progress=False)
    assert list(counts) == [2, 1, 0, 1]  # the patch shown and lowered, the square not shown
    with StoreReader(out, "pseudo_masks") as r:
        entry = r.read("img")
    assert entry["scores"][0] == np.float32(0.4) and np.isnan(entry["verification_scores"][0])
    assert entry["scores"][1] < 0.1 and entry["verification_scores"][1] < 0.01


def test_rescore_store_names_an_image_of_the_wrong_size(tmp_path):
    manifest, store = write_case(tmp_path)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(manifest.images[0].path)
    with pytest.raises(InputError, match="img.png.*30x30, the store says 64x64"):
        rescore_store(store, manifest, RedDetector(), OPTIONS, tmp_path / "out.h5",
                      progress=False)
    assert not (tmp_path / "out.h5").exists()


def test_report_shows_what_verification_did(tmp_path):
    from tag2mask.report.page import VERIFICATION_MEDIAN, stage_rows
    from tag2mask.report.readers import Part, ReportInputs

    manifest, store = write_case(tmp_path)
    out = tmp_path / "verified.h5"
    rescore_store(store, manifest, RedDetector(), OPTIONS, out, progress=False)
    rows = {(stage, measure): value for stage, measure, value, _ in stage_rows(
        ReportInputs(manifest=tmp_path / "manifest.json", pseudo_masks=Part(out)))}
    assert rows[("Verification", "share of masks whose confidence it lowered")] == "0.500"
    verification = float(rows[("Verification", VERIFICATION_MEDIAN)])
    assert 0.45 < verification < 0.55  # the median of about 1 (the square) and 0 (the patch)
    # an unverified store: the rows say why they are empty
    rows = {(stage, measure): (value, why) for stage, measure, value, why in stage_rows(
        ReportInputs(manifest=tmp_path / "manifest.json", pseudo_masks=Part(store)))}
    assert rows[("Verification", "share of masks whose confidence it lowered")] == \
        (None, "verification is off (config verification.enabled)")
