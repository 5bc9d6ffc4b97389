"""Mask R-CNN that learns from noisy pseudo masks: per-instance loss weights and ignore regions.

A training target may carry `weights` (float [N], one per instance) beside its boxes, labels
and masks:
- w = 1: an ordinary instance (all weights 1 and no ignore region: torchvision's losses,
  unchanged to the bit);
- 0 < w < 1: an instance the model is less sure of: the losses of the anchors and proposals
  matched to it (RPN objectness and box, box head class and box, mask) count w times;
- w = 0: left out, exactly as if it were not in the target;
- w < 0: an ignore region (a mask below the confidence cut, a duplicate): neither object nor
  background. An anchor or a proposal that would be sampled as background although it
  overlaps the region more than background may (IoU >= the RPN's background threshold, 0.3,
  for anchors; >= the box head's, 0.5, for proposals) is not sampled at all, so the region
  teaches neither "object" nor "background"; it trains no mask.

The weighted losses keep torchvision's normalisation (the number of sampled anchors or
proposals, the number of positive proposals for the mask loss), so weights only scale what
each sample contributes. tag2mask.maskrcnn.model builds the model with these heads;
tag2mask.maskrcnn.model.PseudoMaskDataset fills `weights` from the training options.
"""

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_loss,
    project_masks_on_boxes,
)
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops


def is_plain(targets):
    """Whether targets need nothing of this module (no weights other than 1)."""
    return targets is None or all("weights" not in t or bool((t["weights"] == 1).all())
                                  for t in targets)


def split_targets(targets):
    """(the targets of the instances that train, with weight > 0; the ignore boxes of each
    image, weight < 0). Weight-0 instances are in neither: left out."""
    kept, ignore = [], []
    for t in targets:
        w = t.get("weights")
        if w is None:
            kept.append(t)
            ignore.append(t["boxes"][:0])
            continue
        keep = w > 0
        kept.append({k: (v[keep] if torch.is_tensor(v) and v.shape[:1] == w.shape else v)
                     for k, v in t.items()})
        ignore.append(t["boxes"][w < 0])
    return kept, ignore


def ignored(boxes, ignore_boxes, threshold):
    """Bool [len(boxes)]: boxes whose IoU with some ignore box reaches `threshold`."""
    if ignore_boxes.numel() == 0 or boxes.numel() == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    return (box_ops.box_iou(boxes, ignore_boxes) >= threshold).any(1)


class NoisyRPN(RegionProposalNetwork):
    """torchvision's RPN, with instance weights and ignore regions (module docstring)."""

    _ignore = None   # per image: the ignore boxes of the current training step
    _weights = None  # per image: each anchor's loss weight (None: torchvision's loss)

    def forward(self, images, features, targets=None):
        self._ignore = self._weights = None
        if self.training and not is_plain(targets):
            targets, self._ignore = split_targets(targets)
        try:
            return super().forward(images, features, targets)
        finally:
            self._ignore = self._weights = None

    def assign_targets_to_anchors(self, anchors, targets):
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        if self._ignore is None:
            return labels, matched_gt_boxes
        weights, background = [], self.proposal_matcher.low_threshold
        for anchors_i, t, labels_i, ignore_i in zip(anchors, targets, labels, self._ignore):
            weight = torch.ones_like(labels_i)
            if t["boxes"].numel():
                matched = self.proposal_matcher(self.box_similarity(t["boxes"], anchors_i))
                weight[matched >= 0] = t["weights"][matched[matched >= 0]].to(weight.dtype)
            labels_i[(labels_i == 0) & ignored(anchors_i, ignore_i, background)] = -1.0
            weights.append(weight)
        if not all(bool((w == 1).all()) for w in weights):
            self._weights = weights
        return labels, matched_gt_boxes

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        if self._weights is None:
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        sampled_pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        sampled_neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([sampled_pos, sampled_neg], dim=0)
        weights = torch.cat(self._weights, dim=0)
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        box = F.smooth_l1_loss(pred_bbox_deltas[sampled_pos], regression_targets[sampled_pos],
                               beta=1 / 9, reduction="none").sum(1)
        box_loss = (box * weights[sampled_pos]).sum() / sampled.numel()
        objectness = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], labels[sampled], reduction="none")
        return (objectness * weights[sampled]).sum() / sampled.numel(), box_loss


class NoisyRoIHeads(RoIHeads):
    """torchvision's box and mask heads, with instance weights and ignore regions (module
    docstring). Keypoints are not supported."""

    _ignore = None  # per image: the ignore boxes of the current training step

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training or is_plain(targets):
            return super().forward(features, proposals, image_shapes, targets)
        targets, self._ignore = split_targets(targets)
        try:
            proposals, matched_idxs, labels, regression_targets = \
                self.select_training_samples(proposals, targets)
        finally:
            self._ignore = None
        weights = []
        for t, props, idxs, labels_i in zip(targets, proposals, matched_idxs, labels):
            w = torch.ones(len(props), dtype=torch.float32, device=props.device)
            positive = labels_i > 0
            if t["boxes"].numel():
                w[positive] = t["weights"][idxs[positive]].to(w.dtype)
            weights.append(w)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        losses = dict(zip(("loss_classifier", "loss_box_reg"), weighted_fastrcnn_loss(
            class_logits, box_regression, labels, regression_targets, weights)))
        if self.has_mask():
            positives = [torch.where(lab > 0)[0] for lab in labels]
            mask_proposals = [p[pos] for p, pos in zip(proposals, positives)]
            mask_logits = self.mask_predictor(self.mask_head(
                self.mask_roi_pool(features, mask_proposals, image_shapes)))
            losses["loss_mask"] = weighted_maskrcnn_loss(
                mask_logits, mask_proposals, [t["masks"] for t in targets],
                [t["labels"] for t in targets],
                [idxs[pos] for idxs, pos in zip(matched_idxs, positives)],
                [w[pos] for w, pos in zip(weights, positives)])
        return [], losses

    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):
        matched_idxs, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        if self._ignore is not None:
            background = self.proposal_matcher.low_threshold
            for props, labels_i, ignore_i in zip(proposals, labels, self._ignore):
                labels_i[(labels_i == 0) & ignored(props, ignore_i, background)] = -1
        return matched_idxs, labels


def weighted_fastrcnn_loss(class_logits, box_regression, labels, regression_targets, weights):
    """torchvision's fastrcnn_loss with each sampled proposal's loss times its weight."""
    if all(bool((w == 1).all()) for w in weights):
        return fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
    labels = torch.cat(labels, dim=0)
    weights = torch.cat(weights, dim=0)
    regression_targets = torch.cat(regression_targets, dim=0)
    classification = F.cross_entropy(class_logits, labels, reduction="none")
    classification_loss = (classification * weights).sum() / labels.numel()
    positive = torch.where(labels > 0)[0]
    box_regression = box_regression.reshape(len(labels), box_regression.size(-1) // 4, 4)
    box = F.smooth_l1_loss(box_regression[positive, labels[positive]],
                           regression_targets[positive], beta=1 / 9, reduction="none").sum(1)
    return classification_loss, (box * weights[positive]).sum() / labels.numel()


def weighted_maskrcnn_loss(mask_logits, proposals, gt_masks, gt_labels, matched_idxs, weights):
    """torchvision's maskrcnn_loss with each positive proposal's mean loss times its weight
    (and divided by the number of positive proposals, as the unweighted mean is)."""
    if all(bool((w == 1).all()) for w in weights):
        return maskrcnn_loss(mask_logits, proposals, gt_masks, gt_labels, matched_idxs)
    size = mask_logits.shape[-1]
    labels = torch.cat([lab[idxs] for lab, idxs in zip(gt_labels, matched_idxs)], dim=0)
    targets = torch.cat([project_masks_on_boxes(m, p, i, size)
                         for m, p, i in zip(gt_masks, proposals, matched_idxs)], dim=0)
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    per_pixel = F.binary_cross_entropy_with_logits(
        mask_logits[torch.arange(len(labels), device=labels.device), labels], targets,
        reduction="none")
    return (per_pixel.flatten(1).mean(1) * torch.cat(weights)).sum() / len(labels)
