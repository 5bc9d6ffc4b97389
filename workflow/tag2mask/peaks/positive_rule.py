"""The positive-weight (excitation backprop) rule that peak response maps are made with.

Inside `positive_backprop(model)`, every nn.Conv2d computes its ordinary forward but, in the
backward pass, replaces the input gradient by the positive-weight rule

    grad_in = (X - min X) * conv_transpose(grad_out / conv(X - min X, W+), W+),   W+ = relu(W)

(bias ignored, zero where the denominator < 1e-10; min X is taken per image). BatchNorm, ReLU,
pooling and residual additions keep their ordinary gradients (eval-mode BatchNorm runs as the
same affine map; timm's BatchNormAct2d with ReLU, ReLU6 or no activation as one clamped affine
map). tag2mask.peaks.prm builds the peak response maps on it.
"""

import contextlib
import math
import types

import torch
import torch.nn.functional as F
from torch import nn

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
