"""Mask R-CNN for tag2mask: model building, the training Dataset over a pseudo-mask store, and
checkpoint loading.

The model is torchvision's Mask R-CNN with one of these backbones, each through an FPN:

    resnet50_fpn       ResNet-50 as in WISE; ImageNet weights from `pretrained_path` or the
                       torchvision download (never COCO-trained Mask R-CNN weights: those were
                       trained on COCO masks, which a label-free method must not see)
    resnet18_fpn       lighter ResNet for CPU, same weight sources
    efficientnet_lite0 timm features_only, ImageNet weights loaded offline
                       (tag2mask.classifier.backbones)
    tiny               a small from-scratch conv net for the demo and tests

The Dataset reads images through the manifest and instances from a `pseudo_masks` store
(docs/formats.md) directly. It never reads ground truth; a store of the same kind built from
ground truth (an upper-bound run) trains the same way.
"""

import functools
import json
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..core import masks as rle
from ..core.errors import InputError, rerun
from ..core.store import StoreReader
from ..core.torchfiles import load_torch_file, load_url_state_dict
from ..dataset.images import load_rgb
from .noisy import NoisyRoIHeads, NoisyRPN

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "tag2mask-maskrcnn"
CHECKPOINT_VERSION = 1
BACKBONES = ("resnet50_fpn", "resnet18_fpn", "efficientnet_lite0", "tiny")
EMPTY_POLICIES = ("skip", "negative")


# --------------------------------------------------------------------------- backbones

class FeaturesWithFPN(nn.Module):
    """A body returning a list of 4 feature maps (strides 4..32) followed by an FPN.

    Output keys '0'..'3' plus 'pool', as torchvision's detection heads expect."""

    def __init__(self, body, in_channels_list, out_channels):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x):
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def _conv(cin, cout, stride):
    # GroupNorm: independent of batch size, which is 1-8 images here
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                         nn.GroupNorm(8, cout), nn.ReLU(inplace=True))


class TinyBody(nn.Module):
    """A small from-scratch conv net with outputs at strides 4, 8, 16, 32."""

    channels = (32, 48, 64, 96)

    def __init__(self):
        super().__init__()
        c = self.channels
        self.stem = nn.Sequential(_conv(3, 16, 2), _conv(16, c[0], 2), _conv(c[0], c[0], 1))
        self.stages = nn.ModuleList(
            nn.Sequential(_conv(c[i - 1], c[i], 2), _conv(c[i], c[i], 1)) for i in range(1, 4))

    def forward(self, x):
        x = self.stem(x)
        feats = [x]
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class TimmBody(nn.Module):
    """A timm features_only model as a body (returns its list of feature maps)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def _imagenet_state_dict(name, options):
    """ImageNet weights of a torchvision ResNet: the local file if given, else the download."""
    path = options.get("pretrained_path")
    if path:
        state = load_torch_file(path, "pretrained weights file")
        return state.get("state_dict", state) if isinstance(state, dict) else state
    weights = {"resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
               "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1}[name]
    log.info("ImageNet weights for %s (torchvision %s)", name, weights)
    return load_url_state_dict(weights.url, f"ImageNet weights of {name}")


def _resnet_fpn(name, options, load_weights):
    # Pretrained: BatchNorm frozen (batches of 1-2 images cannot estimate its statistics), as
    # torchvision and WISE do; from scratch: ordinary BatchNorm, every layer trainable.
    pretrained = options["pretrained"]
    norm = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    net = getattr(torchvision.models, name)(weights=None, norm_layer=norm)
    if pretrained and load_weights:
        state = {k: v for k, v in _imagenet_state_dict(name, options).items()
                 if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise InputError(options.get("pretrained_path") or name,
                             f"not {name} ImageNet weights (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    trainable = options["trainable_layers"] if pretrained else 5
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        layers.append("bn1")
    for pname, p in net.named_parameters():
        if not any(pname.startswith(layer) for layer in layers):
            p.requires_grad_(False)
    in_channels = [64, 128, 256, 512] if name == "resnet18" else [256, 512, 1024, 2048]
    return BackboneWithFPN(net, {f"layer{i}": str(i - 1) for i in range(1, 5)}, in_channels,
                           options["fpn_channels"], extra_blocks=LastLevelMaxPool())


def _efficientnet_lite0_fpn(options, load_weights):
    import timm

    from ..classifier.backbones import freeze_early_stages, stages_of_efficientnet_lite

    model = timm.create_model("efficientnet_lite0", features_only=True, out_indices=(1, 2, 3, 4),
                              pretrained=False)
    if options["pretrained"] and load_weights:
        # the classifier stage's loader fills a whole timm efficientnet_lite0; the features
        # model holds the same entries minus the head
        from ..classifier.backbones import (
            efficientnet_lite_package_file,
            load_efficientnet_lite_package,
        )

        full = timm.create_model("efficientnet_lite0", pretrained=False)
        path = (options.get("pretrained_path")
                or efficientnet_lite_package_file("efficientnet_lite0"))
        weights = load_efficientnet_lite_package(full, path, "efficientnet_lite0")
        model.load_state_dict({k: v for k, v in weights.items() if k in model.state_dict()},
                              strict=True)
    if options["pretrained"]:
        model = timm.layers.freeze_batch_norm_2d(model)
        freeze_early_stages(stages_of_efficientnet_lite(model), options["trainable_layers"])
    return FeaturesWithFPN(TimmBody(model), model.feature_info.channels(),
                           options["fpn_channels"])


def build_backbone(options, load_weights=True):
    """The backbone + FPN named by options['backbone']. With options['pretrained'] the
    architecture is the pretrained one (frozen BatchNorm, frozen early layers); its ImageNet
    weights are loaded unless `load_weights` is False (a checkpoint supplies them)."""
    name = options["backbone"]
    if name == "resnet50_fpn":
        return _resnet_fpn("resnet50", options, load_weights)
    if name == "resnet18_fpn":
        return _resnet_fpn("resnet18", options, load_weights)
    if name == "efficientnet_lite0":
        return _efficientnet_lite0_fpn(options, load_weights)
    if name == "tiny":  # always from scratch: there are no weights for it
        return FeaturesWithFPN(TinyBody(), list(TinyBody.channels), options["fpn_channels"])
    raise InputError("maskrcnn.backbone", f"unknown backbone {name!r}; known: {BACKBONES}")


def build_model(options, num_classes, load_weights=True):
    """torchvision Mask R-CNN for `num_classes` object classes (+1 background), from the
    training options; the prediction options are applied by maskrcnn.predict.configure."""
    backbone = build_backbone(options, load_weights)
    ch = backbone.out_channels
    sizes = tuple((int(s),) for s in options["anchor_sizes"])
    if len(sizes) != 5:
        raise InputError("maskrcnn.anchor_sizes", "needs 5 sizes, one per FPN level (P2-P6)")
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    box_roi_pool = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    mask_roi_pool = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
    mask_layers = (options["mask_head_channels"],) * options["mask_head_layers"]
    # the input normalisation the backbone's weights expect (EfficientNet-Lite: (x - .5) / .5)
    mean, std = (((0.5,) * 3, (0.5,) * 3) if options["backbone"] == "efficientnet_lite0"
                 else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    model = MaskRCNN(
        backbone,
        num_classes=None,  # given by the predictors below
        image_mean=list(mean),
        image_std=list(std),
        min_size=tuple(options["min_size"]),
        max_size=options["max_size"],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=options["rpn_pre_nms_top_n_train"],
        rpn_post_nms_top_n_train=options["rpn_post_nms_top_n_train"],
        rpn_batch_size_per_image=options["rpn_batch_size_per_image"],
        box_roi_pool=box_roi_pool,
        box_head=TwoMLPHead(ch * 7 * 7, options["box_head_dim"]),
        box_predictor=torchvision.models.detection.faster_rcnn.FastRCNNPredictor(
            options["box_head_dim"], num_classes + 1),
        box_batch_size_per_image=options["box_batch_size_per_image"],
        mask_roi_pool=mask_roi_pool,
        mask_head=MaskRCNNHeads(ch, mask_layers, 1, norm_layer=(
            functools.partial(nn.GroupNorm, 8) if options["mask_head_norm"] == "group" else None)),
        mask_predictor=torchvision.models.detection.mask_rcnn.MaskRCNNPredictor(
            mask_layers[-1], options["mask_head_channels"], num_classes + 1),
    )
    # the RPN and the heads that also take instance weights and ignore regions (maskrcnn.noisy;
    # the same modules, parameters and state: targets without them train as torchvision's)
    model.rpn.__class__ = NoisyRPN
    model.roi_heads.__class__ = NoisyRoIHeads
    return model


def set_test_size(model, options):
    """At inference torchvision resizes to the last min_size; `test_min_size` overrides it."""
    size = options.get("test_min_size") or options["min_size"][-1]
    model.transform.min_size = (int(size),)



# --------------------------------------------------------------------------- dataset

class PseudoMaskDataset(torch.utils.data.Dataset):
    """Training samples from a pseudo-mask store: (image uint8 [3,H,W], target dict).

    target: boxes float32 [N,4] xyxy (tight boxes of the masks), labels int64 [N] (class index
    + 1; 0 is background), masks uint8 [N,H,W], image_id int (position in this dataset).
    Images whose store entry has no instance are left out (`skip`) or kept as background-only
    images (`negative`). Instances with an empty mask are dropped (logged). Only images of
    the manifest split `split` are used: a store that also covers val images never trains on
    them. Instances whose confidence (the store's `scores`) is below `min_score` are left out
    (`below_cut="drop"`) or become ignore regions (`"ignore"`: neither object nor background,
    tag2mask.maskrcnn.noisy), so an image whose every instance is below it counts as an image
    without instances. With `instance_weights="confidence"` each trained instance's losses
    count min(confidence, 1) times. The target then carries `weights` (1, the weight, or -1
    for an ignore region). The store is opened lazily, once per DataLoader worker (h5py
    handles do not survive fork).
    """

    def __init__(self, store_path, manifest, empty_images="skip", flip=False, split="train",
                 min_score=0.0, below_cut="drop", instance_weights="none"):
        if empty_images not in EMPTY_POLICIES:
            raise InputError("maskrcnn.empty_images", f"{empty_images!r} not in {EMPTY_POLICIES}")
        if below_cut not in ("drop", "ignore"):
            raise InputError("maskrcnn.below_cut", f"{below_cut!r} not in ('drop', 'ignore')")
        if instance_weights not in ("none", "confidence"):
            raise InputError("maskrcnn.instance_weights",
                             f"{instance_weights!r} not in ('none', 'confidence')")
        self.store_path = Path(store_path)
        self.flip = flip
        self.min_score = float(min_score)
        self.below_cut, self.instance_weights = below_cut, instance_weights
        self.weighted = below_cut == "ignore" or instance_weights == "confidence"
        self._reader = None
        by_id = {r.id: r for r in manifest.images}
        with StoreReader(store_path, "pseudo_masks") as r:
            if list(r.class_names) != list(manifest.classes):
                raise InputError(store_path, f"store classes {r.class_names} differ from the "
                                             f"manifest's {manifest.classes}")
            self.class_names = list(r.class_names)
            records, counts, below = [], [], []
            for image_id in r.image_ids:
                rec = by_id.get(image_id)
                if rec is None:
                    raise InputError(store_path, f"image {image_id!r} is not in the manifest")
                entry = r.read(image_id, ["labels", "scores"])
                if (int(entry["height"]), int(entry["width"])) != (rec.height, rec.width):
                    raise InputError(store_path, f"image {image_id!r}: store size "
                                                 f"{entry['height']}x{entry['width']} differs "
                                                 f"from the manifest's {rec.height}x{rec.width}")
                records.append(rec)
                confident = self._confident(entry)
                counts.append(int(confident.sum()))
                below.append(int((~confident).sum()))
        # manifest order, so the dataset does not depend on the store's group order
        order = {r.id: i for i, r in enumerate(manifest.images)}
        triples = sorted(zip(records, counts, below), key=lambda p: order[p[0].id])
        other_split = sum(1 for r, _, _ in triples if r.split != split)
        if other_split:
            log.info("%s: %d image(s) outside the %s split left out", store_path, other_split,
                     split)
        triples = [p for p in triples if p[0].split == split]
        self.empty = sum(1 for _, n, _ in triples if n == 0)
        skipped = [p for p in triples if p[1] == 0] if empty_images == "skip" else []
        if empty_images == "skip":
            triples = [p for p in triples if p[1] > 0]
        self.records = [p[0] for p in triples]
        self.instances = sum(p[1] for p in triples)
        # what became of the store's masks: objects, ignore regions, left out
        below_kept = sum(p[2] for p in triples)
        self.mask_counts = {
            "objects": self.instances,
            "ignored": below_kept if below_cut == "ignore" else 0,
            "left_out": (below_kept if below_cut == "drop" else 0) + sum(p[2] for p in skipped),
        }
        log.info("pseudo-mask dataset: %d images (%d without instances, %s); masks: %d as "
                 "objects, %d as ignore regions, %d left out", len(self.records), self.empty,
                 "skipped" if empty_images == "skip" else "kept as negatives",
                 *self.mask_counts.values())

    def __len__(self):
        return len(self.records)

    def _confident(self, entry):
        """Bool [N]: the instances of a store entry kept for training."""
        scores = np.asarray(entry.get("scores", np.ones(len(entry["labels"]))), np.float64)
        return scores >= self.min_score

    def _weights(self, entry):
        """Float [N] of a store entry: the loss weight of each instance (tag2mask.maskrcnn.noisy:
        1 or its confidence if trained, -1 an ignore region, 0 left out)."""
        scores = np.asarray(entry.get("scores", np.ones(len(entry["labels"]))), np.float64)
        confident = scores >= self.min_score
        trained = np.minimum(scores, 1.0) if self.instance_weights == "confidence" else 1.0
        return np.where(confident, trained, -1.0 if self.below_cut == "ignore" else 0.0)

    def _store(self):
        if self._reader is None:
            self._reader = StoreReader(self.store_path, "pseudo_masks")
        return self._reader

    def __getstate__(self):  # a DataLoader worker gets its own handle
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def __getitem__(self, key):
        # key: an index, or (index, flip) from EpochSampler, which decides flips reproducibly
        index, flip = key if isinstance(key, tuple) else (key, self.flip and torch.rand(()) < 0.5)
        rec = self.records[index]
        entry = self._store().read(rec.id, ["masks", "labels", "scores"])
        image = load_rgb(rec.path)
        h, w = image.shape[:2]
        if (h, w) != (rec.height, rec.width):
            raise InputError(rec.path, f"image is {h}x{w}, the manifest says "
                                       f"{rec.height}x{rec.width}")
        counts = entry["masks"]
        labels = np.asarray(entry["labels"], dtype=np.int64)
        if len(counts) != len(labels):
            raise InputError(self.store_path, f"image {rec.id!r}: {len(counts)} masks but "
                                              f"{len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise InputError(self.store_path, f"image {rec.id!r}: class index out of range")
        weights = self._weights(entry)
        used = weights != 0
        counts, labels, weights = ([c for c, k in zip(counts, used) if k], labels[used],
                                   weights[used])
        m = rle.decode(counts, h, w)
        boxes = rle.boxes(counts, h, w)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not keep.all():
            log.warning("%s: image %r: %d empty mask(s) dropped", self.store_path, rec.id,
                        int((~keep).sum()))
        m, boxes, labels, weights = m[keep], boxes[keep], labels[keep], weights[keep]
        if flip:
            image = image[:, ::-1]
            m = m[:, :, ::-1]
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(labels + 1),
            "masks": torch.from_numpy(np.ascontiguousarray(m, dtype=np.uint8)),
            "image_id": index,
        }
        if self.weighted:
            target["weights"] = torch.from_numpy(weights.astype(np.float32))
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target


class EpochSampler(torch.utils.data.Sampler):
    """A shuffled order with a flip decision per image, (index, flip) pairs drawn from (seed,
    epoch) alone: a resumed run sees the same data as an uninterrupted one, whatever the number
    of DataLoader workers (which can then persist across epochs)."""

    def __init__(self, size, seed, flip):
        self.size, self.seed, self.flip, self.epoch = size, seed, flip, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.size

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        flips = (torch.rand(self.size, generator=g) < 0.5).tolist()
        return iter([(i, self.flip and f) for i, f in zip(order, flips)])


def collate(batch):
    return tuple(zip(*batch))


# --------------------------------------------------------------------------- checkpoints

def load_checkpoint(path, class_names=None, device="cpu"):
    """A trained model from a final checkpoint (model.pt): (model, payload).

    `class_names`, when given, must equal the checkpoint's class list (else InputError)."""
    payload = load_torch_file(path, "Mask R-CNN checkpoint",
                              remedy=rerun("train_maskrcnn", "maskrcnn train"))
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"not a {CHECKPOINT_FORMAT} checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise InputError(path, f"checkpoint version {payload.get('version')} is not "
                               f"{CHECKPOINT_VERSION}")
    names = list(payload["class_names"])
    if class_names is not None and list(class_names) != names:
        raise InputError(path, f"checkpoint was trained on classes {names}, not {list(class_names)}")
    options = json.loads(payload["config"])
    model = build_model(options, len(names), load_weights=False)
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), payload
