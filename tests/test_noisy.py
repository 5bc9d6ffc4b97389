"""Mask R-CNN with instance weights and ignore regions (tag2mask.maskrcnn.noisy), on constructed
inputs: weight 1 is torchvision's loss to the bit, weight 0 is leaving the instance out, an
ignore region is never sampled as background, and a weight scales what its samples add."""

import copy

import numpy as np
import pytest
import torch
import torchvision
from test_maskrcnn import tiny_options

from tag2mask.maskrcnn.model import build_model
from tag2mask.maskrcnn.noisy import NoisyRoIHeads, NoisyRPN


def scene(n=2, size=64, seed=0):
    """Images [3, 64, 64] with two square objects each and their targets."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n):
        img = torch.from_numpy(rng.random((3, size, size)).astype(np.float32))
        boxes = torch.tensor([[8.0, 8.0, 30.0, 30.0], [34.0, 30.0, 60.0, 58.0]])
        masks = torch.zeros((2, size, size), dtype=torch.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[k, y0:y1, x0:x1] = 1
            img[:, y0:y1, x0:x1] += 0.5 * (k + 1)
        images.append(img)
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


def losses(model, images, targets, seed=0):
    torch.manual_seed(seed)
    model.train()
    return {k: v.detach() for k, v in model(images, copy.deepcopy(targets)).items()}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    noisy = build_model(tiny_options(), 2)
    plain = copy.deepcopy(noisy)
    plain.rpn.__class__ = torchvision.models.detection.rpn.RegionProposalNetwork
    plain.roi_heads.__class__ = torchvision.models.detection.roi_heads.RoIHeads
    assert isinstance(noisy.rpn, NoisyRPN) and isinstance(noisy.roi_heads, NoisyRoIHeads)
    return noisy, plain


def with_weights(targets, *weights):
    return [{**t, "weights": torch.tensor(w, dtype=torch.float32)}
            for t, w in zip(targets, weights)]


def test_weight_one_is_torchvisions_loss_bit_for_bit(models):
    noisy, plain = models
    images, targets = scene()
    expected = losses(plain, images, targets)
    for given in (targets, with_weights(targets, [1, 1], [1, 1])):
        got = losses(noisy, images, given)
        assert got.keys() == expected.keys()
        for k in expected:
            assert torch.equal(got[k], expected[k]), k


def test_weight_zero_is_leaving_the_instance_out(models):
    noisy, plain = models
    images, targets = scene()
    left_out = [targets[0], {k: v[:1] for k, v in targets[1].items()}]
    expected = losses(plain, images, left_out)
    got = losses(noisy, images, with_weights(targets, [1, 1], [1, 0]))
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def test_a_weight_scales_what_its_samples_add(models):
    noisy, _ = models
    images, targets = scene(n=1)
    one = [{k: v[:1] for k, v in targets[0].items()}]  # a single instance
    full = losses(noisy, images, with_weights(one, [1.0]))
    half = losses(noisy, images, with_weights(one, [0.5]))
    # the same samples (same seed); every positive is matched to the one instance
    assert torch.allclose(half["loss_mask"], 0.5 * full["loss_mask"], rtol=1e-5)
    assert torch.allclose(half["loss_box_reg"], 0.5 * full["loss_box_reg"], rtol=1e-5)
    assert torch.allclose(half["loss_rpn_box_reg"], 0.5 * full["loss_rpn_box_reg"], rtol=1e-5)
    assert half["loss_classifier"] < full["loss_classifier"]  # negatives keep weight 1
    assert half["loss_objectness"] < full["loss_objectness"]


def test_an_ignored_box_is_never_sampled_as_background(models):
    noisy, _ = models
    heads, rpn = noisy.roi_heads, noisy.rpn
    gt = torch.tensor([[8.0, 8.0, 30.0, 30.0]])
    ignore = torch.tensor([[34.0, 30.0, 60.0, 58.0]])
    proposals = torch.tensor([[34.0, 30.0, 60.0, 58.0],   # the ignore region itself
                              [36.0, 32.0, 60.0, 58.0],   # IoU 0.85 with it
                              [40.0, 40.0, 64.0, 64.0],   # IoU 0.37: background as ever
                              [0.0, 40.0, 20.0, 60.0]])   # far from everything
    heads._ignore = [ignore]
    try:
        _, labels = heads.assign_targets_to_proposals([proposals], [gt], [torch.tensor([1])])
    finally:
        heads._ignore = None
    assert labels[0].tolist() == [-1, -1, 0, 0]
    for seed in range(20):  # the sampler draws among labels 0 (background) and > 0 only
        torch.manual_seed(seed)
        pos, neg = heads.fg_bg_sampler(labels)
        assert not neg[0][:2].any() and not pos[0][:2].any()

    # the RPN: anchors over the ignore region (IoU >= 0.3) are not negatives either
    anchors = torch.tensor([[8.0, 8.0, 30.0, 30.0], [34.0, 30.0, 60.0, 58.0],
                            [30.0, 26.0, 56.0, 54.0], [0.0, 40.0, 20.0, 60.0]])
    rpn._ignore = [ignore]
    try:
        labels, _ = rpn.assign_targets_to_anchors(
            [anchors], [{"boxes": gt, "weights": torch.ones(1)}])
    finally:
        rpn._ignore = rpn._weights = None
    assert labels[0].tolist() == [1.0, -1.0, -1.0, 0.0]


def test_ignore_regions_train_no_mask_and_change_the_losses(models):
    noisy, plain = models
    images, targets = scene()
    ignored = losses(noisy, images, with_weights(targets, [1, -1], [1, -1]))
    left_out = losses(plain, images, [{k: v[:1] for k, v in t.items()} for t in targets])
    # the object ignored is not taught as background: fewer negatives near it, other losses
    assert set(ignored) == set(left_out)
    assert not torch.equal(ignored["loss_classifier"], left_out["loss_classifier"])
    assert torch.isfinite(torch.stack(list(ignored.values()))).all()
