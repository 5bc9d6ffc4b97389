"""Peak response maps: the input gradient of one class peak under the positive-weight rule
(tag2mask.peaks.positive_rule). A peak's response map is the input gradient of the one-hot
peak, summed over RGB, clamped at 0 and divided by its sum.

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

import torch
import torch.nn.functional as F

from ..core.errors import InputError
from .grid import layer_stride, resample
from .positive_rule import positive_backprop


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
