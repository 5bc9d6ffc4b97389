"""Proposal retrieval's rules, behind one registry: each picks one mask proposal per candidate
point of an image (the class peaks, and for some rules more), and the kept instances become the
image's pseudo masks (config `retrieval.method`; each rule's options under its name).

* ``consensus`` (tag2mask.retrieval.consensus, the default): the proposal covering the point
  with the highest expected IoU with the other covering proposals.
* ``prm`` (tag2mask.retrieval.prm; Zhou et al. 2018): the proposal with the best PRM score
  a * sum(R over S) + sum(R over contour(S)) - b * sum(Q over S).
* ``wise`` (tag2mask.retrieval.wise; Laradji et al. 2019): the highest-objectness proposal
  covering the peak's point.

A rule is a module with ``select(inp, options) -> Selection`` (inp: the image's
tag2mask.retrieval.working.WorkingInputs) and, optionally, ``extra_points(evidence, options,
height, width)`` (more candidates than the peaks) and ``VANISHING_PROPOSALS_VALID = False``
(proposals with no pixel at the working resolution cannot be scored). PRM and WISE rank the
peaks' choices the same way (`suppress_and_merge`).

Per-instance confidence of PRM and WISE (the ``scores`` of the pseudo-mask store, what the
evaluator ranks by):

    confidence = sigmoid(peak_value) * (mass of the merged response map inside the mask)

sigmoid(peak_value) is the classifier's own evidence for the class at that peak (the class maps
are logits); the response mass inside the mask (0..1, the merged map normalised to sum 1) says
how much of the evidence behind the peak the mask explains. Both are bounded and comparable
across images and rules, unlike the raw PRM score or the generator's objectness. PRM released
no per-instance confidence.
"""

import importlib
from dataclasses import dataclass

import numpy as np
import torch

# rule name -> its module (named in full, so that the rules' code digest follows it)
RULES = {"consensus": "tag2mask.retrieval.consensus", "prm": "tag2mask.retrieval.prm",
         "wise": "tag2mask.retrieval.wise"}


def rule(name):
    """The module of a retrieval rule."""
    return importlib.import_module(RULES[name])


@dataclass
class Selection:
    """What retrieval decided for one image. Candidates k < P are the peaks, indexed as in the
    peaks store (rules prm and wise have no others)."""
    proposal: np.ndarray      # int [K]: chosen proposal per candidate (-1: none)
    score: np.ndarray         # float [K]: retrieval score of that choice (PRM score, objectness
    #                           or consensus agreement)
    kept: np.ndarray          # int [N]: candidates whose instance survived NMS, best first
    merged_into: np.ndarray   # int [K]: kept candidate a suppressed one was merged into (-1)
    confidence: np.ndarray    # float [N]: per-instance confidence of `kept`


def select(inp, options):
    """The rule `options["method"]` on one image's working inputs."""
    return rule(options["method"]).select(inp, options)


def as_float(mask):
    """bool tensor -> float32 (via uint8: torch's direct bool->float cast is ~20x slower)."""
    return mask.view(torch.uint8).to(torch.float32)


def iou_matrix(masks):
    """IoU [M, M] of bool masks [M, h, w] (float64 numpy), by one matrix product."""
    flat = as_float(masks.flatten(1))
    inter = (flat @ flat.T).double().numpy()
    area = np.diag(inter)
    return inter / np.maximum(area[:, None] + area[None] - inter, 1e-10)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def suppress_and_merge(inp, table, options):
    """PRM's and WISE's end: each peak takes the best-scoring allowed proposal of `table` [P, M]
    (-inf: not allowed); the instances, sorted by that score (ties by peak value, then peak
    index), go through a greedy mask NMS (IoU >= nms_iou suppresses; the same proposal is always
    a duplicate). As in PRM's code, a suppressed duplicate's response map (inside its own
    mask) is added into the kept instance's, and the merged map gives the confidence."""
    o = options
    n_peaks, n_props = table.shape
    table = np.where(inp.has_response[:, None], table, -np.inf)
    if n_props:
        proposal = table.argmax(1)
        score = table[np.arange(n_peaks), proposal]
    else:
        proposal, score = np.zeros(n_peaks, np.int64), np.full(n_peaks, -np.inf)
    proposal = np.where(np.isfinite(score), proposal, -1)

    cand = np.flatnonzero(proposal >= 0)
    cand = cand[np.lexsort((cand, -inp.peak_value[cand], -score[cand]))]
    chosen = as_float(inp.masks[proposal[cand]].flatten(1))
    inter = (chosen @ chosen.T).double().numpy()
    area = np.diag(inter)
    iou = inter / np.maximum(area[:, None] + area[None] - inter, 1e-10)
    iou[proposal[cand][:, None] == proposal[cand][None]] = 1.0  # same proposal: a duplicate
    if not o["nms_class_agnostic"]:
        iou[inp.peak_class[cand][:, None] != inp.peak_class[cand][None]] = 0.0

    nms = o["nms_iou"]
    owner = np.arange(len(cand))  # position of the kept instance each candidate belongs to
    done = np.zeros(len(cand), bool)
    for i in range(len(cand)):  # greedy NMS: a loop over kept instances, vectorised inside
        if done[i]:
            continue
        done[i] = True
        if nms is not None:
            dup = ~done & (iou[i] >= nms)
            owner[dup] = i
            done |= dup
    keep_pos = np.flatnonzero(owner == np.arange(len(cand)))

    # Merged response maps: kept map + each suppressed duplicate's map inside its own mask.
    r = inp.response[cand].flatten(1)
    assign = torch.zeros((len(keep_pos), len(cand)))
    assign[np.searchsorted(keep_pos, owner), np.arange(len(cand))] = 1.0
    assign[np.arange(len(keep_pos)), keep_pos] = 0.0
    merged = r[keep_pos] + assign @ (r * chosen)
    inside = (merged * chosen[keep_pos]).sum(1) / merged.sum(1).clamp(min=1e-12)
    kept = cand[keep_pos]
    confidence = _sigmoid(inp.peak_value[kept]) * inside.double().numpy()

    merged_into = np.full(n_peaks, -1)
    merged_into[cand] = np.where(owner != np.arange(len(cand)), cand[owner], -1)
    keep = confidence >= o["min_score"]
    order = np.argsort(-confidence[keep], kind="stable")
    return Selection(proposal, score, kept[keep][order], merged_into, confidence[keep][order])
