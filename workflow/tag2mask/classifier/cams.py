"""Class activation maps of the peak classifier at several scales and flips, on one grid.

IRNet (Ahn et al. 2019) takes its seeds from class activation maps averaged over input scales
and horizontal flips. `multiscale_class_maps` runs the classifier on the image resized to
round(input_size * s) for every scale s, on the image and its mirror, and samples every pass's
raw class maps at the cells of one grid over the input_size x input_size input.

Geometry (as tag2mask.peaks.grid): a class-map cell k of a stride-s classifier lies at input
pixel s * k, not at the centre of an s-pixel block. Grid cell i of the output lies at input
pixel grid_stride * i of the input_size square, so a grid of stride 4 lines up with the
stride-4 features IRNet works on. Pixel p of the input_size square lies at pixel
(p + 0.5) * S / input_size - 0.5 of a scaled input of S pixels; on the mirrored input, at
S - 1 minus that.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def grid_size(input_size, grid_stride):
    """Cells per side of a stride-`grid_stride` grid over an input of input_size pixels."""
    return math.ceil(input_size / grid_stride)


def _axis(pixel, base, scaled, stride, n_cells, mirrored):
    """Normalised sampling coordinates (grid_sample, align_corners=True) on one axis of a
    scaled pass's class maps of the given base-input pixel coordinates."""
    pixel = (pixel + 0.5) * scaled / base - 0.5                          # scaled input pixels
    if mirrored:
        pixel = scaled - 1 - pixel
    cell = pixel / stride
    if n_cells == 1:
        return torch.zeros_like(cell)
    return cell * 2 / (n_cells - 1) - 1


def sample_at(maps, stride, base, scaled, pixels_yx, mirrored=False):
    """Bilinear values of class maps [B, C, h, w] of a stride-`stride` classifier run on a
    scaled x scaled input at the base-input pixel coordinates (rows, cols) `pixels_yx`, two
    1-d tensors (border values beyond the first and last cells); `mirrored`: the maps are of
    the mirrored input. Returns [B, C, len(rows), len(cols)]."""
    rows, cols = (torch.as_tensor(v, dtype=torch.float64) for v in pixels_yx)
    xs = _axis(cols, base, scaled, stride, maps.shape[-1], mirrored)
    ys = _axis(rows, base, scaled, stride, maps.shape[-2], False)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], -1).to(maps.dtype).to(maps.device)
    grid = grid[None].expand(maps.shape[0], -1, -1, -1)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)


def sample_on_grid(maps, stride, base, scaled, n_grid, grid_stride, mirrored=False):
    """sample_at the cells of the n_grid x n_grid grid over the base input (cell i at base
    input pixel grid_stride * i)."""
    pixel = torch.arange(n_grid, dtype=torch.float64) * grid_stride
    return sample_at(maps, stride, base, scaled, (pixel, pixel), mirrored)


def resized_input(rgb, size, device):
    """uint8 RGB [H, W, 3] -> float [1, 3, size, size] in [0, 1] (the training resize)."""
    img = Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)[None]
    return x.to(device)


@torch.no_grad()
def multiscale_class_maps(model, rgb, input_size, scales=(1.0,), flip=True, device="cpu",
                          grid_stride=None, positive=True, classes=None, pixels_yx=None):
    """The classifier's class maps of one image, averaged over scales and flips: float32
    [C, G, G] on the CPU (C: all classes, or the indices in `classes`), G = ceil(input_size /
    grid_stride); grid_stride defaults to the classifier's stride.

    model: a PeakClassifier in eval mode (raw class maps [B, C, h, w]); rgb: uint8 [H, W, 3],
    resized to round(input_size * s) square per scale (the classifier's training resize);
    flip: also run the mirrored image (both passes in one batch); positive: clamp every pass's
    maps at 0 before averaging (IRNet's CAMs; False averages the raw maps). pixels_yx: sample
    at these (rows, cols) of the input_size square instead of the grid ([C, rows, cols]).
    """
    stride = model.stride
    if pixels_yx is None:
        pixel = torch.arange(grid_size(input_size, grid_stride or stride),
                             dtype=torch.float64) * (grid_stride or stride)
        pixels_yx = (pixel, pixel)
    several = isinstance(pixels_yx, list)
    positions = pixels_yx if several else [pixels_yx]
    totals = [0.0] * len(positions)
    passes = 0
    for s in scales:
        size = max(stride, int(round(input_size * s)))
        x = resized_input(rgb, size, device)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        maps = model(x).float()
        if classes is not None:
            maps = maps[:, list(classes)]
        if positive:
            maps = maps.clamp(min=0)
        for i, yx in enumerate(positions):
            out = sample_at(maps[:1], stride, input_size, size, yx)
            if flip:
                out = out + sample_at(maps[1:], stride, input_size, size, yx, mirrored=True)
            totals[i] = totals[i] + out[0]
        passes += len(maps)
    averaged = [(total / passes).cpu() for total in totals]
    return averaged if several else averaged[0]
