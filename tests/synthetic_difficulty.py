"""Difficulty measures of the synthetic dataset: how much colour alone gives away about class
and foreground. Used by tests/test_datasets_synthetic.py and benchmarks/synthetic_stats.py
(which puts tests/ on sys.path); not part of the package."""

import numpy as np

from tag2mask.dataset.synthetic import CLASSES, LUMINANCE


def colour_features(rgb):
    """Per pixel [H*W, 5]: R, G, B, luminance, saturation."""
    f = rgb.reshape(-1, 3).astype(np.float64)
    hi, lo = f.max(axis=1), f.min(axis=1)
    return np.column_stack([f, f @ LUMINANCE, (hi - lo) / np.maximum(hi, 1)])


def nearest_mean_accuracy(train_x, train_y, test_x, test_y, n_classes):
    """Accuracy of classifying feature vectors by the nearest per-class mean."""
    means = np.stack([train_x[train_y == k].mean(axis=0) for k in range(n_classes)])
    pred = np.argmin(((test_x[:, None] - means[None]) ** 2).sum(axis=-1), axis=1)
    return float((pred == test_y).mean())


def best_threshold_balanced_accuracy(values, is_foreground):
    """Best balanced accuracy of `value >= t` (or `<`) as a foreground detector, over all t."""
    order = np.argsort(values, kind="stable")
    fg = np.asarray(is_foreground)[order].astype(np.float64)
    tp = np.cumsum(fg[::-1])[::-1]  # foreground at or above each cut
    fp = np.cumsum(1 - fg[::-1])[::-1]
    bacc = 0.5 * (tp / fg.sum() + 1 - fp / (1 - fg).sum())
    return float(max(bacc.max(), (1 - bacc).max()))


def colour_shortcuts(samples):
    """Colour-only baselines on generated samples (chance: 1/classes and 0.5).

    instance_class_accuracy: nearest class-mean of an instance's mean colour (means from the
    first half of the images, tested on the second); global_threshold: best balanced accuracy
    of one threshold on one colour feature separating foreground from background over all
    images; per_image_threshold_median: the same, threshold and feature chosen per image
    with the answer known (an oracle), median over images."""
    feats, labels, image_index = [], [], []
    for i, s in enumerate(samples):
        for m, c in zip(s.masks, s.classes):
            feats.append(s.rgb[m].astype(np.float64).mean(axis=0))
            labels.append(c)
            image_index.append(i)
    feats, labels, image_index = map(np.array, (feats, labels, image_index))
    first = image_index < len(samples) // 2
    pixels = [colour_features(s.rgb) for s in samples]
    fgs = [s.masks.any(axis=0).ravel() for s in samples]
    all_pixels, all_fg = np.concatenate(pixels), np.concatenate(fgs)
    return {
        "instance_class_accuracy": nearest_mean_accuracy(
            feats[first], labels[first], feats[~first], labels[~first], len(CLASSES)),
        "global_threshold": max(best_threshold_balanced_accuracy(all_pixels[:, j], all_fg)
                                for j in range(all_pixels.shape[1])),
        "per_image_threshold_median": float(np.median([
            max(best_threshold_balanced_accuracy(f[:, j], fg) for j in range(f.shape[1]))
            for f, fg in zip(pixels, fgs)])),
        "foreground_fraction": float(all_fg.mean()),
    }
