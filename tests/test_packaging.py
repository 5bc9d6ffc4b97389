"""The conda environment the rules declare lists the same dependencies as pyproject.toml
(its dependencies plus the `pretrained` extra, which the demo config uses)."""

import json
import os
import re
import tomllib

import yaml


def _normalise(spec):
    name, rest = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec).groups()
    return name.lower().replace("_", "-"), rest.replace(" ", "")


def test_conda_env_matches_pyproject(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["pretrained"]
    expected = dict(_normalise(s) for s in specs)
    for env_file in sorted((repo / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        assert dict(_normalise(s) for s in pip) == expected, env_file.name
        conda = [d for d in env["dependencies"] if isinstance(d, str)]
        assert any(d.startswith("python=") for d in conda)


def test_every_rule_declares_the_conda_env(repo):
    common = (repo / "rules/common.smk").read_text()
    env = re.search(r'^ENV = "\.\./(envs/\w+\.yaml)"$', common, re.M)
    assert env and (repo / env.group(1)).is_file()
    for smk in sorted((repo / "rules").glob("*.smk")):
        text = smk.read_text()
        rules = re.findall(r"^\s*(?:checkpoint|rule) (\w+):", text, re.M)
        conda = re.findall(r"^(\s+)conda:\n\1    ENV$", text, re.M)
        assert len(rules) == len(conda), f"{smk.name}: every rule needs conda: ENV"


def test_a_non_editable_install_prepares_a_dataset_and_checks_a_config(repo, tmp_path):
    """The wheel carries what the commands read besides code (the config schema, the presets,
    the report's templates): installed into a folder of its own and run from elsewhere, it
    prepares a dataset from a config file and names a wrong key."""
    import subprocess
    import sys
    import zipfile

    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(repo)], check=True, capture_output=True,
                   timeout=300)
    wheel = next(dist.glob("tag2mask-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tag2mask/core/schema.yaml", "tag2mask/presets/synthetic.yaml",
            "tag2mask/presets/photos.yaml", "tag2mask/report/templates/report.html.j2"} <= names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = lambda *args: subprocess.run([sys.executable, *args], capture_output=True,
                                       text=True, env=env, cwd=tmp_path, timeout=300)
    where = run("-c", "import tag2mask; print(tag2mask.__file__)")
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({"dataset": {"kind": "synthetic",
        "synthetic": {"train_images": 3, "val_images": 0, "image_size": 48}}}))
    proc = run("-m", "tag2mask.cli", "dataset", "prepare", "--config", "my.yaml",
               "--out-dir", "out")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "out/manifest.json").read_text())["images"]) == 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"maskrcnn": {"epochz": 3}}))
    proc = run("-m", "tag2mask.cli", "maskrcnn", "train", "--config", "bad.yaml", "--store",
               "x.h5", "--manifest", "out/manifest.json", "--out-dir", "m")
    assert proc.returncode == 2 and "config key maskrcnn: Additional properties are not " \
        "allowed ('epochz' was unexpected)" in proc.stderr, proc.stderr
