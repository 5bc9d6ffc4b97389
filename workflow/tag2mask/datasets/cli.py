"""`tag2mask prepare-dataset`: read a dataset into a manifest and ground-truth files."""

import importlib
import logging
from pathlib import Path

from ..atomic import write_json
from ..config import section_options
from ..manifest import validate, write_manifest
from . import READERS

log = logging.getLogger(__name__)


def add_command(sub):
    p = sub.add_parser("prepare-dataset", help="read a dataset into manifest.json + gt/<split>.json",
                       description=__doc__)
    p.add_argument("--config", required=True,
                   help="a workflow config YAML (its `dataset` section is used), or that section "
                        "as inline JSON")
    p.add_argument("--out-dir", required=True, type=Path,
                   help="dataset folder: manifest.json, gt/<split>.json and any generated images")
    p.set_defaults(func=run)


def prepare(dataset_cfg, out_dir):
    """Read the dataset described by `dataset_cfg`; write manifest.json and gt/<split>.json."""
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


def run(args):
    prepare(section_options(args.config, "dataset"), args.out_dir)
