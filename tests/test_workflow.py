"""The workflow through the `snakemake` CLI, in a subprocess, on a tiny config.

The end-to-end test also proves that no stage before evaluation reads ground truth: it deletes
gt/*.json after the dataset stage, runs every weak-supervision stage up to Mask R-CNN's
predictions (which must neither fail nor ask Snakemake to recreate the GT files), then puts the
GT back and runs the evaluation stages and the report.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]

TINY = {
    "run_name": "tiny",
    "shards": 2,
    "dataset": {"kind": "synthetic",
                "synthetic": {"seed": 1, "train_images": 16, "val_images": 6, "image_size": 64}},
    "classifier": {"backbone": "tiny", "input_size": 64, "epochs": 2, "batch_size": 8,
                   "num_workers": 0},
    "peaks": {"panels": 1, "map_size": 32},
    "proposals": {"max_proposals": 100, "working_size": 64},
    "retrieval": {"panel_images": 1},
    # min_score 0: a 2-epoch tiny classifier's confidences say nothing; every mask trains
    "maskrcnn": {"backbone": "tiny", "epochs": 1, "batch_size": 4, "min_size": [64],
                 "max_size": 64, "num_workers": 0, "warmup_iters": 2, "min_score": 0.0},
    "upper_bound": True,
    "report": {"panel_images": 1},
}

# The weak-supervision chain: everything a user gets without ground truth.
WEAK_TARGETS = ["classifier/classifier.pt", "peaks/peaks.h5", "proposals/proposals.h5",
                "pseudo_masks/pseudo_masks.h5", "maskrcnn/model.pt",
                "maskrcnn/predictions_val.json"]


def snakemake(workdir, *args, config=None, check=True, timeout=900):
    config_path = Path(workdir) / "config.yaml"
    config_path.write_text(yaml.safe_dump(config or TINY))
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    proc = subprocess.run(
        [*SNAKEMAKE, "-d", str(workdir), "--configfile", str(config_path), "--cores", "2", *args],
        capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def dry_run(workdir, *targets, config=None):
    """[(rule, [input files], [output files])] of every job a forced dry run would execute."""
    out = snakemake(workdir, "-n", "--forceall", *targets, config=config).stdout
    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", out):
        m = re.match(r"rule (\w+):", block)
        if m:
            files = [re.search(rf"^\s+{kind}: (.*)$", block, re.M) for kind in ("input", "output")]
            jobs.append((m.group(1), *(f.group(1).split(", ") if f else [] for f in files)))
    return jobs


def dry_run_jobs(workdir, *targets, config=None):
    """{rule name: [input files]} of every job a forced dry run would execute."""
    jobs = {}
    for rule, inputs, _ in dry_run(workdir, *targets, config=config):
        jobs.setdefault(rule, []).extend(inputs)
    return jobs


def test_lint_is_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_weak_stages_take_no_ground_truth_input(tmp_path):
    jobs = dry_run_jobs(tmp_path, *[f"results/tiny/{t}" for t in WEAK_TARGETS])
    assert {"train_maskrcnn", "make_pseudo_masks", "verify"} <= set(jobs)
    for rule, inputs in jobs.items():
        assert not any("/gt/" in i for i in inputs), f"{rule} reads ground truth: {inputs}"
    assert "gt_training_masks" not in jobs


# IRNet's chain in place of peaks -> proposals -> retrieval
IRNET_TARGETS = ["cams/cams.h5", "irnet/relation_seeds.h5", "irnet/irnet.pt",
                 "pseudo_masks/pseudo_masks.h5", "maskrcnn/model.pt",
                 "maskrcnn/predictions_val.json"]


def test_irnet_stages_take_no_ground_truth_input(tmp_path):
    config = {**TINY, "pseudo_masks": {"method": "irnet"}}
    jobs = dry_run(tmp_path, *[f"results/tiny/{t}" for t in IRNET_TARGETS], config=config)
    rules = {rule for rule, _, _ in jobs}
    assert {"compute_cams", "label_relations", "train_irnet", "make_pseudo_masks",
            "train_maskrcnn"} <= rules
    assert not rules & {"propose", "gt_training_masks"}, rules
    for rule, inputs, _ in jobs:
        assert not any("/gt/" in i for i in inputs), f"{rule} reads ground truth: {inputs}"
    # the pseudo masks every later stage reads come from IRNet's instances
    made = [(rule, inputs) for rule, inputs, outputs in jobs
            if outputs == ["results/tiny/pseudo_masks/pseudo_masks.h5"]]
    assert len(made) == 1 and made[0][0] == "gather"
    assert made[0][1] == ["results/tiny/pseudo_masks/shards/0.h5",
                          "results/tiny/pseudo_masks/shards/1.h5"]
    producers = {folder: {rule for rule, _, outputs in jobs
                          if any(f"/pseudo_masks/{folder}/" in o for o in outputs)}
                 for folder in ("unverified", "shards")}
    assert producers == {"unverified": {"make_pseudo_masks"}, "shards": {"verify"}}
    shell = snakemake(tmp_path, "-n", "--forceall", "-p", config=config).stdout
    assert "pseudo_masks make --method irnet" in shell and "--method retrieval" not in shell
    # and the whole default target asks for no proposals
    assert "propose" not in set(planned_jobs(tmp_path, "--forceall", config=config))


def test_verification_off_sends_the_method_shards_straight_to_gather(tmp_path):
    config = {**TINY, "verification": {"enabled": False}}
    jobs = dry_run(tmp_path, "results/tiny/pseudo_masks/pseudo_masks.h5", config=config)
    assert "verify" not in {rule for rule, _, _ in jobs}
    assert {rule for rule, _, outputs in jobs
            if any("/pseudo_masks/shards/" in o for o in outputs)} == {"make_pseudo_masks"}


def test_ground_truth_masks_train_only_the_upper_bound(tmp_path):
    """One train_maskrcnn rule serves every model; the GT-made store feeds only the job that
    writes the upper bound's model, and that job reads no pseudo masks."""
    jobs = dry_run(tmp_path, config={**TINY, "self_training": {"rounds": 1}})
    fed = [(rule, outputs) for rule, inputs, outputs in jobs
           if any(i.endswith("upper_bound/gt_training_masks.h5") for i in inputs)]
    assert fed == [("train_maskrcnn", ["results/tiny/upper_bound/model.pt",
                                       "results/tiny/upper_bound/log.jsonl"])]
    trained = {outputs[0]: inputs[0] for rule, inputs, outputs in jobs
               if rule == "train_maskrcnn"}
    assert trained == {
        "results/tiny/maskrcnn/model.pt": "results/tiny/pseudo_masks/pseudo_masks.h5",
        "results/tiny/self_training/round_1/model.pt":
            "results/tiny/self_training/round_1/pseudo_masks.h5",
        "results/tiny/upper_bound/model.pt": "results/tiny/upper_bound/gt_training_masks.h5"}


def test_tags_only_dataset_skips_evaluation(tmp_path):
    from PIL import Image
    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 40, 90, 20)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "tags.csv").write_text("image,labels\n0.png,cat\n1.png,dog\n2.png,cat dog\n")
    config = {**TINY, "dataset": {"kind": "tags", "tags": {
        "images": str(tmp_path / "img"), "labels_csv": str(tmp_path / "tags.csv")}}}
    proc = snakemake(tmp_path, "-n", config=config)
    assert "evaluation stages are skipped" in proc.stderr
    jobs = dry_run_jobs(tmp_path, config=config)
    assert "train_maskrcnn" in jobs
    assert not any(r.startswith("evaluate") or "upper_bound" in r for r in jobs), sorted(jobs)
    models = set(planned_jobs(tmp_path, "--forceall", config=config))
    assert "train_maskrcnn[maskrcnn]" in models and "train_maskrcnn[upper_bound]" not in models


@pytest.mark.slow
def test_pipeline_end_to_end_without_ground_truth_before_evaluation(tmp_path):
    # One shard here; the end reruns the per-image stages with 4 and compares.
    one = {**TINY, "shards": 1}
    run = tmp_path / "results/tiny"
    snakemake(tmp_path, "results/tiny/dataset/manifest.json", config=one)
    gt_dir = run / "dataset/gt"
    saved = tmp_path / "gt-saved"
    shutil.copytree(gt_dir, saved)  # copytree keeps mtimes, so nothing upstream looks changed
    shutil.rmtree(gt_dir)

    snakemake(tmp_path, *[f"results/tiny/{t}" for t in WEAK_TARGETS], config=one)
    assert not gt_dir.exists(), "a weak-supervision stage asked for the ground truth"

    shutil.copytree(saved, gt_dir)
    proc = snakemake(tmp_path, config=one)
    assert "train_classifier" not in proc.stderr, "restoring GT must not rerun training"

    with h5py.File(run / "pseudo_masks/pseudo_masks.h5") as f:
        assert f.attrs["kind"] == "pseudo_masks"
        assert len(f["images"]) == 16
    # the shard stores went once gathered (temp(); keep_shards keeps them, below)
    assert not list(run.glob("*/shards/*.h5")) and not list(run.glob("*/unverified/*.h5"))
    for name in ["pseudo_masks/evaluation.json", "maskrcnn/evaluation_val.json",
                 "upper_bound/evaluation_val.json"]:
        figures = json.loads((run / name).read_text())
        for key in ["mAP@0.25", "mAP@0.5", "mAP@0.75", "ABO"]:
            assert 0.0 <= figures[key] <= 1.0, (name, key, figures[key])
    html = (run / "report.html").read_text()
    assert "mAP@0.5" in html and "<img" in html and "http://" not in html

    # Nothing is left to do, and a retrieval setting reruns retrieval and what follows only.
    assert "Nothing to be done" in snakemake(tmp_path, "-n", config=one).stdout
    changed = {**one, "retrieval": {**one["retrieval"], "nms_iou": 0.5}}
    jobs = set(planned_jobs(tmp_path, config=changed))
    assert {"make_pseudo_masks", "gather", "train_maskrcnn[maskrcnn]", "report"} <= jobs
    assert not jobs & BEFORE_RETRIEVAL, jobs

    # A code change in the retrieval module reruns retrieval (rules carry a code digest).
    copy = tmp_path / "checkout"
    for part in ["Snakefile", "rules", "config", "workflow"]:
        copy_tree(REPO / part, copy / part)
    with open(copy / "workflow/tag2mask/retrieval/consensus.py", "a") as f:
        f.write("\n# a code change\n")
    jobs = set(planned_jobs(tmp_path, "-s", str(copy / "Snakefile"), config=one))
    assert {"make_pseudo_masks", "gather", "train_maskrcnn[maskrcnn]"} <= jobs
    assert not jobs & BEFORE_RETRIEVAL, jobs

    # Masks for new images: --config predict_images=DIR runs the run's Mask R-CNN on the
    # folder, and nothing else (a damaged image in it is skipped)
    check_predict_images(tmp_path, run, one)

    # 4 shards give the same stores and metrics as 1. Every dataset of the peaks, proposals
    # and pseudo-mask stores is bit-identical (exact equality, floats included: the per-image
    # stages never batch images together, so shard boundaries cannot change the order of any
    # float operation), and so are all attributes but the proposals' per-image timings
    # (`seconds`, `cpu_seconds`) and the root's `num_shards` (how the store was made). The
    # metrics JSONs are equal too, except the proposals' timing figures.
    compared = ["peaks/peaks.h5", "proposals/proposals.h5", "pseudo_masks/pseudo_masks.h5",
                "peaks/quality.json", "proposals/quality.json", "pseudo_masks/evaluation.json"]
    before = tmp_path / "one-shard"
    for name in compared:
        (before / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / name, before / name)
    proc = snakemake(tmp_path, *[f"results/tiny/{n}" for n in compared],
                     config={**one, "shards": 4, "keep_shards": True})
    ran = re.findall(r"^(?:local)?rule (\w+):", proc.stdout + proc.stderr, re.M)
    for stage in ["extract_peaks", "propose", "make_pseudo_masks"]:
        assert ran.count(stage) == 4, ran
    for stage in ["peaks", "proposals", "pseudo_masks"]:
        assert sorted(p.name for p in (run / stage / "shards").glob("*.h5")) == \
            ["0.h5", "1.h5", "2.h5", "3.h5"]
    for name in compared[:3]:
        assert_same_store(before / name, run / name,
                          ignore_attrs={"seconds", "cpu_seconds", "num_shards"})
    for name in compared[3:]:
        assert without_timings(json.loads((run / name).read_text())) == \
            without_timings(json.loads((before / name).read_text())), name


def check_predict_images(workdir, run, config):
    """The predict_images target on a finished run, and an empty result list through
    evaluation (the tiny model can find nothing at all: a valid outcome everywhere)."""
    from pycocotools.coco import COCO
    folder = workdir / "new_images"
    folder.mkdir()
    val_images = sorted((run / "dataset/images/val").glob("*.png"))
    for image in val_images[:2]:
        shutil.copy(image, folder / image.name)
    data = bytearray(val_images[2].read_bytes())
    idat = data.find(b"IDAT")
    data[idat + 20] ^= 0xFF  # one bit flipped in the image data: its CRC no longer matches
    (folder / "damaged.png").write_bytes(bytes(data))
    (folder / "notes.txt").write_text("not an image")
    config = {**config, "predict_images": str(folder)}
    assert set(planned_jobs(workdir, config=config)) - {"all"} == {"predict_images"}
    snakemake(workdir, config=config)
    out = run / "predict/new_images"
    results = json.loads((out / "predictions.json").read_text())
    sidecar = out / "predictions.json.images.json"
    listed = json.loads(sidecar.read_text())["images"]
    named = [i["file_name"] for i in listed]
    assert named == [p.name for p in val_images[:2]]
    # ids are positions in the sorted folder: damaged.png, skipped, had 1
    assert [i["id"] for i in listed] == [2, 3]
    assert sorted(p.name for p in (out / "overlays").glob("*.png")) == [f"{n}.png" for n in named]
    assert "damaged.png: cannot decode image (corrupt PNG (CRC error in chunk IDAT" in \
        (run / "logs/predict_images/new_images.log").read_text()
    assert isinstance(results, list) and {r["image_id"] for r in results} <= {2, 3}
    if results:  # pycocotools' loadRes cannot read an empty list (it looks at the first)
        COCO(str(sidecar)).loadRes(str(out / "predictions.json"))
    assert "Nothing to be done" in snakemake(workdir, "-n", config=config).stdout

    # no detection at all (no score reaches 1): [] is written, and evaluation scores it
    empty = workdir / "empty.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    cli = [sys.executable, "-m", "tag2mask.cli"]
    subprocess.run([*cli, "maskrcnn", "predict", "--checkpoint", run / "maskrcnn/model.pt",
                    "--manifest", run / "dataset/manifest.json", "--split", "val", "--out",
                    empty, "--config", '{"score_threshold": 1.0}', "--no-progress"],
                   check=True, env=env, capture_output=True, timeout=300)
    assert json.loads(empty.read_text()) == []
    subprocess.run([*cli, "evaluation", "score", "--gt", run / "dataset/gt/val.json",
                    "--predictions", empty, "--config", "{}", "--out", workdir / "e.json"],
                   check=True, env=env, capture_output=True, timeout=300)
    figures = json.loads((workdir / "e.json").read_text())
    assert figures["predictions"] == 0 and figures["mAP@0.5"] == 0.0 and figures["ABO"] == 0.0


BEFORE_RETRIEVAL = {"prepare_dataset", "train_classifier", "extract_peaks", "propose",
                    "train_maskrcnn[upper_bound]"}


def planned_jobs(workdir, *args, config=None):
    """Jobs a plain dry run would execute (as the user would see with `snakemake -n`): the
    rule name, and for the rules of several models (train_maskrcnn, predict,
    evaluate_predictions) also `rule[model]`, e.g. train_maskrcnn[upper_bound]."""
    out = snakemake(workdir, "-n", *args, config=config).stdout
    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", out):
        m = re.match(r"rule (\w+):", block)
        if m:
            jobs.append(m.group(1))
            model = re.search(r"^\s+wildcards: .*\bmodel=([\w/]+)", block, re.M)
            if model:
                jobs.append(f"{m.group(1)}[{model.group(1)}]")
    return jobs


def copy_tree(src, dst):
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)


def assert_same_store(a, b, ignore_attrs=()):
    """Every dataset and attribute of HDF5 files a and b is the same (exactly)."""
    import numpy as np

    def contents(f):
        names = []
        f.visit(names.append)  # (a callback that returns something would stop the visit)
        return names

    with h5py.File(a) as fa, h5py.File(b) as fb:
        names = contents(fa)
        assert len(names) > 1 and sorted(names) == sorted(contents(fb)), \
            f"{a} and {b} hold different objects"
        for name in ["/", *names]:
            oa, ob = fa[name], fb[name]
            attrs = sorted(k for k in oa.attrs if k not in ignore_attrs)
            assert attrs == sorted(k for k in ob.attrs if k not in ignore_attrs), name
            for k in attrs:
                np.testing.assert_array_equal(oa.attrs[k], ob.attrs[k], err_msg=f"{name} {k}")
            if isinstance(oa, h5py.Dataset):
                assert oa.dtype == ob.dtype and oa.shape == ob.shape, name
                xa, xb = oa[()], ob[()]
                if xa.dtype.kind in "biufcS":  # numbers, fixed-length strings: same bytes
                    assert xa.tobytes() == xb.tobytes(), f"{name} differs"
                else:
                    np.testing.assert_array_equal(xa, xb, err_msg=name)


def without_timings(figures):
    """A metrics JSON without its wall-clock and CPU-time figures."""
    if isinstance(figures, dict):
        return {k: without_timings(v) for k, v in figures.items() if "seconds" not in k}
    return figures
