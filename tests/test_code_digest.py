"""Code digests (tag2mask.core.code_digest): the rerun trigger for code changes, computed from
the modules an action imports. Known answers on a constructed package, and the rules' specs
on the real one."""

import re

import pytest

from tag2mask.core.code_digest import PACKAGE_DIR, code_digest, source_files

STAGE_CLI = '''
from ..core.args import add
def run_a(args):
    from .a import work
def run_b(args):
    from .b import work
'''


@pytest.fixture
def package(tmp_path):
    """tag2mask-like package: stage/cli.py with two actions; a -> core.helper; b alone;
    a registry that names core.plugin in a string."""
    files = {
        "__init__.py": "", "core/__init__.py": "", "stage/__init__.py": "",
        "core/args.py": "def add(): pass\n",
        "core/helper.py": "X = 1\n",
        "core/plugin.py": "Y = 1\n",
        "core/unused.py": "Z = 1\n",
        "stage/cli.py": STAGE_CLI,
        "stage/a.py": "from ..core import helper\nREGISTRY = {'p': 'tag2mask.core.plugin'}\n"
                      "def work(): pass\n",
        "stage/b.py": "import tag2mask.core.args\ndef work(): pass\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def names(spec, root):
    return sorted(p.relative_to(root).as_posix() for p in source_files(spec, root))


def test_an_action_runs_its_imports_and_the_cli_module_level_only(package):
    assert names("stage.cli:run_a", package) == [
        "__init__.py", "core/__init__.py", "core/args.py", "core/helper.py", "core/plugin.py",
        "stage/__init__.py", "stage/a.py", "stage/cli.py"]
    assert names("stage.cli:run_b", package) == [
        "__init__.py", "core/__init__.py", "core/args.py", "stage/__init__.py", "stage/b.py",
        "stage/cli.py"]


def test_a_helper_change_reruns_the_actions_that_import_it_and_no_other(package):
    a, b = code_digest("stage.cli:run_a", package), code_digest("stage.cli:run_b", package)
    (package / "core/helper.py").write_text("X = 2\n")  # imported by a, through stage/a.py
    assert code_digest("stage.cli:run_a", package) != a
    assert code_digest("stage.cli:run_b", package) == b
    a = code_digest("stage.cli:run_a", package)
    (package / "core/plugin.py").write_text("Y = 2\n")  # named in a's registry
    assert code_digest("stage.cli:run_a", package) != a
    a = code_digest("stage.cli:run_a", package)
    (package / "core/unused.py").write_text("Z = 2\n")
    assert code_digest("stage.cli:run_a", package) == a
    (package / "core/args.py").write_text("def add(): return 1\n")  # the cli's own import
    assert code_digest("stage.cli:run_a", package) != a
    assert code_digest("stage.cli:run_b", package) != b


def test_unknown_module_or_function_is_an_error(package):
    with pytest.raises(ValueError, match="no module"):
        code_digest("stage.nope:run_a", package)
    with pytest.raises(ValueError, match="no function run_c"):
        code_digest("stage.cli:run_c", package)


def test_every_rule_digest_names_an_action_of_its_stage(repo):
    specs = {}
    for smk in (repo / "rules").glob("*.smk"):
        text = smk.read_text()
        for spec in re.findall(r'code_digest\("([\w.:]+)"\)', text):
            specs[spec] = smk.stem
        for stage, action in re.findall(r'action_params\("(\w+) ([\w-]+)"', text):
            specs[f"{stage}.cli:run_{action.replace('-', '_')}"] = smk.stem
    assert len(specs) >= 12
    for spec, rule_file in specs.items():
        files = {p.relative_to(PACKAGE_DIR).as_posix() for p in source_files(spec)}
        stage = spec.split(".")[0]
        assert rule_file in (stage, "gather"), (spec, rule_file)
        assert f"{stage}/__init__.py" in files


def test_real_actions_follow_their_own_imports():
    extract = {p.relative_to(PACKAGE_DIR).as_posix() for p in source_files("peaks.cli:run_extract")}
    assert {"peaks/extract.py", "peaks/prm.py", "classifier/model.py", "core/store.py",
            "core/atomic.py"} <= extract
    assert "peaks/quality.py" not in extract  # `peaks evaluate` only
    report = {p.relative_to(PACKAGE_DIR).as_posix() for p in source_files("report.cli:run_build")}
    assert "report/templates/report.html.j2" in report  # templates are code too
    prepare = {p.relative_to(PACKAGE_DIR).as_posix() for p in source_files("dataset.cli:run_prepare")}
    assert {"dataset/voc.py", "dataset/coco.py", "dataset/synthetic.py"} <= prepare  # READERS
