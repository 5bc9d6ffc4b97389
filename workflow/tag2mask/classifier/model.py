"""The peak classifier: a fully convolutional backbone + a 1x1 conv to one map per class.

Checkpoints (`save_classifier` / `load_classifier`) are dicts loadable with
torch.load(weights_only=True):

    {"format": "tag2mask-classifier", "version": 1,
     "model": state dict, "meta": {class_names, backbone, input_size, stride, config, epoch}}

Training checkpoints (tag2mask.classifier.train) add optimizer, scheduler and RNG state.
"""

import logging

import torch
from torch import nn

from ..core.atomic import atomic_path
from ..core.errors import InputError, rerun
from ..core.torchfiles import load_torch_file
from .backbones import build_backbone
from .peak_stimulation import peak_stimulation

log = logging.getLogger(__name__)

POOLINGS = ("peak", "mean")
FORMAT = "tag2mask-classifier"
VERSION = 1


class PeakClassifier(nn.Module):
    """images in [0, 1], [B, 3, H, W] -> raw class maps [B, C, H/stride, W/stride].

    Attributes: backbone (features), head (1x1 conv with bias), stride, class_names,
    mean/std (normalisation buffers [1, 3, 1, 1]), peak_window, peak_filter, pooling.
    `scores(maps)` turns class maps into class scores: by peak stimulation (pooling "peak",
    PRM) or by the mean over the map (pooling "mean", global average pooling: the class
    activation maps of CAM and IRNet, which spread over whole objects).
    """

    def __init__(self, backbone, class_names, stride=8, pretrained=False, pretrained_path=None,
                 peak_window=3, peak_filter="median", pooling="peak"):
        super().__init__()
        self.backbone_name = backbone
        self.backbone = build_backbone(backbone, stride, pretrained, pretrained_path)
        self.head = nn.Conv2d(self.backbone.out_channels, len(class_names), 1, bias=True)
        self.stride = self.backbone.stride
        self.class_names = list(class_names)
        self.peak_window = peak_window
        self.peak_filter = peak_filter
        if pooling not in POOLINGS:
            raise InputError("classifier.pooling", f"must be one of {POOLINGS}, not {pooling!r}")
        self.pooling = pooling
        self.register_buffer("mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.backbone.std).view(1, 3, 1, 1))

    def forward(self, images):
        return self.head(self.backbone((images - self.mean) / self.std))

    def scores(self, maps, upsample=1):
        """Class scores [B, C] from class maps (float32 for a stable median and mean)."""
        if self.pooling == "mean":
            return maps.float().mean(dim=(2, 3))
        return peak_stimulation(maps.float(), self.peak_window, self.peak_filter, upsample)


def build_classifier(options, class_names, load_pretrained=True):
    """The model a `classifier` config section describes (pretrained weights only if asked)."""
    return PeakClassifier(
        options["backbone"], class_names, stride=options["stride"],
        pretrained=load_pretrained and options["pretrained"],
        pretrained_path=options["pretrained_path"] if load_pretrained else None,
        peak_window=options["peak_window"], peak_filter=options["peak_filter"],
        pooling=options["pooling"])


def classifier_meta(model, options, epoch):
    return {"class_names": list(model.class_names), "backbone": model.backbone_name,
            "input_size": options["input_size"], "stride": model.stride,
            "config": dict(options), "epoch": epoch}


def save_classifier(path, model, options, epoch, extra_meta=None):
    """Write the final checkpoint (weights + meta, plus `extra_meta` entries) atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {**classifier_meta(model, options, epoch), **(extra_meta or {})}
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, "model": state, "meta": meta}, tmp)


def read_checkpoint(path):
    """A checkpoint dict, checked for format; InputError naming the file otherwise."""
    ckpt = load_torch_file(path, "classifier checkpoint",
                           remedy=rerun("train_classifier", "classifier train"))
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or ckpt.get("version") != VERSION:
        raise InputError(path, f"not a {FORMAT} version {VERSION} checkpoint")
    return ckpt


def check_classes(meta, class_names, path):
    """Refuse a checkpoint trained on another class list than the one given."""
    if list(meta["class_names"]) != list(class_names):
        raise InputError(path, f"classifier was trained on classes {meta['class_names']}, "
                               f"but the dataset has {list(class_names)}")


def load_classifier(path, device="cpu", class_names=None):
    """(model in eval mode on `device`, meta dict) from a checkpoint file.

    With `class_names`, a checkpoint trained on another class list is an InputError.
    """
    ckpt = read_checkpoint(path)
    meta = ckpt["meta"]
    if class_names is not None:
        check_classes(meta, class_names, path)
    options = meta["config"]
    model = PeakClassifier(meta["backbone"], meta["class_names"], stride=meta["stride"],
                           peak_window=options.get("peak_window", 3),
                           peak_filter=options.get("peak_filter", "median"),
                           pooling=options.get("pooling", "peak"))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise InputError(path, f"weights do not fit a {meta['backbone']} classifier ({e})") \
            from None
    return model.to(device).eval(), meta


def load_for_action(section, action, config, runtime, manifest_path, checkpoint_path):
    """What an action that runs the classifier starts from (peaks extract, irnet cams,
    verification rescore): (its options, from --config and --runtime; the manifest; the device
    its section's `device` names; the model in eval mode; the checkpoint's meta)."""
    from ..core.config import stage_options
    from ..core.devices import resolve_device
    from ..dataset.manifest import read_manifest

    options = stage_options(config, section, action, runtime)
    manifest = read_manifest(manifest_path)
    device = resolve_device(options["device"], f"{section}.device")
    model, meta = load_classifier(checkpoint_path, device, class_names=manifest.classes)
    return options, manifest, device, model, meta
