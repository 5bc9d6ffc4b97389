"""Peak stimulation (PRM, Zhou et al. 2018): class scores from the local maxima of class maps.

A location is a peak of its class map when it is the maximum of its window x window
neighbourhood and at least the map's filter value (median by default; 'mean' or a constant
are the alternatives). The class score is the mean of the map at its peaks; in the backward
pass the gradient goes to the peak locations only, 1/num_peaks each, so training sharpens
the peaks instead of spreading the response over the whole map.
"""

import torch
import torch.nn.functional as F

PEAK_FILTERS = ("median", "mean")


def filter_values(maps, peak_filter="median"):
    """The per-map threshold [B, C, 1, 1] a peak must reach.

    'median' is torch's lower median of each map (as in the PRM reference), 'mean' the mean,
    a number the same constant for every map.
    """
    b, c = maps.shape[:2]
    flat = maps.detach().reshape(b, c, -1)
    if peak_filter == "median":
        return flat.median(dim=2).values.view(b, c, 1, 1)
    if peak_filter == "mean":
        return flat.mean(dim=2).view(b, c, 1, 1)
    if isinstance(peak_filter, (int, float)) and not isinstance(peak_filter, bool):
        return torch.full((b, c, 1, 1), float(peak_filter), dtype=maps.dtype, device=maps.device)
    raise ValueError(f"peak_filter must be one of {PEAK_FILTERS} or a number, not {peak_filter!r}")


def peak_mask(maps, window=3, peak_filter="median"):
    """Boolean [B, C, H, W]: True at the peaks of each class map."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"peak window must be odd and positive, not {window}")
    maps = maps.detach()
    # max_pool2d pads with -inf, so border pixels compete only with real neighbours.
    local_max = F.max_pool2d(maps, window, stride=1, padding=window // 2)
    return (maps == local_max) & (maps >= filter_values(maps, peak_filter))


def find_peaks(maps, window=3, peak_filter="median"):
    """Peaks of class maps [B, C, H, W] as a LongTensor [P, 4] of (b, c, y, x), in order."""
    return peak_mask(maps, window, peak_filter).nonzero()


class PeakStimulation(torch.autograd.Function):
    """maps [B, C, H, W] -> class scores [B, C]: the mean of each map at its peaks.

    Backward: d score / d map = 1/num_peaks at each peak, 0 elsewhere. A map without any peak
    (possible only with a constant filter above its maximum) scores 0 and gets no gradient.
    """

    @staticmethod
    def forward(ctx, maps, window=3, peak_filter="median"):
        weights = peak_mask(maps, window, peak_filter).to(maps.dtype)
        counts = weights.sum(dim=(2, 3)).clamp(min=1)
        weights = weights / counts[:, :, None, None]
        ctx.save_for_backward(weights)
        return (maps * weights).sum(dim=(2, 3))

    @staticmethod
    def backward(ctx, grad_scores):
        (weights,) = ctx.saved_tensors
        return grad_scores[:, :, None, None] * weights, None, None


def peak_stimulation(maps, window=3, peak_filter="median", upsample=1):
    """Class scores [B, C] of class maps [B, C, H, W].

    upsample > 1 bilinearly enlarges the maps first (PRM's sub-pixel peak locating), with
    ordinary autograd through the interpolation.
    """
    if upsample != 1:
        maps = F.interpolate(maps, scale_factor=upsample, mode="bilinear", align_corners=False)
    return PeakStimulation.apply(maps, window, peak_filter)
