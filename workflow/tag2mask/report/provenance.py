"""What produced a run, for its report: the settings (the merged config, the preset taken and
why), the command line, the tag2mask version and git commit, and the versions of the packages
that compute the results. The workflow hands the run's part to its jobs in the environment
(RUN_ENV, set by rules/common.smk: no rerun trigger, so a report rebuilt later still shows the
run's own settings); a report built by hand says it was not recorded."""

import json
import os
import platform
from importlib import metadata

import yaml

RUN_ENV = "TAG2MASK_RUN"
PACKAGES = ("torch", "torchvision", "timm", "numpy", "pycocotools", "scikit-image", "h5py",
            "snakemake")


def run_record(config, preset, argv):
    """The environment value the workflow sets (a JSON string)."""
    return json.dumps({"config": config, "preset": preset, "command": list(argv)},
                      sort_keys=True, default=str)


def provenance():
    """{version, commit, packages, python, preset, command, config_yaml} of this run (the last
    three None when the workflow did not record them)."""
    from ..cli import git_commit, version

    run = json.loads(os.environ.get(RUN_ENV, "{}"))
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    config = run.get("config")
    return {
        "version": version(), "commit": git_commit(), "packages": packages,
        "python": platform.python_version(), "preset": run.get("preset"),
        "command": " ".join(run["command"]) if run.get("command") else None,
        "config_yaml": None if config is None else yaml.safe_dump(config, sort_keys=False),
    }
