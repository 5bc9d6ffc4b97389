"""`tag2mask dataset prepare`: read a dataset into a manifest and ground-truth files.

    tag2mask dataset prepare --config C --out-dir results/<run>/dataset

Writes manifest.json (per image: id, path, size, split, tags; nothing else) and, where the
dataset has ground truth, gt/<split>.json (COCO instances, evaluation only). Readers: one
module per `dataset.kind` in this folder (READERS below; their contract: dataset.common).
"""

import importlib
import logging
from pathlib import Path

from ..core import cli_args as cli

log = logging.getLogger(__name__)

# dataset.kind -> reader module, imported only for the kind a run uses
READERS = {
    "synthetic": "tag2mask.dataset.synthetic",
    "voc": "tag2mask.dataset.voc",
    "coco": "tag2mask.dataset.coco",
    "tags": "tag2mask.dataset.tags",
}


def add_actions(actions):
    p = cli.add_action(actions, "prepare", "read a dataset into manifest.json + gt/<split>.json",
                       __doc__, run_prepare)
    cli.add_config(p, "dataset")
    p.add_argument("--out-dir", required=True, type=Path,
                   help="dataset folder: manifest.json, gt/<split>.json and any generated images")


def prepare(dataset_cfg, out_dir):
    """Read the dataset described by `dataset_cfg`; write manifest.json and gt/<split>.json."""
    from ..core.atomic import write_json
    from .manifest import validate, write_manifest

    kind = dataset_cfg["kind"]
    reader = importlib.import_module(READERS[kind])
    limits = {k: dataset_cfg[k] for k in ("max_image_pixels", "large_images")}
    prepared = reader.read(dataset_cfg.get(kind, {}), Path(out_dir), limits)
    m = prepared.manifest
    # Check before writing anything: a refused manifest must not leave new ground truth
    # beside the previous run's manifest.
    validate(m, Path(out_dir) / "manifest.json")
    for split, coco in prepared.ground_truth.items():
        rel = f"gt/{split}.json"
        write_json(Path(out_dir) / rel, coco, indent=None)
        m.ground_truth[split] = rel
    write_manifest(Path(out_dir) / "manifest.json", m)
    log.info("%s dataset: %d images (%s), %d classes, %d skipped", kind, len(m.images),
             ", ".join(f"{s}: {len(m.split(s))}" for s in m.splits), len(m.classes),
             m.stats.get("skipped", 0))
    return m


def run_prepare(args):
    from ..core.config import stage_options

    prepare(stage_options(args.config, "dataset", "prepare", args.runtime), args.out_dir)
