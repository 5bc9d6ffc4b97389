"""What the report reads: its inputs (`ReportInputs`, each optional part a `Part`: a path or
the reason it is not available) and the readers of the run's files (evaluation JSONs, log.jsonl
files, Snakemake benchmark files, ground truth, Mask R-CNN results, self-training stores)."""

import csv
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError

log = logging.getLogger(__name__)

NOT_GIVEN = "not produced by this run"


@dataclass
class Part:
    """An optional input: a path, or the reason it is not available."""
    path: Path = None
    reason: str = NOT_GIVEN

    @property
    def available(self):
        return self.path is not None and Path(self.path).exists()

    def why(self):
        if self.path is not None and not Path(self.path).exists():
            return f"{self.path} does not exist"
        return self.reason


def _input(help):
    """An optional input of the report (`--input NAME=PATH`; tag2mask.report.cli lists them)."""
    return field(default_factory=Part, metadata={"help": help})


@dataclass
class ReportInputs:
    manifest: Path
    run_name: str = ""
    eval_split: str = "val"  # split of the upper-bound and self-training evaluations
    rounds_reason: str = "self-training was not run"  # shown when round_evals is empty
    pseudo_eval: Part = _input("evaluation JSON of the pseudo masks (train)")
    maskrcnn_train_eval: Part = _input("evaluation JSON of Mask R-CNN on the training images")
    maskrcnn_eval: Part = _input("evaluation JSON of Mask R-CNN on val")
    upper_bound_eval: Part = _input("evaluation JSON of the upper bound (on the eval split)")
    classifier_log: Part = _input("classifier log.jsonl")
    maskrcnn_log: Part = _input("Mask R-CNN log.jsonl")
    upper_bound_log: Part = _input("upper-bound Mask R-CNN log.jsonl")
    peaks: Part = _input("peaks store")
    peaks_quality: Part = _input("peak quality JSON (peaks evaluate; evaluation side)")
    proposals_quality: Part = _input("proposal quality JSON (proposals evaluate; evaluation "
                                     "side)")
    pseudo_masks: Part = _input("pseudo-mask store")
    predictions_val: Part = _input("Mask R-CNN COCO results on val")
    gt_train: Part = _input("ground truth of the train split (pictures only)")
    gt_val: Part = _input("ground truth of the val split (pictures only)")
    round_evals: dict = field(default_factory=dict)          # round -> Part (val)
    round_stores: dict = field(default_factory=dict)         # round -> Part (pseudo masks)
    round_logs: dict = field(default_factory=dict)           # round -> Part
    benchmarks: Part = field(default_factory=Part)           # folder of Snakemake .tsv files
    shards: int | None = None  # this run's shard count: older runs' extra shard files are stale
    rounds: int | None = None  # this run's self-training rounds (likewise for later rounds)
    upper_bound: bool | None = None  # whether this run trains the upper bound
    val_split: bool | None = None  # whether this run has a val split


def read_evaluation(part):
    """An evaluation JSON (tag2mask evaluation score) or None."""
    data = read_json(part)
    if data is not None and "mAP@0.5" not in data:
        raise InputError(part.path, "not a tag2mask evaluation (no mAP@0.5)")
    return data


def read_json(part):
    """A JSON object of the run (quality figures) or None when the part is not available."""
    if not part.available:
        return None
    try:
        data = json.loads(Path(part.path).read_text())
    except json.JSONDecodeError as e:
        raise InputError(part.path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(part.path, "not a JSON object")
    return data


def read_jsonl(part):
    """Records of a log.jsonl (blank lines skipped); [] when not available."""
    if not part.available:
        return []
    out = []
    for i, line in enumerate(Path(part.path).read_text().splitlines()):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(part.path, f"line {i + 1} is not JSON ({e})") from None
    return out


def read_benchmarks(folder, shards=None, rounds=None, upper_bound=None, val_split=None):
    """Stage -> {jobs, seconds (sum of the `s` column), max} from Snakemake benchmark files.

    Files of one sharded stage (e.g. peaks_0.tsv, peaks_1.tsv or peaks/3.tsv) are summed
    into one stage (trailing shard numbers are dropped from the name). Only the current
    run's files count: the folder keeps files of jobs an earlier run with other settings
    made, which this run does not (`stale_benchmark` says which, from the run facts given:
    the shard count, the self-training rounds, the upper bound, the val split)."""
    stages = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "max": 0.0})
    folder = Path(folder)
    for path in sorted(folder.rglob("*.tsv")):
        rel = path.relative_to(folder).with_suffix("").as_posix()
        why = stale_benchmark(rel, shards, rounds, upper_bound, val_split)
        if why:
            log.info("%s: left by an earlier run (%s), ignored", path, why)
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows or "s" not in rows[0]:
            log.warning("%s: no `s` column, ignored", path)
            continue
        stage = re.sub(r"[/_.-]?(shard[_-]?)?\d+$", "", rel) or rel
        for row in rows:
            try:
                s = float(row["s"])
            except (TypeError, ValueError):
                continue
            st = stages[stage]
            st["jobs"] += 1
            st["seconds"] += s
            st["max"] = max(st["max"], s)
    return dict(stages)


def stale_benchmark(name, shards=None, rounds=None, upper_bound=None, val_split=None):
    """Why the benchmark file `name` (relative to the benchmarks folder, no suffix) is not a
    job of this run, or None. The names are the rules' `benchmark:` paths (rules/*.smk):
    <stage>/<shard> for the sharded stages (extract_peaks, propose, make_pseudo_masks, and any other
    stage that names its files by shard), self_training_masks_<r>, and per model
    train_maskrcnn/<model>, predict/<model>_<split>, evaluate_predictions/<model>_<split>
    with <model> maskrcnn, upper_bound or self_training/round_<r>."""
    parts = name.split("/")
    if shards is not None and len(parts) == 2 and parts[1].isdigit() and int(parts[1]) >= shards:
        return f"shard {parts[1]}, this run has {shards}"
    m = re.search(r"(?:^self_training_masks_|(?:^|/)self_training/round_)(\d+)(?:_|$)", name)
    if rounds is not None and m and int(m.group(1)) > rounds:
        return f"self-training round {m.group(1)}, this run has {rounds}"
    if upper_bound is False and (name == "gt_training_masks" or re.search(
            r"(?:^|/)upper_bound(?:_|$)", name)):
        return "upper bound, which this run does not train"
    if val_split is False and len(parts) >= 2 and parts[0] in ("predict", "evaluate_predictions") \
            and name.endswith("_val"):
        return "val split, which this run does not have"
    return None


def read_gt_index(part):
    """Image name -> (mask RLE counts, class indices, height, width) of a ground-truth JSON
    (non-crowd instances); None when not available."""
    if not part.available:
        return None
    gt = json.loads(Path(part.path).read_text())
    images = {im["id"]: im for im in gt["images"]}
    out = {im.get("name", str(im["id"])): ([], [], im["height"], im["width"])
           for im in gt["images"]}
    for a in gt["annotations"]:
        if a.get("iscrowd"):
            continue
        im = images[a["image_id"]]
        seg = a["segmentation"]
        if isinstance(seg, dict) and isinstance(seg.get("counts"), str):
            entry = out[im.get("name", str(im["id"]))]
            entry[0].append(seg["counts"])
            entry[1].append(a["category_id"] - 1)
    return out


def read_predictions(part, min_score):
    """COCO image id -> Mask R-CNN results (COCO results JSON) scoring at least `min_score`;
    None when not available."""
    if not part.available:
        return None
    out = defaultdict(list)
    for p in json.loads(Path(part.path).read_text()):
        if p["score"] >= min_score:
            out[int(p["image_id"])].append(p)
    return out


# the pseudo-mask store's root attr `method` -> how the report names the method
PSEUDO_MASK_METHODS = {"irnet": "IRNet", "wise": "retrieval, WISE rule",
                       "prm": "retrieval, PRM score", "consensus": "retrieval, consensus rule"}


def pseudo_mask_method(part):
    """How the run made its pseudo masks, from the store's root attr `method` (IRNet or
    retrieval, with its rule); "pseudo masks" when the store is not available."""
    if not part.available:
        return "method unknown"
    from ..core.store import StoreReader

    with StoreReader(part.path, "pseudo_masks") as s:
        method = str(s.attrs.get("method", ""))
    return PSEUDO_MASK_METHODS.get(method, method or "method unknown")


def pseudo_mask_figures(part):
    """{images, instances, median score; verified, median verification score, share of masks
    whose confidence verification lowered} of a pseudo-mask store, or None when not
    available."""
    if not part.available:
        return None
    import numpy as np

    from ..core.store import StoreReader

    scores, verification = [], []
    with StoreReader(part.path, "pseudo_masks") as s:
        ids = s.image_ids
        verified = "verification" in s.attrs
        for image_id in ids:
            entry = s.read(image_id, ["scores", "verification_scores"] if verified
                           else ["scores"])
            scores.append(np.asarray(entry["scores"], np.float64))
            verification.append(np.asarray(entry.get("verification_scores", []), np.float64))
        lowered = int(s.attrs.get("count_verified_masks_lowered", 0))
    scores = np.concatenate(scores) if scores else np.zeros(0)
    verification = np.concatenate(verification) if verification else np.zeros(0)
    verification = verification[~np.isnan(verification)]  # NaN: not shown (skip_below)
    median = lambda x: float(np.median(x)) if len(x) else None
    return {"images": len(ids), "instances": len(scores), "median_score": median(scores),
            "verified": verified, "median_verification": median(verification),
            "lowered": lowered / len(scores) if verified and len(scores) else None}


def read_merge_stats(part):
    """The `merge_stats` of a self-training round's pseudo-mask store ({} when it has none)."""
    from ..core.store import StoreReader  # h5py: only when there are rounds

    with StoreReader(part.path, "pseudo_masks") as s:
        return json.loads(s.attrs.get("merge_stats", "{}"))
