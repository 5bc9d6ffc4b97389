"""The conda environment the rules declare lists the same dependencies as pyproject.toml
(its dependencies plus the `pretrained` extra, which the demo config uses)."""

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
