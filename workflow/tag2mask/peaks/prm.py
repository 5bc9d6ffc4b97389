"""Peak response maps: the input gradient of one class peak under the positive-weight rule.

Inside `positive_backprop(model)`, every nn.Conv2d computes its ordinary forward but, in the
backward pass, replaces the input gradient by the positive-weight (excitation backprop) rule

    grad_in = (X - min X) * conv_transpose(grad_out / conv(X - min X, W+), W+),   W+ = relu(W)

(bias ignored, zero where the denominator < 1e-10; min X is taken per image). BatchNorm, ReLU,
pooling and residual additions keep their ordinary gradients. A peak's response map is the
input gradient of the one-hot peak, summed over RGB, clamped at 0 and divided by its sum.

The rule is a normalised (mass-conserving) transport with non-negative kernels: each conv
spreads a unit's mass over its window in proportion to X * W+, and, unlike the signed plain
gradient, nothing cancels. When deep layers' windows span the whole image (EfficientNet-Lite0
at stride 16 on the demo's 224 px input: a 14x14 grid, which its dilated 5x5 depthwise convs
cover in a few layers), those layers spread every peak's mass over the whole image and the maps
at the input hardly depend on the peak (peaks_quality's response-map figures; the same with
random weights, and nearly so with W+ alone instead of X * W+, so it is the footprint, not the
activation weighting; ResNet-50 at 256 px keeps them apart). `layer=` takes the maps at the
output of a classifier layer instead (the excitation mass there, summed over channels,
resampled onto the input's pixels with the layer's cell geometry, tag2mask.peaks.grid), as
Excitation Backprop (Zhang et al. 2016) reads attention maps at intermediate layers. Measured
on the demo: different instances' maps have cosine 0.61 at the input, 0.53 at blocks.4 and
0.08 at blocks.5 (config/config.yaml).

PRM's reference does one backward pass per peak. `PeakBackprop` forwards an image once and
computes the maps of all its peaks in one batched backward pass (torch.autograd.grad with
is_grads_batched=True, i.e. vmap over the grad_outputs): the positive-weight conv's
denominator conv(X - min X, W+) does not depend on the peak and is computed once per layer,
and the per-peak work runs as one batched convolution. `batched=False` is the per-peak loop.
"""

import contextlib
import math
import types

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import InputError
from .grid import layer_stride, resample

EPS = 1e-10


class _PositiveConv2d(torch.autograd.Function):
    """conv2d forward; positive-weight rule as the input gradient (vmap-able backward)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, stride, pads, dilation, groups):
        if pads[0] == pads[1] and pads[2] == pads[3]:
            return F.conv2d(x, weight, bias, stride, (pads[2], pads[0]), dilation, groups)
        return F.conv2d(F.pad(x, pads), weight, bias, stride, 0, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, stride, pads, dilation, groups = inputs
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, pads, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, pads, dilation, groups = ctx.conv
        # Shift each image's input to be >= 0 (padding then adds zeros of the shifted input).
        xs = x - x.amin(dim=(1, 2, 3), keepdim=True)
        w_pos = weight.clamp(min=0)
        z = _PositiveConv2d.forward(xs, w_pos, None, stride, pads, dilation, groups)
        # 1/z is computed once and shared by all peaks of a batched backward.
        inv_z = torch.where(z >= EPS, 1.0 / z.clamp(min=EPS), torch.zeros_like(z))
        s = grad_out * inv_z
        c = _conv_input_grad(s, w_pos, xs.shape[-2:], z.shape[-2:], stride, pads, dilation,
                             groups)
        # in place: c is this pass's own, and a batched backward saves a P-fold allocation
        return c.mul_(xs), None, None, None, None, None, None


def _conv_input_grad(s, weight, in_hw, out_hw, stride, pads, dilation, groups):
    """The input gradient of conv(pad(x, pads), weight) for output gradient s, cropped to x.

    Stride 1: a correlation with the flipped, in/out-swapped kernel (CPU convolution kernels
    run it about 1.5x faster than conv_transpose2d); otherwise conv_transpose2d, whose
    output_padding restores the sizes that a strided conv rounds away.
    """
    kh, kw = weight.shape[-2:]
    full = (dilation[1] * (kw - 1), dilation[1] * (kw - 1),
            dilation[0] * (kh - 1), dilation[0] * (kh - 1))
    back = tuple(f - p for f, p in zip(full, pads))  # (left, right, top, bottom)
    if tuple(stride) == (1, 1) and min(back) >= 0:
        cout, cin_g = weight.shape[:2]
        w_t = weight.view(groups, cout // groups, cin_g, kh, kw).transpose(1, 2)
        w_t = w_t.reshape(cin_g * groups, cout // groups, kh, kw).flip(-2, -1)
        if back[0] == back[1] and back[2] == back[3]:
            return F.conv2d(s, w_t, None, 1, (back[2], back[0]), dilation, groups)
        return F.conv2d(F.pad(s, back), w_t, None, 1, 0, dilation, groups)
    padded_hw = (in_hw[0] + pads[2] + pads[3], in_hw[1] + pads[0] + pads[1])
    out_pad = tuple(n - ((m - 1) * st + d * (k - 1) + 1) for n, m, st, d, k in
                    zip(padded_hw, out_hw, stride, dilation, (kh, kw)))
    c = F.conv_transpose2d(s, weight, None, stride, 0, out_pad, groups, dilation)
    if any(pads):
        c = c[..., pads[2]:c.shape[-2] - pads[3], pads[0]:c.shape[-1] - pads[1]]
    return c


def _pads(conv, x):
    """(left, right, top, bottom) zero padding of a conv for input x."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        out = []  # 'same' (stride 1): total d*(k-1), the extra pixel on the right/bottom
        for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size)):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return tuple(out)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def _same_pads(x, conv):
    """TF-style 'SAME' padding that depends on the input size (timm's Conv2dSame)."""
    out = []
    for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(conv.kernel_size),
                             reversed(conv.stride), reversed(conv.dilation)):
        total = max((-(size // -s) - 1) * s + (k - 1) * d + 1 - size, 0)
        out += [total // 2, total - total // 2]
    return tuple(out)


def _positive_forward(conv, x):
    if getattr(conv, "_prm_dynamic_same", False):
        pads = _same_pads(x, conv)
    elif conv.padding_mode != "zeros":
        # Reflect/replicate/circular padding is a data movement: ordinary autograd.
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        pads = (0, 0, 0, 0)
    else:
        pads = _pads(conv, x)
    return _PositiveConv2d.apply(x, conv.weight, conv.bias, tuple(conv.stride), pads,
                                 tuple(conv.dilation), conv.groups)


def _is_dynamic_same(conv):
    # timm's Conv2dSame pads in forward by the input size, then convolves with padding 0.
    return type(conv).__name__ == "Conv2dSame"


def _bn_scale_shift(bn):
    """Eval-mode BatchNorm as the per-channel affine map x * scale + shift: [1, C, 1, 1] x 2."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)


def _affine_bn_forward(bn, x):
    # Written out, the affine map's ordinary gradient (grad * scale) is much cheaper under vmap
    # than batch_norm_backward.
    scale, shift = _bn_scale_shift(bn)
    return x * scale + shift


def _is_bn_act(bn):
    # timm's BatchNormAct2d: batch norm, then its `drop` and `act` modules (EfficientNets)
    return type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act") and hasattr(bn, "drop")


class _ClampedAffine(torch.autograd.Function):
    """clamp(x * scale + shift, lo, hi) (eval BatchNorm, then ReLU / ReLU6 / no activation)
    whose gradient is one product with a factor saved by the forward: scale where the clamp
    passes (lo < y < hi, as ReLU's and Hardtanh's own backward), 0 elsewhere. One pass over
    the P peaks' gradients instead of two."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, scale, shift, lo, hi):
        y = x * scale + shift
        return y if lo is None and hi is None else y.clamp(lo, hi)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, scale, _, lo, hi = inputs
        if lo is None and hi is None:
            factor = scale
        else:  # one fused pass: the output lies strictly inside the bounds where the input did
            factor = torch.ops.aten.hardtanh_backward(
                scale.expand_as(output), output, -math.inf if lo is None else lo,
                math.inf if hi is None else hi)
        ctx.save_for_backward(factor)

    @staticmethod
    def backward(ctx, grad):
        (factor,) = ctx.saved_tensors
        return grad * factor, None, None, None, None


def _act_bounds(act):
    """(lo, hi) of an activation that is a clamp (Identity, ReLU, ReLU6, Hardtanh); None if
    it is not one."""
    if isinstance(act, nn.Identity):
        return (None, None)
    if isinstance(act, nn.ReLU):
        return (0.0, None)
    if isinstance(act, nn.Hardtanh):  # ReLU6 is Hardtanh(0, 6)
        return (float(act.min_val), float(act.max_val))
    return None


def _affine_bn_act_forward(bn, x):
    bounds = _act_bounds(bn.act)
    if bounds is None or not isinstance(bn.drop, nn.Identity):
        return bn.act(bn.drop(_affine_bn_forward(bn, x)))
    return _ClampedAffine.apply(x, *_bn_scale_shift(bn), *bounds)


@contextlib.contextmanager
def positive_backprop(model):
    """Within the block, every nn.Conv2d of `model` backpropagates with the positive-weight rule.

    Only the forward pass needs to run inside the block: the graph it records keeps the rule.
    Plain eval-mode BatchNorm2d layers (and timm's BatchNormAct2d) run as the same affine map
    (ordinary gradient; BatchNormAct2d with ReLU, ReLU6 or no activation as one clamped affine
    map whose gradient is a single product).
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for m in convs:
        if type(m).forward is not nn.Conv2d.forward and not _is_dynamic_same(m):
            raise TypeError(f"positive_backprop: unsupported conv subclass {type(m).__name__} "
                            "(its forward differs from nn.Conv2d's)")
    norms = [m for m in model.modules()
             if isinstance(m, nn.BatchNorm2d) and not m.training and m.running_mean is not None
             and (type(m).forward is nn.BatchNorm2d.forward or _is_bn_act(m))]
    try:
        for m in convs:
            m._prm_dynamic_same = _is_dynamic_same(m)
            m.forward = types.MethodType(_positive_forward, m)
        for m in norms:
            forward = _affine_bn_act_forward if _is_bn_act(m) else _affine_bn_forward
            m.forward = types.MethodType(forward, m)
        yield model
    finally:
        for m in convs + norms:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("_prm_dynamic_same", None)


def normalise(grads, size=None):
    """Gradients [P, C, h, w] -> response maps [P, H, W]: sum over channels (RGB at the
    input), clamp >= 0, each map sums to 1. With `size`, the input's (H, W), the maps of a
    strided layer are bilinearly resampled onto the input's pixels, cell j at input pixel
    stride * j (tag2mask.peaks.grid)."""
    r = grads.sum(dim=1).clamp(min=0)
    if size is not None and tuple(r.shape[-2:]) != tuple(size):
        stride = layer_stride(size[-1], r.shape[-1])
        r = resample(r[:, None], stride, tuple(size), tuple(size))[:, 0].clamp(min=0)
    total = r.flatten(1).sum(dim=1).view(-1, 1, 1)
    return torch.where(total > 0, r / total.clamp(min=torch.finfo(r.dtype).tiny), r)


class PeakBackprop:
    """Forward one image once; then the response maps of its class-map peaks.

    pb = PeakBackprop(model, image, upsample=8)   # image: float [1, 3, H, W] in [0, 1]
    pb.class_maps        # raw class maps [1, C, h, w]
    pb.upsampled_maps    # bilinearly upsampled x `upsample`, where peaks are found
    pb.response_maps(peaks)   # peaks: LongTensor [P, 3] (c, y, x) on the upsampled grid,
                              # or [P, 4] (b, c, y, x) with b == 0 -> float [P, H, W]

    layer: None / "input" (maps at the image), or a name in model.named_modules(): maps at that
    module's output (the module must run once per forward and return [1, C, h, w]); the
    backward passes stop there. An extra forward up to the layer gets its output first.

    batched=True: torch.func.vjp of the forward, vmapped over the P one-hot gradients, so each
    layer's backward runs once on a batch of P (autograd's is_grads_batched falls back to a
    per-peak loop for convolution backward on CPU). batched=False: an ordinary autograd graph
    and one backward pass per peak (the reference way; kept for tests and the benchmark).
    """

    def __init__(self, model, image, upsample=1, batched=True, layer=None):
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"PeakBackprop takes one image [1, 3, H, W], got {tuple(image.shape)}")
        self.batched = batched
        self.upsample = upsample
        self._input_hw = tuple(image.shape[-2:])
        image = image.detach()
        module = find_layer(model, layer)
        if module is None:  # maps at the input image (PRM)
            primal = image

            def forward(x):
                with positive_backprop(model):
                    return model(x)
        else:
            # The layer's output is the primal: computed once, then swapped in for the layer's
            # own output, so the backward passes stop there.
            primal = layer_output(model, module, image)

            def forward(feature):
                with positive_backprop(model), _replace_output(module, feature):
                    return model(image)

        with torch.enable_grad():
            if batched:
                maps, self._vjp = torch.func.vjp(forward, primal)
            else:
                self._primal = primal.clone().requires_grad_(True)
                maps = forward(self._primal)
                self._graph_output = _upsample(maps, upsample)
        self.class_maps = maps.detach()
        self.upsampled_maps = _upsample(self.class_maps, upsample)

    def response_maps(self, peaks, chunk=32):
        """Normalised response maps [P, H, W] at the input resolution (peaks in chunks of
        `chunk` per batched backward, which bounds the memory)."""
        peaks = torch.as_tensor(peaks, dtype=torch.long, device=self.class_maps.device)
        if peaks.dim() == 2 and peaks.shape[1] == 4:
            peaks = peaks[:, 1:]
        if len(peaks) == 0:
            return self.class_maps.new_zeros((0,) + self._input_hw)
        out = []
        if self.batched:
            with torch.no_grad():
                for start in range(0, len(peaks), chunk):
                    onehots = self._raw_onehot(peaks[start:start + chunk])
                    (g,) = torch.func.vmap(self._vjp)(onehots)
                    out.append(normalise(g[:, 0], self._input_hw))
        else:
            up = self.upsampled_maps
            for p in peaks:
                onehot = up.new_zeros(up.shape)
                onehot[0, p[0], p[1], p[2]] = 1.0
                (g,) = torch.autograd.grad(self._graph_output, self._primal, onehot,
                                           retain_graph=True)
                out.append(normalise(g, self._input_hw))
        return torch.cat(out)

    def _raw_onehot(self, peaks):
        """Gradients [P, 1, C, h, w] on the raw class maps of one-hots at peaks of the upsampled
        maps: each peak's bilinear interpolation weights (the upsampling's adjoint, without a
        backward pass over P full-size one-hot maps)."""
        maps = self.class_maps
        n = len(peaks)
        grad = maps.new_zeros((n,) + tuple(maps.shape))
        rows = _bilinear_taps(peaks[:, 1], maps.shape[-2], self.upsample)
        cols = _bilinear_taps(peaks[:, 2], maps.shape[-1], self.upsample)
        idx = torch.arange(n, device=maps.device)
        zero = torch.zeros_like(idx)
        for r, wr in rows:
            for c, wc in cols:
                grad.index_put_((idx, zero, peaks[:, 0], r, c), (wr * wc).to(grad.dtype),
                                accumulate=True)
        return grad

    def release(self):
        """Drop the recorded forward (frees the saved activations)."""
        self._vjp = self._graph_output = self._primal = None


def find_layer(model, name):
    """The module `name` of model.named_modules(); None for the input image (None/'input')."""
    if name is None or name == "input":
        return None
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        shallow = [n for n in modules if n and n.count(".") <= 2]
        raise InputError("peaks.response_layer",
                         f"the classifier has no layer {name!r}; its layers include "
                         f"{', '.join(shallow[:40])}")
    return modules[name]


class _Stop(Exception):
    pass


def layer_output(model, module, image):
    """The output of `module` for `image` (the forward stops there), under positive_backprop
    like the passes that follow."""
    captured = []

    def hook(m, args, out):
        if not torch.is_tensor(out) or out.dim() != 4:
            raise InputError("peaks.response_layer", f"layer {type(m).__name__} does not output "
                                                     "one feature map [B, C, h, w]")
        captured.append(out.detach())
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad(), positive_backprop(model):
            model(image)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise InputError("peaks.response_layer", "the layer is not used by the forward pass")
    return captured[0]


@contextlib.contextmanager
def _replace_output(module, feature):
    """Within the block, the (single) call of `module` returns `feature` instead."""
    calls = []

    def hook(m, args, out):
        calls.append(1)
        if len(calls) > 1:
            raise InputError("peaks.response_layer", f"layer {type(m).__name__} runs more than "
                                                     "once per forward pass")
        return feature

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _upsample(maps, factor):
    if factor == 1:
        return maps
    return F.interpolate(maps, scale_factor=factor, mode="bilinear", align_corners=False)


def _bilinear_taps(index, size, factor):
    """[(source index, weight)] x 2 of output pixels `index` of a bilinear x`factor` upsampling
    (align_corners=False) of an axis of `size` pixels, as torch computes it:
    source = max((i + 0.5) / factor - 0.5, 0), the next pixel clamped at the border."""
    src = ((index.double() + 0.5) / factor - 0.5).clamp(min=0)
    i0 = src.floor().long()
    frac = src - i0
    i1 = torch.where(i0 < size - 1, i0 + 1, i0)
    return [(i0, 1 - frac), (i1, frac)]
