"""Pseudo-mask methods are plug-ins (tag2mask.core.methods): a method made here, in a
module of the test's own, installed as an entry point, runs in the workflow without a change to
any rule file; and the rule files can be included in any order."""

import os
import random
import re
import shutil
import subprocess
import sys
import textwrap

import h5py
import pytest
import yaml
from conftest import REPO
from test_workflow import TINY as WORKFLOW_TINY

TOY = '''
"""A toy pseudo-mask method: a disc of `radius` pixels around every class peak."""
import numpy as np

from tag2mask.core import masks as mask_rle
from tag2mask.core.shards import shard_items
from tag2mask.core.store import StoreReader, StoreWriter
from tag2mask.dataset.manifest import read_manifest
from tag2mask.core.methods import Method

METHOD = Method("toy", "toy_method", {"peaks": "peaks/peaks.h5"}, schema={
    "type": "object", "additionalProperties": False, "default": {},
    "description": "The toy method: a disc around each peak.", "x-read-by": ["make"],
    "properties": {"radius": {"type": "integer", "minimum": 1, "default": 4,
                              "description": "Radius of each disc in pixels."}}})


def make_shard(inputs, manifest, options, shard, num_shards, out, panels=None, progress=True):
    manifest = read_manifest(manifest)
    with StoreReader(inputs["peaks"], "peaks") as peaks, \\
            StoreWriter(out, "pseudo_masks", manifest.classes, attrs={"method": "toy"}) as w:
        records = [r for r in manifest.images if r.id in peaks]
        for rec in shard_items(records, num_shards, shard):
            entry = peaks.read(rec.id)
            yy, xx = np.mgrid[:rec.height, :rec.width]
            discs = np.stack([(yy - y) ** 2 + (xx - x) ** 2 <= options["radius"] ** 2
                              for y, x in entry["peak_yx"]]) if len(entry["peak_yx"]) else \\
                np.zeros((0, rec.height, rec.width), bool)
            counts = mask_rle.encode(discs)
            n = len(counts)
            w.add(rec.id, rec.height, rec.width, {
                "masks": counts, "labels": np.asarray(entry["peak_class"], np.int16),
                "scores": np.ones(n, np.float32), "boxes": mask_rle.boxes(counts, rec.height,
                                                                         rec.width),
                "peak_index": np.arange(n, dtype=np.int32),
                "peak_yx": np.asarray(entry["peak_yx"], np.float32).reshape(-1, 2)})
'''

# the workflow tests' tiny run, smaller: up to the pseudo masks, unverified
TINY = {**WORKFLOW_TINY, "run_name": "toy", "verification": {"enabled": False},
        "dataset": {"kind": "synthetic", "synthetic": {"seed": 2, "train_images": 8,
                                                       "val_images": 4, "image_size": 64}}}


def install_plugin(folder):
    """The toy module and a distribution's metadata naming it in the entry-point group, as
    `pip install` of a plug-in package would leave them."""
    folder.mkdir(parents=True)
    (folder / "toy_method.py").write_text(textwrap.dedent(TOY))
    info = folder / "toy_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[tag2mask.pseudo_mask_methods]\ntoy = toy_method:METHOD\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO / "workflow")])}


def snakemake(workdir, env, *args, config):
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                           "-d", str(workdir), "--configfile", str(workdir / "config.yaml"),
                           "--cores", "2", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_a_method_installed_as_a_plugin_runs_in_the_workflow(tmp_path):
    env = install_plugin(tmp_path / "plugin")
    config = {**TINY, "pseudo_masks": {"method": "toy"}, "toy": {"radius": 6}}
    plan = snakemake(tmp_path, env, "-n", "-p", "results/toy/pseudo_masks/pseudo_masks.h5",
                     config=config)
    assert "pseudo_masks make --method toy --input peaks=results/toy/peaks/peaks.h5" in plan
    assert "propose" not in plan and '{"radius": 6}' in plan  # its inputs only; its options

    snakemake(tmp_path, env, "results/toy/pseudo_masks/pseudo_masks.h5", config=config)
    run = tmp_path / "results/toy"
    with h5py.File(run / "pseudo_masks/pseudo_masks.h5") as f, \
            h5py.File(run / "peaks/peaks.h5") as peaks:
        assert f.attrs["method"] == "toy" and len(f["images"]) == 8
        for image_id, group in f["images"].items():
            n_peaks = len(peaks["images"][image_id]["peak_class"])
            assert len(group["labels"]) == n_peaks
            if n_peaks:  # a disc of radius 6 (clipped at the image's border)
                assert 0 < group["boxes"][0][2] - group["boxes"][0][0] <= 13

    # its options rerun its make action only
    changed = {**config, "toy": {"radius": 3}}
    plan = snakemake(tmp_path, env, "-n", "results/toy/pseudo_masks/pseudo_masks.h5",
                     config=changed)
    assert set(re.findall(r"^rule (\w+):", plan, re.M)) == {"make_pseudo_masks", "gather"}

    # unknown methods and unknown keys of its section are named
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, "toy": {"radius": 0}}))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                           "-d", str(tmp_path), "--configfile", str(tmp_path / "bad.yaml"),
                           "-n"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "config key toy.radius" in proc.stdout + proc.stderr


def test_an_unknown_method_is_named_with_the_known_ones(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"pseudo_masks": {"method": "nope"}}))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                           "-d", str(tmp_path), "--configfile", str(tmp_path / "c.yaml"), "-n"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config key pseudo_masks.method" in err
    assert "'irnet'" in err and "'retrieval'" in err


def jobs_of(text):
    """{(rule, inputs, outputs)} of a forced dry run's output."""
    jobs = set()
    for block in re.split(r"\n(?=rule \w+:)", text):
        m = re.match(r"rule (\w+):", block)
        if m:
            files = [re.search(rf"^\s+{kind}: (.*)$", block, re.M) for kind in ("input", "output")]
            jobs.add((m.group(1), *(tuple(sorted(f.group(1).split(", "))) if f else ()
                                    for f in files)))
    return jobs


def test_the_rule_files_can_be_included_in_any_order(tmp_path):
    """No rule file reads what another defines while the workflow is parsed: the same jobs,
    inputs and outputs with the stage files included in reverse and in a shuffled order."""
    checkout = tmp_path / "checkout"
    for part in ("rules", "config", "envs", "profiles"):
        shutil.copytree(REPO / part, checkout / part, symlinks=True)
    (checkout / "workflow").symlink_to(REPO / "workflow")
    text = (REPO / "Snakefile").read_text()
    includes = re.findall(r'^include: "rules/(?!common)\w+\.smk"\n', text, re.M)
    assert len(includes) >= 12
    first = text.index(includes[0])
    body = text.replace("".join(includes), "@INCLUDES@")
    assert "@INCLUDES@" in body and text.index('include: "rules/common.smk"') < first
    shuffled = includes[:]
    random.Random(0).shuffle(shuffled)
    config = {**TINY, "self_training": {"rounds": 1}, "verification": {"enabled": True}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    plans = []
    for order in (includes, includes[::-1], shuffled):
        snakefile = checkout / "Snakefile"
        snakefile.write_text(body.replace("@INCLUDES@", "".join(order)))
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(snakefile),
                               "-d", str(tmp_path / "run"), "--configfile",
                               str(tmp_path / "config.yaml"), "-n", "--forceall"],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        plans.append(jobs_of(proc.stdout))
    assert len(plans[0]) > 25
    assert plans[0] == plans[1] == plans[2]
