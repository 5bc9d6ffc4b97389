"""The inter-pixel relation network (IRNet, Ahn et al. 2019) on the peak classifier's backbone.

Two branches read the backbone's features at several levels (strides 4 to the classifier's
output stride, `FEATURE_LEVELS`) and predict, on the stride-`feature_stride` grid of the
input (cell i at input pixel feature_stride * i, as tag2mask.classifier.cams):
  - the class-boundary branch: one logit per cell (sigmoid: the class-boundary map B);
    each level is reduced by a 1x1 conv (GroupNorm, ReLU), brought to the grid, and the
    concatenation goes through two 1x1 convs, as in IRNet;
  - the displacement branch: a 2-vector per cell (dy, dx in grid cells) to the cell's
    instance centroid; the levels of stride >= 8 are reduced, brought to the stride-8 grid and
    mixed by two 3x3 convs (the second dilated) for the context a centroid needs, then joined
    with the stride-4 level by 1x1 convs.
The backbone is the trained classifier's, frozen by default (`train_backbone`: IRNet freezes
it too; frozen, it runs without gradients); its BatchNorm statistics are kept either way. `displacement_mean` is subtracted from
the displacement in eval mode (IRNet's mean shift: the relation loss fixes the field only up to
a constant, so the training images' mean displacement is removed after training).

Checkpoints (torch.load(weights_only=True)):
    {"format": "tag2mask-irnet", "version": 1, "model": state dict (backbone and branches),
     "meta": {class_names, backbone, classifier_stride, input_size, feature_stride, config,
              epoch, history}}
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..classifier.model import PeakClassifier
from ..core.atomic import atomic_path
from ..core.errors import InputError
from ..core.torchfiles import load_torch_file

FORMAT = "tag2mask-irnet"
VERSION = 1

# Backbone modules whose outputs the branches read ("": the backbone's own output, the
# features of the class maps), strides 4, 8 and the classifier's deepest levels.
FEATURE_LEVELS = {
    "efficientnet_lite0": ["net.blocks.1", "net.blocks.2", "net.blocks.4", ""],
    "resnet18": ["features.4", "features.5", "features.6", ""],
    "resnet50": ["features.4", "features.5", "features.6", ""],
}


def feature_levels(backbone_name, backbone):
    """Module names of the levels the branches read."""
    if backbone_name in FEATURE_LEVELS:
        return FEATURE_LEVELS[backbone_name]
    # tiny: conv pairs per stride-2 stage; the second conv of each stage from stride 4 on
    stages = backbone.stride.bit_length() - 1
    return [f"features.{2 * i + 1}" for i in range(1, stages)] + [""]


def to_grid(x, stride, out_stride, out_hw):
    """Bilinear values of features x [B, C, h, w] of a stride-`stride` level (cell j at input
    pixel stride * j) at the cells of a stride-`out_stride` grid of out_hw cells."""
    if stride == out_stride and tuple(x.shape[-2:]) == tuple(out_hw):
        return x
    axes = []
    for n_out, n_in in zip(out_hw, x.shape[-2:]):
        cell = torch.arange(n_out, dtype=torch.float32, device=x.device) * out_stride / stride
        axes.append(cell * 2 / (n_in - 1) - 1 if n_in > 1 else torch.zeros_like(cell))
    gy, gx = torch.meshgrid(axes[0], axes[1], indexing="ij")
    grid = torch.stack([gx, gy], -1).to(x.dtype)[None].expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def conv_gn(cin, cout, k=1, dilation=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation,
                                   bias=False),
                         nn.GroupNorm(4, cout), nn.ReLU(inplace=True))


class IRNet(nn.Module):
    """images in [0, 1] [B, 3, S, S] -> (boundary logits [B, 1, G, G], displacement
    [B, 2, G, G]) with G = ceil(S / feature_stride)."""

    def __init__(self, classifier, feature_stride=4, train_backbone=False, width=32):
        super().__init__()
        self.backbone = classifier.backbone
        self.backbone_name = classifier.backbone_name
        self.register_buffer("mean", classifier.mean.clone())
        self.register_buffer("std", classifier.std.clone())
        self.register_buffer("displacement_mean", torch.zeros(2))
        self.feature_stride = feature_stride
        self.train_backbone = train_backbone
        self.levels = feature_levels(self.backbone_name, self.backbone)
        channels, strides = self._probe()
        self.strides = strides
        if strides[0] != feature_stride:
            raise InputError("irnet.feature_stride", f"the {self.backbone_name} backbone's "
                             f"finest level has stride {strides[0]}, not {feature_stride}")
        self.edge_levels = nn.ModuleList(conv_gn(c, width) for c in channels)
        self.edge_out = nn.Sequential(conv_gn(width * len(channels), width),
                                      nn.Conv2d(width, 1, 1))
        self.deep = [i for i, s in enumerate(strides) if s >= 8]
        self.disp_levels = nn.ModuleList(conv_gn(c, 2 * width) for c in channels)
        self.disp_context = nn.Sequential(conv_gn(2 * width * len(self.deep), 2 * width, 3),
                                          conv_gn(2 * width, 2 * width, 3, dilation=2))
        self.disp_out = nn.Sequential(conv_gn(4 * width, 2 * width), nn.Conv2d(2 * width, 2, 1))
        if not train_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def _probe(self):
        was = self.backbone.training
        self.backbone.eval()
        size = 64
        feats = self.features(torch.zeros(1, 3, size, size))
        self.backbone.train(was)
        strides = [round(size / f.shape[-1]) for f in feats]
        return [f.shape[1] for f in feats], strides

    def features(self, x):
        """The levels' features of normalised-and-scaled images (a list, finest first)."""
        found = {}
        modules = dict(self.backbone.named_modules())
        hooks = [modules[name].register_forward_hook(
            lambda m, i, o, name=name: found.__setitem__(name, o))
            for name in self.levels if name]
        try:
            out = self.backbone((x - self.mean) / self.std)
        finally:
            for h in hooks:
                h.remove()
        return [found[name] if name else out for name in self.levels]

    def train(self, mode=True):
        super().train(mode)
        self.backbone.eval()  # BatchNorm statistics stay the classifier's (small batches)
        return self

    def forward(self, images):
        grid = tuple((n - 1) // self.feature_stride + 1 for n in images.shape[-2:])
        if self.train_backbone:
            feats = self.features(images)
        else:
            with torch.no_grad():
                feats = self.features(images)
        edge = [to_grid(f(x), s, self.feature_stride, grid)
                for f, x, s in zip(self.edge_levels, feats, self.strides)]
        boundary = self.edge_out(torch.cat(edge, 1))
        mid_stride = 2 * self.feature_stride
        mid = tuple((n - 1) // mid_stride + 1 for n in images.shape[-2:])
        deep = [to_grid(self.disp_levels[i](feats[i]), self.strides[i], mid_stride, mid)
                for i in self.deep]
        context = to_grid(self.disp_context(torch.cat(deep, 1)), mid_stride,
                          self.feature_stride, grid)
        fine = self.disp_levels[0](feats[0])
        displacement = self.disp_out(torch.cat([fine, context], 1))
        if not self.training:
            displacement = displacement - self.displacement_mean.view(1, 2, 1, 1)
        return boundary, displacement


def build_irnet(classifier, options):
    """An IRNet on `classifier`'s backbone (its weights are kept, not copied)."""
    return IRNet(classifier, options["feature_stride"], options["train_backbone"],
                 options["width"])


def irnet_meta(model, classifier_meta, options, epoch, history=None):
    return {"class_names": list(classifier_meta["class_names"]),
            "backbone": classifier_meta["backbone"],
            "classifier_stride": classifier_meta["stride"],
            "input_size": options["input_size"] or classifier_meta["input_size"],
            "feature_stride": model.feature_stride, "config": dict(options), "epoch": epoch,
            "history": history or []}


def save_irnet(path, model, meta):
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, "model": state, "meta": meta}, tmp)


def read_irnet_checkpoint(path):
    ckpt = load_torch_file(path, "IRNet checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or ckpt.get("version") != VERSION:
        raise InputError(path, f"not a {FORMAT} version {VERSION} checkpoint")
    return ckpt


def load_irnet(path, device="cpu", class_names=None):
    """(IRNet in eval mode on `device`, meta) from a checkpoint written by save_irnet."""
    ckpt = read_irnet_checkpoint(path)
    meta = ckpt["meta"]
    if class_names is not None and list(meta["class_names"]) != list(class_names):
        raise InputError(path, f"IRNet was trained on classes {meta['class_names']}, but the "
                               f"dataset has {list(class_names)}")
    classifier = PeakClassifier(meta["backbone"], meta["class_names"],
                                stride=meta["classifier_stride"])
    model = build_irnet(classifier, meta["config"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise InputError(path, f"weights do not fit this IRNet ({e})") from None
    return model.to(device).eval(), meta
