"""Retries for real: a job that runs out of memory on its first attempt is resubmitted by
Snakemake (`--retries`) with the attempt-scaled resources of its rule (rules/*.smk:
`mem_mb = base * attempt`, `runtime = base * attempt`), and the second attempt finishes.

The failure comes from outside the project's code: a `sitecustomize.py` on PYTHONPATH (which
rules/common.smk passes on to the jobs) caps the address space of the `dataset prepare` job
process at 200 MB until it has failed `FAIL_ATTEMPTS` times, as a cluster would kill a job
that exceeds its memory request. The job then fails with a real MemoryError while importing
its libraries. Snakemake prints each attempt's resources; those are what a cluster executor
submits (SLURM: --mem, --time).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFEST = "results/retry/dataset/manifest.json"
CONFIG = {"run_name": "retry", "shards": 1,
          "dataset": {"kind": "synthetic",
                      "synthetic": {"seed": 3, "train_images": 4, "val_images": 0,
                                    "image_size": 32}}}

# Runs at the start of every Python process that sees this PYTHONPATH, the jobs included;
# it acts only in a `tag2mask dataset prepare` process.
OOM_HOOK = '''\
import os
import resource

_attempts = os.environ.get("FAIL_ATTEMPTS_FILE")
if _attempts and b"prepare" in open("/proc/self/cmdline", "rb").read().split(b"\\0"):
    with open(_attempts, "a+") as f:
        f.seek(0)
        failed = len(f.read().splitlines())
        if failed < int(os.environ["FAIL_ATTEMPTS"]):
            f.write("limited\\n")
            resource.setrlimit(resource.RLIMIT_AS, (200 << 20, 200 << 20))
'''


def run_failing(tmp_path, fail_attempts, retries):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(OOM_HOOK)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO / "workflow")]),
           "FAIL_ATTEMPTS": str(fail_attempts),
           "FAIL_ATTEMPTS_FILE": str(tmp_path / "attempts.txt")}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d",
         str(tmp_path / "run"), "--configfile", str(config), "--cores", "1",
         "--retries", str(retries), MANIFEST],
        capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    # one block per attempt: "localrule prepare_dataset: ... resources: ..., mem_mb=4000, ..."
    attempts = [dict(re.findall(r"\b(mem_mb|runtime)=(\d+)", block))
                for block in re.findall(r"rule prepare_dataset:\n(?:\s+.*\n)*?\s+resources: .*",
                                        out)]
    return proc, out, [{k: int(v) for k, v in a.items()} for a in attempts]


def test_out_of_memory_first_attempt_is_retried_with_doubled_resources(tmp_path):
    proc, out, attempts = run_failing(tmp_path, fail_attempts=1, retries=1)
    assert proc.returncode == 0, out[-6000:]
    assert "MemoryError" in out, "the first attempt must fail for lack of memory"
    assert "Trying to restart job" in out
    # rules/dataset.smk: mem_mb = 4000 * attempt, runtime = 60 * attempt
    assert attempts == [{"mem_mb": 4000, "runtime": 60}, {"mem_mb": 8000, "runtime": 120}]
    assert (tmp_path / "attempts.txt").read_text().splitlines() == ["limited"]
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert len(manifest["images"]) == 4
    assert (tmp_path / "run/results/retry/benchmarks/prepare_dataset.tsv").exists()


def test_retries_are_bounded(tmp_path):
    proc, out, attempts = run_failing(tmp_path, fail_attempts=2, retries=1)
    assert proc.returncode != 0
    assert [a["mem_mb"] for a in attempts] == [4000, 8000]
    # both attempts ran capped and failed for lack of memory (the job's log holds the last
    # attempt's error; Snakemake's own output does not always repeat each one under load)
    assert (tmp_path / "attempts.txt").read_text().splitlines() == ["limited", "limited"]
    assert "MemoryError" in out
    assert "MemoryError" in (tmp_path / "run/results/retry/logs/prepare_dataset.log").read_text()
    assert not (tmp_path / "run" / MANIFEST).exists(), "a failed job left its output"
