"""Shared fixtures: the repository root and small manifests built from generated images."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))  # the package, also when not pip-installed

from tag2mask.dataset.manifest import Manifest, make_record, write_manifest  # noqa: E402

VOC_MINI = Path(os.environ.get("TAG2MASK_VOC_MINI", REPO.parent / "shared/data/voc-mini"))
COCO_TINY = Path(os.environ.get("TAG2MASK_COCO_TINY", REPO.parent / "shared/data/coco-tiny"))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests run torch on one thread: deterministic, and on a shared 2-core machine extra
    threads only spin and wait (several times slower on the tiny models the tests use)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def restore_environment():
    """The workflow sets variables in os.environ for its jobs (rules/common.smk); a test that
    runs Snakemake in this process must not hand them to the tests after it."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture
def tiny_manifest(tmp_path):
    """A manifest of 6 random 32x40 RGB images, classes a/b/c, all in the train split."""
    return build_manifest(tmp_path, n_images=6)


def build_manifest(folder, n_images=6, size=(40, 32), classes=("a", "b", "c"), seed=0,
                   split="train"):
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n_images):
        path = folder / "images" / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        labels = [classes[i % len(classes)]]
        records.append(make_record(f"img{i}", path, size[0], size[1], split, labels, classes))
    m = Manifest("test", list(classes), records)
    write_manifest(folder / "manifest.json", m)
    return folder / "manifest.json"
