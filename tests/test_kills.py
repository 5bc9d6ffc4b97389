"""Surviving SIGKILL: training resumes from its last checkpoint (at most one epoch lost) and
finishes with the same number of epochs; a store writer killed mid-write leaves nothing that
passes for complete."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import build_manifest

from tag2mask.core import masks as mask_rle
from tag2mask.core.store import StoreWriter
from tag2mask.dataset.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


def start(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tag2mask.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(*args):
    proc = start(*args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def kill_after_first_epoch(proc, log_path, timeout=120):
    """SIGKILL `proc` once its log shows a finished epoch (so it is inside a later one)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log_path.exists() and log_path.read_text().strip():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.05)
    pytest.fail(f"no epoch finished before the process ended or {timeout} s passed")


def epochs_in(log_path):
    return [json.loads(line)["epoch"] for line in log_path.read_text().splitlines()]


def killed_and_resumed(args, out, final, epochs, resumed="resuming from {last} after epoch"):
    """SIGKILL the training command `args` after its first epoch: no final model `final`;
    rerun: it resumes after the epochs it finished and ends with all `epochs`."""
    kill_after_first_epoch(start(*args), out / "log.jsonl")
    assert not (out / final).exists(), "a killed run must not leave the final model"
    done = len(epochs_in(out / "log.jsonl"))
    assert done < epochs
    output = run(*args)
    assert f"{resumed.format(last=out / 'last.pt')} {done}" in output, output
    assert epochs_in(out / "log.jsonl") == list(range(1, epochs + 1))
    assert (out / final).exists()


def classifier_command(tmp_path, epochs, threads=1, n_images=48):
    """The `classifier train` command line of a tiny classifier on a random manifest."""
    manifest = build_manifest(tmp_path / "data", n_images=n_images, size=(64, 64))
    config = json.dumps({"backbone": "tiny", "input_size": 64, "epochs": epochs,
                         "batch_size": 2, "num_workers": 0, "lr_schedule": "constant",
                         "device": "cpu"})
    return ["classifier", "train", "--manifest", str(manifest), "--config", config,
            "--out-dir", str(tmp_path / "classifier"), "--threads", str(threads),
            "--no-progress"]


def test_train_classifier_resumes_after_sigkill(tmp_path):
    killed_and_resumed(classifier_command(tmp_path, epochs=4), tmp_path / "classifier",
                       "classifier.pt", 4)


def test_train_maskrcnn_resumes_after_sigkill(tmp_path):
    manifest_path = build_manifest(tmp_path / "data", n_images=24, size=(64, 64))
    manifest = read_manifest(manifest_path)
    store = tmp_path / "pseudo_masks.h5"
    with StoreWriter(store, "pseudo_masks", manifest.classes) as w:
        for i, r in enumerate(manifest.images):
            m = np.zeros((1, 64, 64), bool)
            m[0, 8 + i % 8:40, 10:44 - i % 6] = True
            w.add(r.id, 64, 64, {"masks": mask_rle.encode(m), "labels": np.array([i % 3], np.int16),
                                 "scores": np.ones(1, np.float32),
                                 "boxes": mask_rle.boxes(mask_rle.encode(m), 64, 64),
                                 "peak_index": np.zeros(1, np.int32),
                                 "peak_yx": np.array([[20, 20]], np.float32)})
    out = tmp_path / "maskrcnn"
    config = json.dumps({"backbone": "tiny", "epochs": 3, "batch_size": 2, "min_size": [64],
                         "max_size": 64, "num_workers": 0, "warmup_iters": 1, "device": "cpu",
                         "fpn_channels": 16, "box_head_dim": 32, "mask_head_channels": 16,
                         "mask_head_layers": 1, "anchor_sizes": [8, 16, 32, 64, 128],
                         "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                         "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20,
                         "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 32})
    args = ["maskrcnn", "train", "--store", str(store), "--manifest", str(manifest_path),
            "--config", config, "--out-dir", str(out), "--threads", "1", "--no-progress"]
    killed_and_resumed(args, out, "model.pt", 3, resumed="resuming after epoch")


def test_store_writer_killed_mid_write_leaves_no_store(tmp_path):
    out = tmp_path / "store.h5"
    code = (
        "import time, numpy as np\n"
        "from tag2mask.core.store import StoreWriter\n"
        f"with StoreWriter({str(out)!r}, 'peaks', ['a']) as w:\n"
        "    for i in range(100000):\n"
        "        w.add(f'img{i}', 8, 8, {'v': np.zeros(64)})\n"
        "        if i == 50: print('writing', flush=True)\n"
        "        time.sleep(0.001)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(p.name.startswith(".tmp-") for p in leftovers)
