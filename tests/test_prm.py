"""Peak response maps: the positive-weight rule and the batched backward (tag2mask.peaks.prm)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tag2mask.core.errors import InputError
from tag2mask.peaks.grid import resample
from tag2mask.peaks.positive_rule import positive_backprop
from tag2mask.peaks.prm import PeakBackprop, normalise

# torch notes that an even 'same' kernel pads a copy of the input: expected here
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")



class Block(nn.Module):
    """Residual block with a dilated depthwise conv."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=2, dilation=2, groups=c)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.dw(F.relu(self.bn1(self.conv(x))))))


class SmallNet(nn.Module):
    """conv/BN/ReLU, max pooling, residual, strided, dilated depthwise, grouped and
    'same'-padded (even kernel) convolutions, 1x1 head with bias."""

    def __init__(self, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.block = Block(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.same = nn.Conv2d(16, 16, 4, padding="same")
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.stem(x))))
        x = F.relu(self.down(self.block(x)))
        return self.head(F.relu(self.same(x)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = SmallNet()
    for m in model.modules():  # non-trivial running statistics: BN is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def random_peaks(maps, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, h, w = maps.shape[1:]
    return torch.stack([torch.randint(0, c, (n,), generator=g),
                        torch.randint(0, h, (n,), generator=g),
                        torch.randint(0, w, (n,), generator=g)], 1)


@pytest.mark.parametrize("layer", [None, "block", "down"])
def test_batched_equals_per_peak_loop(net, layer):
    image = torch.rand(1, 3, 45, 58)
    batched = PeakBackprop(net, image, upsample=4, layer=layer)
    loop = PeakBackprop(net, image, upsample=4, batched=False, layer=layer)
    assert torch.equal(batched.upsampled_maps, loop.upsampled_maps)
    h, w = batched.upsampled_maps.shape[-2:]
    corners = torch.tensor([[0, 0, 0], [2, h - 1, w - 1], [1, 0, w - 2]])  # border taps
    peaks = torch.cat([random_peaks(batched.upsampled_maps, 6), corners])
    a = batched.response_maps(peaks, chunk=4)  # several chunks
    b = loop.response_maps(peaks)
    assert a.shape == (9, 45, 58)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)
    # (b, c, y, x) rows work like (c, y, x)
    c = batched.response_maps(torch.cat([torch.zeros(9, 1, dtype=torch.long), peaks], 1))
    torch.testing.assert_close(a, c)


def test_positive_rule_maps_are_distributions_and_differ_from_gradient(net):
    image = torch.rand(1, 3, 40, 40)
    pb = PeakBackprop(net, image, upsample=2)
    peaks = random_peaks(pb.upsampled_maps, 5, seed=1)
    maps = pb.response_maps(peaks)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(5))
    x = image.clone().requires_grad_(True)
    up = F.interpolate(net(x), scale_factor=2, mode="bilinear", align_corners=False)
    c, y, xx = peaks[0].tolist()
    (g,) = torch.autograd.grad(up[0, c, y, xx], x)
    plain = normalise(g)[0]
    assert (maps[0] - plain).abs().max() > 1e-3 * maps[0].max()


def test_single_conv_known_answer():
    """One conv: grad_in = (X - min X) * W+ (at the peak's window) / conv(X - min X, W+)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=True)
    image = torch.rand(1, 3, 6, 7)
    pb = PeakBackprop(conv, image)
    c, y, x = 1, 2, 3
    got = pb.response_maps(torch.tensor([[c, y, x]]))[0]
    xs = image[0] - image.min()
    w_pos = conv.weight[c].detach().clamp(min=0)  # [3, 3, 3]
    window = xs[:, y - 1:y + 2, x - 1:x + 2]
    z = (window * w_pos).sum()
    grad = torch.zeros_like(xs)
    grad[:, y - 1:y + 2, x - 1:x + 2] = window * w_pos / z
    expected = grad.sum(0).clamp(min=0)
    torch.testing.assert_close(got, expected / expected.sum())
    torch.testing.assert_close(pb.class_maps, conv(image).detach())


def test_context_keeps_forward_and_restores_modules(net):
    image = torch.rand(2, 3, 33, 31)
    with torch.no_grad():
        before = net(image)
        with positive_backprop(net):
            inside = net(image)
    torch.testing.assert_close(before, inside)
    assert all("forward" not in m.__dict__ for m in net.modules())


def test_no_peaks_and_unsupported_conv(net):
    pb = PeakBackprop(net, torch.rand(1, 3, 20, 24))
    assert pb.response_maps(torch.zeros((0, 3), dtype=torch.long)).shape == (0, 20, 24)

    class Odd(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(TypeError, match="unsupported conv"):
        with positive_backprop(nn.Sequential(Odd(3, 3, 1))):
            pass


def test_timm_same_padding_conv_and_bn_act():
    from timm.layers import BatchNormAct2d, Conv2dSame

    torch.manual_seed(2)
    bn = BatchNormAct2d(4, act_layer=nn.ReLU6)
    bn.running_mean.normal_(0, 0.5)
    bn.running_var.uniform_(0.01, 2.0)
    model = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), bn, nn.Conv2d(4, 2, 1)).eval()
    image = torch.rand(1, 3, 17, 14)
    with torch.no_grad():
        expected = model(image)
        with positive_backprop(model):
            assert "forward" in bn.__dict__  # runs as an affine map + ReLU6
            torch.testing.assert_close(model(image), expected)
    pb = PeakBackprop(model, image)
    torch.testing.assert_close(pb.class_maps, expected)
    loop = PeakBackprop(model, image, batched=False)
    peaks = random_peaks(pb.class_maps, 4, seed=3)
    torch.testing.assert_close(pb.response_maps(peaks), loop.response_maps(peaks))


@pytest.mark.parametrize("act", [nn.ReLU6, nn.ReLU, nn.Identity])
def test_bn_act_gradient_is_the_ordinary_one(act):
    """Inside positive_backprop, timm's BatchNormAct2d (eval) runs as one clamped affine map
    whose gradient is a saved factor: the same values and the same gradient as the module's
    own forward, zero where the activation clamps (below 0, above 6)."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(4)
    bn = BatchNormAct2d(5, act_layer=act)
    bn.running_mean.normal_(0, 0.5)
    bn.running_var.uniform_(0.01, 2.0)
    bn.weight.data.uniform_(-1.5, 1.5)  # negative scales too
    bn.bias.data.normal_(0, 1)
    bn.eval()
    x = (torch.randn(1, 5, 6, 7) * 8).requires_grad_(True)
    grad = torch.randn(1, 5, 6, 7)
    expected = bn(x)
    (expected_grad,) = torch.autograd.grad(expected, x, grad, retain_graph=True)
    with positive_backprop(nn.Sequential(bn)):
        got = bn(x)
    assert "ClampedAffine" in type(got.grad_fn).__name__
    (got_grad,) = torch.autograd.grad(got, x, grad)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)
    if act is nn.ReLU6:
        assert ((expected <= 0) | (expected >= 6)).any() and (got_grad[expected >= 6] == 0).all()
    # batched (vmap over the gradients) as one at a time
    grads = torch.randn(3, 1, 5, 6, 7)
    with positive_backprop(nn.Sequential(bn)):
        _, vjp = torch.func.vjp(bn, x.detach())
    (batched,) = torch.func.vmap(vjp)(grads)
    for g, b in zip(grads, batched):
        torch.testing.assert_close(b, torch.autograd.grad(expected, x, g, retain_graph=True)[0])


def test_maps_at_a_layer_known_answer():
    """Maps at the output of conv1 of conv1 -> ReLU -> conv2 (3x3): the positive-weight rule
    of conv2 alone on that output, summed over channels, resampled x2 (conv1 has stride 2)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 2, 3, padding=1)).eval()
    image = torch.rand(1, 3, 12, 14)
    pb = PeakBackprop(model, image, layer="1")
    torch.testing.assert_close(pb.class_maps, model(image).detach())
    c, y, x = 1, 2, 3
    got = pb.response_maps(torch.tensor([[c, y, x]]))[0]
    with torch.no_grad():
        a = model[1](model[0](image))[0]  # [4, 6, 7]
    xs = a - a.min()
    w_pos = model[2].weight[c].detach().clamp(min=0)
    window = xs[:, y - 1:y + 2, x - 1:x + 2]
    mass = torch.zeros_like(xs)
    mass[:, y - 1:y + 2, x - 1:x + 2] = window * w_pos / (window * w_pos).sum()
    # resampled onto the input: layer cell j at input pixel 2 j (tag2mask.peaks.grid)
    expected = resample(mass.sum(0)[None, None], 2, (12, 14), (12, 14))[0, 0]
    torch.testing.assert_close(got, expected / expected.sum())
    # at the input: conv1's rule (stride 2, zero padding 1) by hand on that mass, where the
    # ReLU passes it
    with torch.no_grad():
        pre = model[0](image)[0]
    mass = mass * (pre > 0)
    xs = F.pad(image[0] - image.min(), (1, 1, 1, 1))  # the shifted input, zero padded
    w_pos = model[0].weight.detach().clamp(min=0)
    grad = torch.zeros_like(xs)
    for k in range(4):
        for i in range(6):
            for j in range(7):
                window = xs[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
                share = window * w_pos[k] / (window * w_pos[k]).sum()
                grad[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3] += mass[k, i, j] * share
    expected = grad[:, 1:-1, 1:-1].sum(0).clamp(min=0)
    got = PeakBackprop(model, image).response_maps(torch.tensor([[c, y, x]]))[0]
    torch.testing.assert_close(got, expected / expected.sum())
    # "input" is the image, as with no layer
    torch.testing.assert_close(PeakBackprop(model, image, layer="input").response_maps(
        torch.tensor([[c, y, x]])), PeakBackprop(model, image).response_maps(
        torch.tensor([[c, y, x]])))


def test_unknown_or_repeated_layer(net):
    with pytest.raises(InputError, match="no layer 'nope'.*block"):
        PeakBackprop(net, torch.rand(1, 3, 20, 20), layer="nope")
    relu = nn.ReLU()
    twice = nn.Sequential(nn.Conv2d(3, 3, 1), relu, nn.Conv2d(3, 2, 1), relu)
    with pytest.raises(InputError, match="more than once"):
        PeakBackprop(twice, torch.rand(1, 3, 8, 8), layer="1")
