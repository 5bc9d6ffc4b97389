"""Where the cells of a strided feature map (class maps, a layer's output) lie on the image.

Every backbone here is built of convolutions and poolings with odd kernels and symmetric zero
padding d * (k - 1) / 2 (tests/test_grid.py checks them). Output cell j of such a stride-s
layer is centred on input pixel s * j, so a stride-s map's cells lie at input pixels 0, s, 2s,
... ("corner-aligned"), not at the centres (j + 0.5) s - 0.5 of s-pixel blocks that a plain
resize (F.interpolate with align_corners=False) assumes: that would put every cell (s - 1) / 2
input pixels too far right and down (7.5 px at stride 16; 4.3 image pixels on the demo's
128 px images read at 224 px).

Coordinates are of pixel centres (pixel p covers [p - 0.5, p + 0.5]). The classifier's input
is the image resized to a square (the training resize, centre-aligned): input pixel p lies at
image pixel (p + 0.5) N / S - 0.5 for an S-pixel input axis over an N-pixel image axis.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


def layer_stride(input_size, size):
    """Stride of a map of `size` cells over an input axis of `input_size` pixels: the power of
    two nearest input_size / size (centred strided layers give ceil(input_size / stride))."""
    return 2 ** max(0, round(math.log2(input_size / size)))


def upsampled_to_cell(index, factor):
    """Cell coordinates of pixels of a map bilinearly upsampled x `factor`
    (F.interpolate(scale_factor=factor, align_corners=False))."""
    return (np.asarray(index, np.float64) + 0.5) / factor - 0.5


def cell_to_input(cells, stride):
    """Input pixel coordinates of (fractional) cell coordinates of a stride-`stride` map."""
    return np.asarray(cells, np.float64) * stride


def input_to_image(pixels, input_hw, image_hw):
    """Pixel (row, col) coordinates [..., 2] on an input of input_hw pixels -> image pixels."""
    scale = np.asarray(image_hw, np.float64) / np.asarray(input_hw, np.float64)
    return (np.asarray(pixels, np.float64) + 0.5) * scale - 0.5


def resample(maps, stride, input_hw, out_hw):
    """Bilinear values of maps [B, C, h, w] of a stride-`stride` layer (cell j at input pixel
    stride * j) at the pixel centres of an out_hw grid spanning the input_hw input (the
    input itself, or the image at any resolution): [B, C, *out_hw]. Beyond the first and last
    cells the border value."""
    axes = []
    for n_out, n_in, n_cells in zip(out_hw, input_hw, maps.shape[-2:]):
        pixel = (torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5
        cell = pixel / stride
        # grid_sample with align_corners=True: -1 and 1 are the first and last cells' centres
        axes.append(cell * 2 / (n_cells - 1) - 1 if n_cells > 1 else torch.zeros_like(cell))
    ys, xs = torch.meshgrid(axes[0], axes[1], indexing="ij")
    grid = torch.stack([xs, ys], -1).to(maps.dtype).to(maps.device)
    grid = grid[None].expand(maps.shape[0], -1, -1, -1)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)
