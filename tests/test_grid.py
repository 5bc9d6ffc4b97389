"""Feature-map geometry (tag2mask.peaks.grid): where class-map cells and peaks lie on the image."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from tag2mask.classifier.model import PeakClassifier
from tag2mask.core.config import section_options
from tag2mask.peaks.extract import image_peaks, peak_pixels
from tag2mask.peaks.grid import input_to_image, layer_stride, resample, upsampled_to_cell


def centre_tap(model, gain=0.5):
    """Every conv passes only its kernel's centre tap (the mean over its input channels, times
    `gain`), BatchNorm is the identity: cell j of a stride-s layer then reads input pixel s * j
    alone, exactly where the layers are centred."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            w = torch.zeros_like(m.weight)
            w[:, :, m.kernel_size[0] // 2, m.kernel_size[1] // 2] = gain / w.shape[1]
            m.weight.data.copy_(w)
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
            m.reset_running_stats()
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("backbone,stride", [("tiny", 8), ("resnet18", 16),
                                             ("efficientnet_lite0", 16)])
def test_backbone_cells_sit_on_input_pixels_stride_times_index(backbone, stride):
    """Known answer: the input gradient of class-map cell (i, j) is one input pixel, (s i, s j)
    (the premise of tag2mask.peaks.grid; a plain resize would put the cell at s (i + 0.5) - 0.5)."""
    torch.manual_seed(0)
    model = centre_tap(PeakClassifier(backbone, ["a"], stride=stride))
    size = 4 * stride
    yy, xx = np.mgrid[:size, :size]
    # ResNet's max pooling picks its window's maximum: make that its centre (pixels at
    # multiples of 4 brighter); everything stays positive, so every ReLU passes
    image = torch.from_numpy(0.6 + 0.4 * ((yy % 4 == 0) & (xx % 4 == 0))).float()
    image = image.expand(1, 3, size, size).clone().requires_grad_(True)
    maps = model(image)
    assert maps.shape[-2:] == (4, 4)
    for i, j in [(0, 0), (1, 3), (3, 2)]:
        (g,) = torch.autograd.grad(maps[0, 0, i, j], image, retain_graph=True)
        g = g[0].sum(0)
        assert g.max() > 0
        np.testing.assert_array_equal(torch.nonzero(g).tolist(), [[stride * i, stride * j]])


def test_grid_functions_known_answers():
    assert layer_stride(224, 14) == 16 and layer_stride(224, 56) == 4 and layer_stride(97, 7) == 16
    # x8 upsampling (align_corners=False): pixel 8 j + 3.5 is cell j
    np.testing.assert_allclose(upsampled_to_cell([3.5, 11.5, 0], 8), [0, 1, -7 / 16])
    # a 224-pixel input over a 128-pixel image: input pixel 111.5 is the image's middle, 63.5
    np.testing.assert_allclose(input_to_image([[111.5, 0]], (224, 224), (128, 128)),
                               [[63.5, 0.5 * 128 / 224 - 0.5]])
    # a one-hot cell j of a stride-4 map -> a tent at input pixel 4 j, zero a cell away
    maps = torch.zeros(1, 1, 5, 6, dtype=torch.float64)
    maps[0, 0, 2, 3] = 1.0
    out = resample(maps, 4, (20, 24), (20, 24))[0, 0]
    assert out[8, 12] == 1.0 and out[8, 14] == 0.5 and out[6, 12] == 0.5
    assert out[8, 16] == 0 and out[4, 12] == 0 and out.argmax() == 8 * 24 + 12
    # on a coarser grid over the same input: pixel t of 10 lies at input 2 t + 0.5
    half = resample(maps, 4, (20, 24), (10, 12))[0, 0]
    np.testing.assert_allclose(half[4, 6], (1 - 0.5 / 4) ** 2)
    # beyond the last cell (input pixels 17..19 of 20 at stride 4): the border value
    edge = torch.arange(5, dtype=torch.float64).view(1, 1, 5, 1).expand(1, 1, 5, 6)
    col = resample(edge, 4, (20, 24), (20, 24))[0, 0, :, 0]
    np.testing.assert_allclose(col[[0, 2, 16, 17, 19]], [0, 0.5, 4, 4, 4])


@pytest.mark.parametrize("layer", [None, "backbone.features.2"])
def test_object_at_known_position_gives_peak_there(layer):
    """A bright blob on a 64 px image read at 112 px by a centre-tap classifier (stride 8,
    14x14 class maps, like the demo's 128 -> 224 px at stride 16): the peak, the response
    map's argmax and the stored class map's maximum lie on the blob (within the x8 upsampled
    grid's 1/16 cell), not half a cell (2 image pixels) down and right of it."""
    model = centre_tap(PeakClassifier("tiny", ["a"], stride=8))
    options = section_options(json.dumps({"upsample": 8, "map_size": 64, "panels": 0,
                                          "response_layer": layer}), "peaks")
    scale = 64 / 112
    for cell in [(5, 5), (3, 9), (9, 6)]:
        # the blob centred on input pixel 8 * cell, i.e. at this image pixel
        centre = input_to_image(np.multiply(cell, 8.0), (112, 112), (64, 64))
        yy, xx = np.mgrid[:64, :64]
        blob = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * 3.0 ** 2))
        rgb = np.repeat((40 + 215 * blob).round().astype(np.uint8)[..., None], 3, -1)
        arrays = image_peaks(model, rgb, [0], options, "cpu", 112)
        best = int(np.argmax(arrays["peak_value"]))
        # the x8 maps' maximum is one of the 2 pixels around the cell, 1/16 cell off it
        assert np.abs(arrays["peak_yx"][best] - centre).max() <= 0.5 * scale + 1e-4
        np.testing.assert_allclose(arrays["response_argmax_yx"][best], centre, atol=0.5 * scale)
        cmap = arrays["class_maps"][0].astype(np.float32)
        assert np.hypot(*(np.unravel_index(cmap.argmax(), cmap.shape) - centre)) <= 0.75


def test_peak_pixels():
    # cell (0, 13) of a stride-16 14x14 map over a 224 px input, 128 px image: input (0, 208)
    expected = [[0.5 * 128 / 224 - 0.5, 208.5 * 128 / 224 - 0.5]]
    np.testing.assert_allclose(peak_pixels([[0, 13]], 1, 16, (14, 14), (224, 224), (128, 128)),
                               expected, rtol=1e-6)
    # x8: pixels 11 / 107 lie 1/16 cell before the cells 1 / 13 (input 15 / 207); pixels 0
    # and 111 of the border plateaus (beyond the first and last cells) are those cells
    got = peak_pixels([[11, 107], [0, 111]], 8, 16, (14, 14), (224, 224), (128, 128))
    np.testing.assert_allclose(got[0], input_to_image([15, 207], (224, 224), (128, 128)),
                               rtol=1e-6)
    np.testing.assert_allclose(got[1], expected[0], rtol=1e-6)
