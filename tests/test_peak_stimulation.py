import pytest
import torch

from tag2mask.classifier.peak_stimulation import (
    PeakStimulation,
    filter_values,
    find_peaks,
    peak_mask,
    peak_stimulation,
)


def two_peak_map():
    """One 1x1x7x7 map: a plain of zeros with peaks 5 at (1,1) and 3 at (5,4)."""
    m = torch.zeros(1, 1, 7, 7)
    m[0, 0, 1, 1] = 5.0
    m[0, 0, 5, 4] = 3.0
    m[0, 0, 1, 2] = 4.0  # a neighbour of the first peak: not a peak itself
    return m


def test_find_peaks_known_answer_with_mean_filter():
    m = two_peak_map()
    # mean = 12/49 > 0, so the flat zero plain does not count; only the two maxima do
    assert find_peaks(m, 3, "mean").tolist() == [[0, 0, 1, 1], [0, 0, 5, 4]]


def test_median_filter_keeps_plateau_maxima_and_constant_filter_cuts():
    m = two_peak_map()
    # the median is 0: every zero that is its window's maximum is a peak too (PRM's rule)
    peaks = find_peaks(m, 3, "median")
    assert [0, 0, 1, 1] in peaks.tolist() and [0, 0, 5, 4] in peaks.tolist()
    assert [0, 0, 1, 2] not in peaks.tolist()
    assert [0, 0, 3, 6] in peaks.tolist()  # far from both peaks: a window of zeros
    assert find_peaks(m, 3, 3.5).tolist() == [[0, 0, 1, 1]]


def test_window_size_and_batches():
    m = torch.zeros(2, 3, 9, 9) - 1
    m[1, 2, 4, 4] = 2.0
    m[1, 2, 4, 6] = 1.0  # 2 pixels away: a peak with window 3, not with window 5
    m[0, 1, 0, 0] = 1.0  # corner: border padding must not hide it
    p3 = find_peaks(m, 3, "mean").tolist()
    p5 = find_peaks(m, 5, "mean").tolist()
    assert [1, 2, 4, 6] in p3 and [1, 2, 4, 6] not in p5
    assert [1, 2, 4, 4] in p5 and [0, 1, 0, 0] in p5
    with pytest.raises(ValueError):
        peak_mask(m, 4)


def test_median_is_the_lower_median():
    m = torch.arange(6.0).view(1, 1, 2, 3)
    assert filter_values(m, "median").item() == 2.0
    assert filter_values(m, "mean").item() == 2.5


def test_scores_are_the_mean_at_peaks_and_gradient_goes_to_peaks_equally():
    m = two_peak_map().requires_grad_()
    scores = peak_stimulation(m, 3, "mean")
    assert scores.shape == (1, 1)
    assert scores.item() == pytest.approx(4.0)  # (5 + 3) / 2
    scores.sum().backward()
    expected = torch.zeros_like(m)
    expected[0, 0, 1, 1] = expected[0, 0, 5, 4] = 0.5
    assert torch.equal(m.grad, expected)


def test_map_without_peaks_scores_zero_and_gets_no_gradient():
    m = torch.zeros(1, 2, 4, 4, requires_grad=True)
    scores = PeakStimulation.apply(m, 3, 10.0)
    scores.sum().backward()
    assert scores.tolist() == [[0.0, 0.0]]
    assert not m.grad.any()


def test_gradcheck_double_precision():
    torch.manual_seed(0)
    maps = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    for peak_filter in ("median", "mean", 0.0):
        assert torch.autograd.gradcheck(lambda x: PeakStimulation.apply(x, 3, peak_filter),
                                        (maps,), eps=1e-6, atol=1e-8)
    # with upsampling the bilinear interpolation is differentiated by autograd
    assert torch.autograd.gradcheck(lambda x: peak_stimulation(x, 3, "median", upsample=2),
                                    (maps,), eps=1e-6, atol=1e-8)


def test_upsampling_finds_peaks_on_the_finer_grid():
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 1, 2] = 1.0
    scores = peak_stimulation(m, 3, "mean", upsample=4)
    fine = torch.nn.functional.interpolate(m, scale_factor=4, mode="bilinear")
    assert scores.item() == pytest.approx(fine.max().item())


def test_classifier_scores_by_pooling():
    """mean pools the whole map (a broad response beats a single spike); peak scores the
    map at its local maxima above the filter (the spike wins)."""
    from tag2mask.classifier.model import PeakClassifier

    maps = torch.zeros(1, 2, 8, 8)
    maps[0, 0] = 1.0             # class 0: broad, flat evidence
    maps[0, 1, 3, 3] = 20.0      # class 1: one strong spike
    scores = {}
    for pooling in ("mean", "peak"):
        model = PeakClassifier("tiny", ["a", "b"], stride=8, peak_filter=0.5, pooling=pooling)
        scores[pooling] = model.scores(maps)
    assert torch.allclose(scores["mean"], torch.tensor([[1.0, 20.0 / 64]]))
    assert torch.allclose(scores["peak"], torch.tensor([[1.0, 20.0]]))
    with pytest.raises(Exception, match="classifier.pooling"):
        PeakClassifier("tiny", ["a"], stride=8, pooling="max")
