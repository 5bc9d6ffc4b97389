"""Training on several processes (tag2mask.core.distributed): DistributedDataParallel launched
by torchrun, here on the CPU with gloo and 2 processes. batch_size is the batch of one step
over all processes, so 2 processes with batch_size 2b (b each) are compared with 1 process
with batch_size 2b: the same weights for the classifier, IRNet and (on a batch made
deterministic) Mask R-CNN; a 2-process run killed with SIGKILL resumes after its last epoch;
the Snakemake rules with `processes: 2` run end to end and changing `processes` reruns
nothing."""

import argparse
import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import build_manifest
from PIL import Image
from test_irnet import IRNET, random_relation_seeds, tiny_classifier
from test_kills import classifier_command, epochs_in, kill_after_first_epoch, run, start
from test_maskrcnn import CLASSES as MASKRCNN_CLASSES
from test_maskrcnn import TINY as TINY_MASKRCNN
from test_maskrcnn import draw_instances
from test_train_classifier import CLASSES as CLASSIFIER_CLASSES
from test_train_classifier import blob_manifest
from test_workflow import TINY, planned_jobs, snakemake

from tag2mask.classifier.model import build_classifier
from tag2mask.classifier.train import train_classifier
from tag2mask.core import masks as rle
from tag2mask.core.config import section_options
from tag2mask.core.distributed import Group, ShardSampler
from tag2mask.core.errors import InputError
from tag2mask.core.launch import training_processes
from tag2mask.core.store import StoreWriter
from tag2mask.dataset.manifest import Manifest, make_record, read_manifest, write_manifest
from tag2mask.irnet.train import train_irnet
from tag2mask.maskrcnn.model import EpochSampler
from tag2mask.maskrcnn.train import train as train_maskrcnn

CPU = torch.device("cpu")


def test_processes_deal_out_the_batches_of_one_process():
    plan = [f"item{i}" for i in range(10)]
    groups = [Group(CPU, rank, 2) for rank in range(2)]
    per_process = [g.batch_size(4, "batch_size") for g in groups]
    assert per_process == [2, 2]
    parts = [g.shard(plan) for g in groups]
    assert parts == [plan[0::2], plan[1::2]]
    # step k of the two processes: step k of one process with batch_size 4
    for k, start_ in enumerate(range(0, 10, 4)):
        step = [item for part in parts for item in part[2 * k:2 * k + 2]]
        assert sorted(step) == sorted(plan[start_:start_ + 4])
    # uneven: the parts are evened out with the first items of the plan (DistributedSampler)
    assert [g.shard(plan[:5]) for g in groups] == [plan[0:5:2], [plan[1], plan[3], plan[0]]]
    one = Group(CPU)
    assert one.shard(plan) is plan and one.batch_size(3, "batch_size") == 3
    with pytest.raises(InputError, match="multiple of processes"):
        groups[0].batch_size(3, "classifier.batch_size")
    # Mask R-CNN's epoch order, each epoch's, dealt out the same way
    sampler = EpochSampler(9, seed=0, flip=True)
    shards = [ShardSampler(sampler, g) for g in groups]
    for epoch in (1, 2):
        for s in shards:
            s.set_epoch(epoch)
        whole = list(sampler)
        assert [list(s) for s in shards] == [whole[0::2], whole[1::2] + whole[:1]]
        assert [len(s) for s in shards] == [5, 5]


def test_sync_batchnorm_on_cuda_keeps_the_model():
    """With several processes on CUDA, BatchNorm layers become SyncBatchNorm through timm's
    conversion, which keeps the activation of its BatchNormAct layers: the same computation
    in eval mode and the same state_dict keys (checkpoints load either way). (Converted on the
    CPU here, where SyncBatchNorm runs in eval mode only; a CPU group converts nothing.)"""
    options = section_options(json.dumps({"backbone": "efficientnet_lite0",
                                          "pretrained": False}), "classifier")
    torch.manual_seed(0)
    model = build_classifier(options, CLASSIFIER_CLASSES).eval()
    assert Group(CPU, 0, 2).sync_batchnorm(model) is model
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    keys = list(model.state_dict())
    synced = Group(torch.device("cuda"), 0, 2).sync_batchnorm(model).eval()
    norms = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert list(synced.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(synced(x), expected)


def test_processes_option_must_be_positive():
    args = argparse.Namespace(processes=None)
    assert training_processes(args, {"processes": 3}) == 3
    assert training_processes(argparse.Namespace(processes=2), {"processes": 1}) == 2
    with pytest.raises(InputError, match="--processes.*at least 1"):
        training_processes(argparse.Namespace(processes=0), {"processes": 1})


def assert_same_weights(a, b, atol=1e-5):
    assert sorted(a) == sorted(b)
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
    assert worst <= atol, f"largest weight difference {worst}"


def assert_weights_changed(before, after):
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def log_records(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def train_on_1_and_2_processes(train_here, command, out):
    """The same training here (`train_here(out_dir)`: one process) and by the command on 2
    processes; their output folders."""
    train_here(out / "p1")
    output = run(*command, "--out-dir", str(out / "p2"), "--processes", "2", "--threads", "2",
                 "--no-progress")
    assert "training on 2 processes: torchrun --standalone --nproc-per-node 2" in output
    assert "process 0 of 2 (cpu, gloo)" in output, output
    return out / "p1", out / "p2"


def test_classifier_two_processes_equal_one(tmp_path):
    # ResNet-18 from a weights file, BatchNorm frozen: on the CPU SyncBatchNorm cannot run, so
    # BatchNorm layers that train would see each process's images only. 10 train images in
    # batches of 4: 2 + 2 per process, the last one 1 + 1.
    manifest = blob_manifest(tmp_path / "data", n_train=10, n_val=4)
    torch.manual_seed(0)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    # (mean pooling: peak pooling's choice of peaks could turn on float rounding)
    config = json.dumps({"backbone": "resnet18", "pretrained": False,
                         "pretrained_path": str(weights), "freeze_bn": True, "input_size": 32,
                         "batch_size": 4, "optimizer": "sgd", "lr": 0.05, "epochs": 2,
                         "pooling": "mean", "num_workers": 0, "device": "cpu",
                         "scale_range": [0.75, 1.25]})
    options = section_options(config, "classifier")
    one, two = train_on_1_and_2_processes(
        lambda out: train_classifier(manifest, options, out, progress=False),
        ["classifier", "train", "--manifest", str(manifest), "--config", config], tmp_path)
    a = torch.load(one / "classifier.pt", weights_only=True)["model"]
    b = torch.load(two / "classifier.pt", weights_only=True)["model"]
    torch.manual_seed(0)  # the initial weights (the seed's)
    initial = build_classifier(options, CLASSIFIER_CLASSES)
    assert_weights_changed(initial.state_dict(), a)
    assert_same_weights(a, b)
    log_one, log_two = log_records(one), log_records(two)
    assert [r["images"] for r in log_two] == [10, 10]
    np.testing.assert_allclose([r["loss"] for r in log_two], [r["loss"] for r in log_one],
                               rtol=1e-5)
    assert [r["val_AP"] for r in log_two] == [r["val_AP"] for r in log_one]


def same_image_dataset(folder, n_images):
    """n copies of one image with its instances, and a store of them (the exact masks)."""
    folder.mkdir(parents=True)
    img, masks, labels = draw_instances(np.random.default_rng(3), 64)
    Image.fromarray(img).save(folder / "image.png")
    records = [make_record(f"img{i}", folder / "image.png", 64, 64, "train",
                           [MASKRCNN_CLASSES[c] for c in labels], MASKRCNN_CLASSES)
               for i in range(n_images)]
    write_manifest(folder / "manifest.json", Manifest("same", MASKRCNN_CLASSES, records))
    counts = rle.encode(masks)
    with StoreWriter(folder / "pseudo_masks.h5", "pseudo_masks", MASKRCNN_CLASSES) as w:
        for r in records:
            w.add(r.id, 64, 64, {"masks": counts, "labels": np.array(labels, np.int16),
                                 "scores": np.ones(len(labels), np.float32),
                                 "boxes": rle.boxes(counts, 64, 64),
                                 "peak_index": np.arange(len(labels), dtype=np.int32),
                                 "peak_yx": np.zeros((len(labels), 2), np.float32)})
    return folder / "manifest.json", folder / "pseudo_masks.h5"


def test_maskrcnn_two_processes_equal_one(tmp_path):
    # Mask R-CNN on 2 processes is not exactly 1 process in general: torchvision averages each
    # loss over the sampled anchors / proposals / positive proposals of a process's images,
    # whose counts differ between images, and samples them from each process's own random
    # stream. Both are made moot here, leaving the rest to compare (each process's share of a
    # batch, the steps and learning rates, DDP's gradient average, rank 0's checkpoints):
    # every image is the same image with the same pseudo masks, no flips, one scale, and
    # sample sizes above the number of anchors and proposals, so that every anchor and
    # proposal is taken (no random draw) and every image has the same counts.
    manifest, store = same_image_dataset(tmp_path / "data", 6)
    config = json.dumps({**TINY_MASKRCNN, "batch_size": 2, "epochs": 2, "warmup_iters": 2,
                         "lr": 0.01, "flip": False, "rpn_batch_size_per_image": 4096,
                         "box_batch_size_per_image": 512})
    one, two = train_on_1_and_2_processes(
        lambda out: train_maskrcnn(section_options(config, "maskrcnn"), store, manifest, out,
                                   progress=False),
        ["maskrcnn", "train", "--store", str(store), "--manifest", str(manifest), "--config",
         config], tmp_path)
    a = torch.load(one / "model.pt", weights_only=True)
    b = torch.load(two / "model.pt", weights_only=True)
    first = torch.load(two / "checkpoints" / "epoch-0001.pt", weights_only=True)["model"]
    assert_weights_changed(first, b["model"])
    assert_same_weights(a["model"], b["model"])
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert ra["iterations"] == rb["iterations"] == 3 and ra["images"] == rb["images"] == 6
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
    assert sorted(p.name for p in (two / "checkpoints").glob("*.pt")) == \
        ["epoch-0001.pt", "epoch-0002.pt"]


def test_irnet_two_processes_equal_one(tmp_path):
    # unknown seed cells give the images unequal pair counts: the loss terms are means over
    # the whole batch's pairs (counts summed over the processes)
    manifest = build_manifest(tmp_path / "data", n_images=8, size=(64, 64))
    m = read_manifest(manifest)
    _, classifier = tiny_classifier(tmp_path, m.classes)
    seeds = random_relation_seeds(tmp_path / "relation_seeds.h5", m, unknown_share=0.2)
    config = json.dumps({**IRNET, "epochs": 2, "batch_size": 4})
    one, two = train_on_1_and_2_processes(
        lambda out: train_irnet(manifest, classifier, seeds, section_options(config, "irnet"),
                                out, progress=False),
        ["irnet", "train", "--manifest", str(manifest), "--checkpoint", str(classifier),
         "--seeds", str(seeds), "--config", config], tmp_path)
    a = torch.load(one / "irnet.pt", weights_only=True)["model"]
    b = torch.load(two / "irnet.pt", weights_only=True)["model"]
    assert_same_weights(a, b)
    np.testing.assert_allclose([r["loss"] for r in log_records(two)],
                               [r["loss"] for r in log_records(one)], rtol=1e-5)


def processes_naming(out_dir):
    """Pids of the processes whose command line names `out_dir`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(out_dir) in (proc / "cmdline").read_bytes().decode(
                    errors="replace").replace("\0", " "):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_two_processes_resume_after_sigkill(tmp_path):
    """SIGKILL to the command (torchrun, after its exec) takes its workers with it, and the
    rerun resumes after the last epoch rank 0 wrote, here on 1 process."""
    args = classifier_command(tmp_path, epochs=3, threads=2, n_images=16)
    out = tmp_path / "classifier"
    kill_after_first_epoch(start(*args, "--processes", "2"), out / "log.jsonl", timeout=240)
    deadline = time.time() + 30
    while processes_naming(out) and time.time() < deadline:
        time.sleep(0.2)
    left = processes_naming(out)
    for pid in left:  # (clean up before failing)
        os.kill(pid, signal.SIGKILL)
    assert not left, "training processes outlived their torchrun"
    assert not (out / "classifier.pt").exists()
    done = len(epochs_in(out / "log.jsonl"))
    assert 1 <= done < 3

    output = run(*args, "--processes", "1")
    assert f"resuming from {out / 'last.pt'} after epoch {done}" in output
    assert epochs_in(out / "log.jsonl") == [1, 2, 3]
    assert (out / "classifier.pt").exists()


def test_workflow_rejects_a_batch_size_that_processes_cannot_share(tmp_path):
    config = {**TINY, "maskrcnn": {**TINY["maskrcnn"], "processes": 3}}
    proc = snakemake(tmp_path, "-n", config=config, check=False)
    assert proc.returncode != 0
    assert "maskrcnn.batch_size 4 is not a multiple of maskrcnn.processes 3" in \
        proc.stdout + proc.stderr


def training_jobs(workdir, *targets, config):
    """{rule: (resources line, shell command)} of the training jobs of a dry run."""
    out = snakemake(workdir, "-n", "-p", *targets, config=config).stdout
    jobs = {}
    for block in re.split(r"\n(?=rule \w+:)", out):
        m = re.match(r"rule (train_\w+):", block)
        if m:
            resources = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)[1]
            command = re.search(r"^Shell command: (.*)$", block, re.MULTILINE)[1]
            jobs[m.group(1)] = (resources, command)
    return jobs


@pytest.mark.slow
def test_workflow_training_rules_with_two_processes(tmp_path):
    """With `processes: 2` the training rules ask for 2 GPUs (none with device cpu) and pass
    --processes 2; train_classifier and train_maskrcnn (the upper bound: no peaks or
    proposals needed) run end to end on 2 processes; then processes: 1 plans no job."""
    config = {**TINY, "shards": 1, "pseudo_masks": {"method": "irnet"},
              "classifier": {**TINY["classifier"], "processes": 2, "device": "cpu"},
              "maskrcnn": {**TINY["maskrcnn"], "processes": 2, "device": "cpu"},
              "irnet": {"processes": 2, "device": "auto", "epochs": 1, "batch_size": 4}}
    jobs = training_jobs(tmp_path, "results/tiny/upper_bound/model.pt",
                         "results/tiny/irnet/irnet.pt", config=config)
    assert sorted(jobs) == ["train_classifier", "train_irnet", "train_maskrcnn"]
    for rule, (resources, command) in jobs.items():
        assert "processes=2" in resources and " --processes 2 " in command, rule
        assert ("gpu=2" if rule == "train_irnet" else "gpu=0") in resources, rule

    targets = ["results/tiny/classifier/classifier.pt", "results/tiny/upper_bound/model.pt"]
    snakemake(tmp_path, *targets, config=config)
    logs = tmp_path / "results/tiny/logs"
    for name in ["train_classifier.log", "train_maskrcnn/upper_bound.log"]:
        text = (logs / name).read_text()
        assert "training on 2 processes: torchrun --standalone --nproc-per-node 2" in text, name
        assert "process 0 of 2 (cpu, gloo)" in text, name
    assert epochs_in(tmp_path / "results/tiny/classifier/log.jsonl") == [1, 2]
    assert epochs_in(tmp_path / "results/tiny/upper_bound/log.jsonl") == [1]
    one = {**config, **{s: {**config[s], "processes": 1} for s in ("classifier", "maskrcnn")}}
    assert set(planned_jobs(tmp_path, *targets, config=one)) <= {"all"}
