"""Peak response maps: the input gradient of one class peak under the positive-weight rule.

Inside `positive_backprop(model)`, every nn.Conv2d computes its ordinary forward but, in the
backward pass, replaces the input gradient by the positive-weight (excitation backprop) rule

    grad_in = (X - min X) * conv_transpose(grad_out / conv(X - min X, W+), W+),   W+ = relu(W)

(bias ignored, zero where the denominator < 1e-10; min X is taken per image). BatchNorm, ReLU,
pooling and residual additions keep their ordinary gradients. A peak's response map is the
input gradient of the one-hot peak, summed over RGB, clamped at 0 and divided by its sum.

PRM's reference does one backward pass per peak. `PeakBackprop` forwards an image once and
computes the maps of all its peaks in one batched backward pass (torch.autograd.grad with
is_grads_batched=True, i.e. vmap over the grad_outputs): the positive-weight conv's
denominator conv(X - min X, W+) does not depend on the peak and is computed once per layer,
and the per-peak work runs as one batched convolution. `batched=False` is the per-peak loop.
"""

import contextlib
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
        return xs * c, None, None, None, None, None, None


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


@contextlib.contextmanager
def positive_backprop(model):
    """Within the block, every nn.Conv2d of `model` backpropagates with the positive-weight rule.

    Only the forward pass needs to run inside the block: the graph it records keeps the rule.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for m in convs:
        if type(m).forward is not nn.Conv2d.forward and not _is_dynamic_same(m):
            raise TypeError(f"positive_backprop: unsupported conv subclass {type(m).__name__} "
                            "(its forward differs from nn.Conv2d's)")
    try:
        for m in convs:
            m._prm_dynamic_same = _is_dynamic_same(m)
            m.forward = types.MethodType(_positive_forward, m)
        yield model
    finally:
        for m in convs:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("_prm_dynamic_same", None)


def normalise(grads):
    """Input gradients [P, 3, H, W] -> response maps [P, H, W]: sum RGB, clamp >= 0, sum to 1."""
    r = grads.sum(dim=1).clamp(min=0)
    total = r.flatten(1).sum(dim=1).view(-1, 1, 1)
    return torch.where(total > 0, r / total.clamp(min=torch.finfo(r.dtype).tiny), r)


class PeakBackprop:
    """Forward one image once; then the response maps of its class-map peaks.

    pb = PeakBackprop(model, image, upsample=8)   # image: float [1, 3, H, W] in [0, 1]
    pb.class_maps        # raw class maps [1, C, h, w]
    pb.upsampled_maps    # bilinearly upsampled x `upsample`, where peaks are found
    pb.response_maps(peaks)   # peaks: LongTensor [P, 3] (c, y, x) on the upsampled grid,
                              # or [P, 4] (b, c, y, x) with b == 0 -> float [P, H, W]

    batched=True: torch.func.vjp of the forward, vmapped over the P one-hot gradients, so each
    layer's backward runs once on a batch of P (autograd's is_grads_batched falls back to a
    per-peak loop for convolution backward on CPU). batched=False: an ordinary autograd graph
    and one backward pass per peak (the reference way; kept for tests and the benchmark).
    """

    def __init__(self, model, image, upsample=1, batched=True):
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"PeakBackprop takes one image [1, 3, H, W], got {tuple(image.shape)}")
        self.batched = batched
        self._input_hw = tuple(image.shape[-2:])

        def forward(x):
            with positive_backprop(model):
                maps = model(x)
            up = maps if upsample == 1 else F.interpolate(
                maps, scale_factor=upsample, mode="bilinear", align_corners=False)
            return up, maps.detach()

        with torch.enable_grad():
            if batched:
                up, self._vjp, maps = torch.func.vjp(forward, image.detach(), has_aux=True)
            else:
                self._image = image.detach().clone().requires_grad_(True)
                up, maps = forward(self._image)
                self._graph_output = up
        self.class_maps = maps.detach()
        self.upsampled_maps = up.detach()

    def response_maps(self, peaks, chunk=32):
        """Normalised response maps [P, H, W] at the input resolution (peaks in chunks of
        `chunk` per batched backward, which bounds the memory)."""
        peaks = torch.as_tensor(peaks, dtype=torch.long)
        if peaks.dim() == 2 and peaks.shape[1] == 4:
            peaks = peaks[:, 1:]
        if len(peaks) == 0:
            return self.upsampled_maps.new_zeros((0,) + self._input_hw)
        out = []
        if self.batched:
            with torch.no_grad():
                for start in range(0, len(peaks), chunk):
                    (g,) = torch.func.vmap(self._vjp)(self._onehot(peaks[start:start + chunk]))
                    out.append(normalise(g[:, 0]))
        else:
            for p in peaks:
                (g,) = torch.autograd.grad(self._graph_output, self._image,
                                           self._onehot(p[None])[0], retain_graph=True)
                out.append(normalise(g))
        return torch.cat(out)

    def _onehot(self, peaks):
        up = self.upsampled_maps
        onehot = up.new_zeros((len(peaks),) + tuple(up.shape))
        onehot[torch.arange(len(peaks)), 0, peaks[:, 0], peaks[:, 1], peaks[:, 2]] = 1.0
        return onehot

    def release(self):
        """Drop the recorded forward (frees the saved activations)."""
        self._vjp = self._graph_output = self._image = None
