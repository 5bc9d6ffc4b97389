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


@dataclass
class ReportInputs:
    manifest: Path
    run_name: str = ""
    eval_split: str = "val"  # split of the upper-bound and self-training evaluations
    rounds_reason: str = "self-training was not run"  # shown when round_evals is empty
    pseudo_eval: Part = field(default_factory=Part)         # pseudo masks vs GT (train)
    maskrcnn_train_eval: Part = field(default_factory=Part)  # Mask R-CNN on the train images
    maskrcnn_eval: Part = field(default_factory=Part)        # Mask R-CNN on val
    upper_bound_eval: Part = field(default_factory=Part)     # GT-trained Mask R-CNN on val
    round_evals: dict = field(default_factory=dict)          # round -> Part (val)
    round_stores: dict = field(default_factory=dict)         # round -> Part (pseudo masks)
    classifier_log: Part = field(default_factory=Part)
    maskrcnn_log: Part = field(default_factory=Part)
    upper_bound_log: Part = field(default_factory=Part)
    round_logs: dict = field(default_factory=dict)           # round -> Part
    benchmarks: Part = field(default_factory=Part)           # folder of Snakemake .tsv files
    shards: int | None = None  # this run's shard count: older runs' extra shard files are stale
    peaks: Part = field(default_factory=Part)
    pseudo_masks: Part = field(default_factory=Part)
    predictions_val: Part = field(default_factory=Part)      # COCO results of Mask R-CNN on val
    gt_train: Part = field(default_factory=Part)
    gt_val: Part = field(default_factory=Part)


def read_evaluation(part):
    """An evaluation JSON (tag2mask evaluation score) or None."""
    if not part.available:
        return None
    try:
        data = json.loads(Path(part.path).read_text())
    except json.JSONDecodeError as e:
        raise InputError(part.path, f"evaluation is not valid JSON ({e})") from None
    if not isinstance(data, dict) or "mAP@0.5" not in data:
        raise InputError(part.path, "not a tag2mask evaluation (no mAP@0.5)")
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


def read_benchmarks(folder, shards=None):
    """Stage -> {jobs, seconds (sum of the `s` column), max} from Snakemake benchmark files.

    Files of one sharded stage (e.g. peaks_0.tsv, peaks_1.tsv or peaks/3.tsv) are summed
    into one stage (trailing shard numbers are dropped from the name). With `shards`, the
    files of a sharded stage's folder (<stage>/<shard>.tsv) count only for shards below it:
    the others were left by an earlier run with more shards."""
    stages = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "max": 0.0})
    folder = Path(folder)
    for path in sorted(folder.rglob("*.tsv")):
        if (shards is not None and path.parent != folder and path.stem.isdigit()
                and int(path.stem) >= shards):
            log.info("%s: shard %s of an earlier run with more shards, ignored", path, path.stem)
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows or "s" not in rows[0]:
            log.warning("%s: no `s` column, ignored", path)
            continue
        name = path.relative_to(folder).with_suffix("").as_posix()
        stage = re.sub(r"[/_.-]?(shard[_-]?)?\d+$", "", name) or name
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


def read_merge_stats(part):
    """The `merge_stats` of a self-training round's pseudo-mask store ({} when it has none)."""
    from ..core.store import StoreReader  # h5py: only when there are rounds

    with StoreReader(part.path, "pseudo_masks") as s:
        return json.loads(s.attrs.get("merge_stats", "{}"))
