import subprocess
import sys

from tag2mask.cli import COMMANDS, main


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        try:
            main([name, "--help"])
        except SystemExit as e:
            assert e.code == 0
        assert name in capsys.readouterr().out


def test_input_errors_are_one_line_without_traceback(tmp_path, repo):
    proc = subprocess.run(
        [sys.executable, "-m", "tag2mask.cli", "prepare-dataset", "--config",
         str(tmp_path / "missing.yaml"), "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env={"PYTHONPATH": str(repo / "workflow")})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "missing.yaml: file not found" in proc.stderr
