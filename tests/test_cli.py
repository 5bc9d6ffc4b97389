import subprocess
import sys

import pytest

from tag2mask.cli import STAGES, build_parser, main


def actions_of(stage):
    parser = build_parser(only=stage)
    stages = next(a for a in parser._actions if a.dest == "stage")
    actions = next(a for a in stages.choices[stage]._actions if a.dest == "action")
    return list(actions.choices)


def test_every_stage_and_action_has_help(capsys):
    for stage in STAGES:
        actions = actions_of(stage)
        assert actions, stage
        for action in actions:
            with pytest.raises(SystemExit) as e:
                main([stage, action, "--help"])
            assert e.value.code == 0
            assert f"{stage} {action}" in capsys.readouterr().out


def test_stages_are_the_package_folders_and_rule_files(repo):
    """A stage's folder, its rule file and its subcommand carry one name."""
    package = repo / "workflow" / "tag2mask"
    folders = {p.parent.name for p in package.glob("*/cli.py")}
    assert folders == set(STAGES)
    rule_files = {p.stem for p in (repo / "rules").glob("*.smk")} - {"common", "gather"}
    assert rule_files == set(STAGES)


def test_input_errors_are_one_line_without_traceback(tmp_path, repo):
    proc = subprocess.run(
        [sys.executable, "-m", "tag2mask.cli", "dataset", "prepare", "--config",
         str(tmp_path / "missing.yaml"), "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env={"PYTHONPATH": str(repo / "workflow")})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "missing.yaml: file not found" in proc.stderr
