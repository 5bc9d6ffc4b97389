"""Retrieval rule `wise` (Laradji et al. 2019): among the proposals that cover the peak's point
(the peak itself, or the argmax of its response map with `point: argmax`, WISE's choice), the
one with the highest objectness; then tag2mask.retrieval.select.suppress_and_merge."""

import numpy as np

from .select import suppress_and_merge


def select(inp, options):
    n_peaks = len(inp.peak_class)
    table = np.broadcast_to(inp.objectness[None].astype(np.float64),
                            (n_peaks, len(inp.valid)))
    allowed = inp.covers[:, :n_peaks].T & inp.valid[None]
    return suppress_and_merge(inp, np.where(allowed, table, -np.inf), options)
