"""The workflow on a real single-node SLURM (munged, slurmctld, slurmd from Debian packages),
through `--executor slurm` and the project's SLURM profile: every job goes through sbatch,
GPU rules ask for a GPU, and the outputs equal a local run's.

Needs root and the Debian packages (`.ci/run` installs them); skipped otherwise.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from test_workflow import TINY, snakemake

REPO = Path(__file__).resolve().parents[1]
BASE = Path("/tmp/tag2mask-slurm-test")
TARGETS = ["results/tiny/peaks/peaks.h5", "results/tiny/proposals/proposals.h5"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("slurmctld") or not shutil.which("munged")
    or not shutil.which("sbatch"),
    reason="needs root and Debian's slurmctld slurmd slurm-client munge packages")


@pytest.fixture(scope="module")
def slurm():
    env = {**os.environ, "BASE": str(BASE), "FAKE_GPUS": "2"}
    subprocess.run(["bash", str(REPO / "tests/slurm/stop.sh")], env=env, timeout=60)
    shutil.rmtree(BASE, ignore_errors=True)
    try:
        proc = subprocess.run(["bash", str(REPO / "tests/slurm/start.sh")], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield {**os.environ, "SLURM_CONF": str(BASE / "etc/slurm.conf")}
    finally:
        subprocess.run(["bash", str(REPO / "tests/slurm/stop.sh")], env=env, timeout=60)


def test_profile_on_real_slurm_matches_local_run(slurm, tmp_path):
    # The project's profile, with its placeholders filled in as a user would.
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    profile["default-resources"].update(slurm_partition="debug", mem_mb=1500, runtime=20)
    del profile["default-resources"]["slurm_account"]
    for rule in profile["set-resources"].values():
        rule.update(slurm_partition="debug", cpus_per_task=1)
    profile.update({"slurm-no-account": True, "slurm-status-command": "squeue",
                    "slurm-init-seconds-before-status-checks": 2, "latency-wait": 10,
                    "jobs": 4, "retries": 0})
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile/config.yaml").write_text(yaml.safe_dump(profile))

    cluster, local = tmp_path / "cluster", tmp_path / "local"
    cluster.mkdir()
    local.mkdir()
    env = {**slurm, "PYTHONPATH": str(REPO / "workflow")}
    config = cluster / "config.yaml"
    config.write_text(yaml.safe_dump(TINY))
    cmd = ["timeout", "-k", "10", "480", sys.executable, "-m", "snakemake",
           "-s", str(REPO / "Snakefile"), "-d", str(cluster), "--configfile", str(config),
           "--workflow-profile", str(tmp_path / "profile"), *TARGETS]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    submitted = re.findall(r"submitted with SLURM jobid (\d+)", proc.stderr + proc.stdout)
    finished = re.findall(r"^rule (\w+):", proc.stderr + proc.stdout, re.M)
    assert len(submitted) == len(finished) >= 6, (submitted, finished)
    # the gathers are localrules: they run beside Snakemake, not through the queue
    local_jobs = re.findall(r"^localrule (\w+):", proc.stderr + proc.stdout, re.M)
    assert local_jobs.count("gather") == 2 and "gather" not in finished, local_jobs
    jobs = subprocess.run(["scontrol", "show", "job", "--oneliner"], capture_output=True,
                          text=True, env=slurm).stdout.splitlines()
    ours = [j for j in jobs if re.search(r"JobId=(\d+)", j).group(1) in submitted]
    assert len(ours) == len(submitted)
    assert all("JobState=COMPLETED" in j for j in ours), ours
    peaks_jobs = [j for j in ours if "extract_peaks" in j]
    assert peaks_jobs and all("gpu" in j for j in peaks_jobs), "GPU rules must ask for a GPU"
    propose_jobs = [j for j in ours if "rule_propose" in j or "propose" in j.split("Comment=")[-1]]
    assert propose_jobs and not any("gres/gpu" in j for j in propose_jobs)

    snakemake(local, *TARGETS)
    for target in TARGETS:
        assert_same_store(cluster / target, local / target)


def assert_same_store(a, b):
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert sorted(fa["images"]) == sorted(fb["images"])
        for key in fa["images"]:
            ga, gb = fa["images"][key], fb["images"][key]
            assert sorted(ga) == sorted(gb)
            for name in ga:
                np.testing.assert_array_equal(ga[name][()], gb[name][()], err_msg=f"{key}/{name}")
