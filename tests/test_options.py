"""The schema says which action reads each config key (core/schema.yaml, core.options); the
rules' params, the commands' options and the checkpoints' identity come from it.

The rerun test changes every key in turn, on a workflow whose jobs Snakemake has recorded
(`snakemake --touch`), and asks Snakemake which jobs' params changed (its `params` rerun
trigger): exactly the rules that run the actions the schema names, or none for a key that says
how to run (x-rerun: false) or that its run does not read (another dataset kind's, another
retrieval rule's). The rule -> action map comes from the rules' own shell commands.
"""

import contextlib
import copy
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from tag2mask.cli import build_parser
from tag2mask.core.config import validate_config
from tag2mask.core.methods import registered_methods
from tag2mask.core.options import (
    ActionOptions,
    action_options,
    checkpoint_identity,
    key_readers,
    read_options,
)
from tag2mask.core.schema import load_schema

BASE = {
    "run_name": "tiny",
    "shards": 2,
    "dataset": {"kind": "synthetic",
                "synthetic": {"seed": 1, "train_images": 8, "val_images": 4, "image_size": 64}},
    "classifier": {"backbone": "tiny", "input_size": 64, "epochs": 1, "batch_size": 8},
    "maskrcnn": {"backbone": "tiny", "epochs": 1, "batch_size": 4, "min_size": [64],
                 "max_size": 64},
    "self_training": {"rounds": 1},
}


def sections():
    return {name: spec for name, spec in load_schema()["properties"].items()
            if spec.get("type") == "object"}


def cli_actions(stage):
    parser = build_parser(only=stage)
    stages = next(a for a in parser._actions if a.dest == "stage")
    return set(next(a for a in stages.choices[stage]._actions if a.dest == "action").choices)


def test_every_action_the_schema_names_exists():
    from tag2mask.cli import STAGES
    methods = registered_methods()
    for section, spec in sections().items():
        actions = cli_actions(section) if section in STAGES else set()
        if section in methods:  # a pseudo-mask method's options: its make action reads them
            actions.add("make")
        for key, (readers, _, _) in key_readers(section).items():
            own = {r for r in readers if " " not in r}
            assert own <= actions, (section, key, readers, actions)
            for stage, action in (r.split() for r in readers if " " in r):
                assert action in cli_actions(stage), (section, key, stage, action)


def test_options_of_an_action_are_its_keys_only():
    values = {k: spec.get("default") for k, spec in sections()["maskrcnn"]["properties"].items()}
    train = action_options(values, "maskrcnn", "train")
    predict = action_options(values, "maskrcnn", "predict")
    assert "lr" in train and "score_threshold" not in train
    assert "score_threshold" in predict and "lr" not in predict
    # runtime keys are no rerun trigger, and not in a checkpoint's identity
    assert "num_workers" not in train and "device" not in predict
    identity = checkpoint_identity({**train, "epochs": 3, "num_workers": 2}, "maskrcnn", "train")
    assert "lr" in identity and "epochs" not in identity and "num_workers" not in identity
    # what the command runs with: both kinds, the runtime ones from the environment
    options = read_options(values, "maskrcnn", "train", runtime={"num_workers": 5})
    assert options["num_workers"] == 5 and options["lr"] == values["lr"]
    with pytest.raises(KeyError, match="maskrcnn.score_threshold is not read by action 'train'"):
        options["score_threshold"]
    assert isinstance(options, ActionOptions)


def test_selector_reads_only_the_chosen_subsection():
    from tag2mask.core.config import section_options
    values = section_options('{"method": "prm"}', "retrieval")
    chosen = action_options(values, "retrieval", "make")
    assert "prm" in chosen and "consensus" not in chosen and "wise" not in chosen
    dataset = action_options(section_options("{}", "dataset"), "dataset", "prepare")
    assert set(dataset) == {"kind", "max_image_pixels", "large_images", "synthetic"}


def test_renamed_keys_are_read_in_their_new_place(caplog):
    from tag2mask.core.config import complete_config
    config = complete_config({"retrieval": {"grid_step": 2, "a": 0.5},
                              "proposals": {"scales": [10]}})
    assert config["retrieval"]["consensus"]["grid_step"] == 2
    assert config["retrieval"]["prm"]["a"] == 0.5
    assert config["proposals"]["builtin"]["scales"] == [10]
    assert "retrieval.grid_step is now retrieval.consensus.grid_step" in caplog.text


# --------------------------------------------------------------------- the rerun test

def leaves(schema, path=()):
    """(dotted path, spec) of every key below a section, subsections walked into."""
    for key, spec in schema.get("properties", {}).items():
        if spec.get("type") == "object":  # (retrieval.wise has no keys)
            yield from leaves(spec, (*path, key))
        else:
            yield (*path, key), spec


def changed_value(spec, value, workdir):
    """A valid value other than `value` for a key of this schema, or None if none exists."""
    kinds = spec.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if "enum" in spec:
        others = [v for v in spec["enum"] if v != value]
        return others[0] if others else None
    if "anyOf" in spec:  # peak_filter: one of an enum, or a number
        return "mean" if value != "mean" else 0.0
    if value is None:
        if "integer" in kinds:
            return max(spec.get("minimum", 16), 16)
        if "number" in kinds:
            return 0.5
        if "string" in kinds:
            (workdir / "weights.pth").write_bytes(b"0")  # an existing file for *_path keys
            return str(workdir / "weights.pth")
        if "array" in kinds:
            return ["x"]
        if "object" in kinds:  # response_layer
            return "backbone.layer"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int) and "integer" in kinds:
        up = value + 1
        return up if up <= spec.get("maximum", up) else value - 1
    if isinstance(value, (int, float)):
        low = spec.get("minimum", spec.get("exclusiveMinimum", -1e9))
        high = spec.get("maximum", spec.get("exclusiveMaximum", 1e9))
        new = value * 0.5 if value > 0 else value + 0.5
        return new if low <= new <= high and new != value else (value + high) / 2
    if isinstance(value, str) and Path(value).is_file():  # a path the run checks: another file
        Path(value + ".2").write_bytes(Path(value).read_bytes())
        return value + ".2"
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, dict):  # response_layer by backbone
        return "backbone.layer"
    if isinstance(value, list):
        items = spec.get("items", {})
        if "enum" in items:
            missing = [v for v in items["enum"] if v not in value]
            return value + missing[:1] if missing else value[:-1]
        if not value:
            return [changed_value(items, None, workdir)]
        if value and isinstance(value[0], (int, float)):
            return [changed_value(items, value[0], workdir), *value[1:]]
        if value and isinstance(value[0], str) and items.get("pattern") == "^[CTSFB]+$":
            return value[:-1] if len(value) > 1 else ["C"]
        return [*value, "val"] if "val" not in value else ["train"]
    raise AssertionError(f"no change for {spec}")


# a selector's other value that the runs below configure
CHOICES = {("dataset", "kind"): "tags", ("proposals", "method"): "external"}


def tags_dataset(folder):
    """A tags dataset the base config names (unselected) so that dataset.kind can change."""
    from PIL import Image
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.new("RGB", (32, 32), (i * 90, 40, 20)).save(folder / "img" / f"{i}.png")
    (folder / "tags.csv").write_text("image,labels\n0.png,cat\n1.png,dog\n")
    return {"images": str(folder / "img"), "labels_csv": str(folder / "tags.csv")}


class RecordedRun:
    """A workflow directory whose jobs Snakemake recorded for `config` (--touch: metadata,
    no outputs), and the rules whose params a changed config changes."""

    def __init__(self, workdir, config):
        self.workdir, self.config = workdir, config
        workdir.mkdir(parents=True, exist_ok=True)
        path = self.write(config)
        env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                               "-d", str(workdir), "--configfile", str(path), "--touch",
                               "--cores", "1", "all"], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        self.actions = self.rule_actions()

    def write(self, config):
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    @contextlib.contextmanager
    def workflow(self, config):
        """Snakemake's in-process workflow for `config`, with its DAG built."""
        from snakemake.api import SnakemakeApi
        from snakemake.settings.types import (
            ConfigSettings,
            DAGSettings,
            OutputSettings,
            Quietness,
            ResourceSettings,
        )
        path = self.write(config)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
                api_workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                                            config_settings=ConfigSettings(configfiles=[path]),
                                            snakefile=REPO / "Snakefile", workdir=self.workdir)
                api_workflow.dag(DAGSettings())
                workflow = api_workflow._workflow
                workflow._prepare_dag(forceall=False, ignore_incomplete=False,
                                      lock_warn_only=True)
                workflow._build_dag()
                yield workflow

    def rule_actions(self):
        """rule -> {(config section, action)} it runs, read off its shell command (the rules
        with jobs in this run)."""
        methods = registered_methods()
        out = {}
        with self.workflow(self.config) as workflow:
            for rule in {job.rule for job in workflow.dag.jobs}:
                m = re.search(r"tag2mask\.cli (\w+) ([\w-]+)", rule.shellcmd or "")
                if not m:
                    continue
                out[rule.name] = {m.groups()}
                if m.groups() == ("pseudo_masks", "make"):  # and the method's own section
                    method = self.config.get("pseudo_masks", {}).get("method", "retrieval")
                    out[rule.name].add((methods[method].section, "make"))
        return out

    def params_changed(self, config):
        """Rules of this run whose recorded params `config` changes (Snakemake's own test of
        its params rerun trigger: `persistence.params_changed`)."""
        with self.workflow(config) as workflow:
            return {job.rule.name for job in workflow.dag.jobs
                    if workflow.persistence.params_changed(job)}


def nested_get(config, path):
    for part in path:
        config = config[part]
    return config


def nested_set(config, path, value):
    for part in path[:-1]:
        config = config.setdefault(part, {})
    config[path[-1]] = value


def run_facts(config):
    """What the report's params say about a run (rules/report.smk): ground truth, a val split."""
    dataset = config["dataset"]
    no_val = {"synthetic": dataset["synthetic"]["val_images"] == 0,
              "voc": dataset["voc"]["val_split"] is None,
              "coco": dataset["coco"]["val_annotations"] is None,
              "tags": dataset["tags"]["val_fraction"] == 0}[dataset["kind"]]
    return dataset["kind"] != "tags", not no_val


def expected_rules(run, full_config, new_config):
    """The rules of `run` that the schema says read a key whose value differs between the two
    completed configs (a change can reach more keys than itself: dataset.kind chooses the
    preset, dataset.synthetic.image_size sizes Mask R-CNN); a subsection its selector does not
    choose is read by none. And the report, whose params carry the run's facts, where the
    change changes them."""
    wanted = set()
    for section, spec in sections().items():
        old, new = full_config.get(section, {}), new_config.get(section, {})
        selector = spec.get("x-selector")
        for key, (readers, reruns, _) in key_readers(section).items():
            if old.get(key) == new.get(key) or not reruns:
                continue
            if selector and spec["properties"][key].get("type") == "object" and \
                    new.get(selector) != key and old.get(selector) != key:
                continue  # a subsection neither config selects
            wanted |= {tuple(r.split()) if " " in r else (section, r) for r in readers}
    report = {"report"} if run_facts(full_config) != run_facts(new_config) else set()
    return report | {rule for rule, actions in run.actions.items() if actions & wanted}


@pytest.mark.slow
def test_every_key_reruns_exactly_the_actions_the_schema_names(tmp_path):
    from tag2mask.core.config import complete_config
    # the other choices of the selectors the runs make (dataset.kind, proposals.method) are
    # configured too, so that a change of the selector alone is a valid config
    (tmp_path / "props.json").write_text("{}")
    external = {"json": str(tmp_path / "props.json")}
    base = {**BASE, "dataset": {**BASE["dataset"], "tags": tags_dataset(tmp_path / "tags")},
            "proposals": {"external": external}}
    runs = {
        "retrieval": base,
        "irnet": {**base, "pseudo_masks": {"method": "irnet"}},
        "prm": {**base, "retrieval": {"method": "prm"},
                "proposals": {"method": "external", "external": external}},
        # SAM twice: the peak prompts (section sam), and its automatic masks as proposals
        "sam": {**base, "pseudo_masks": {"method": "sam"}},
        "sam-proposals": {**base, "proposals": {"method": "sam", "external": external}},
    }
    recorded = {name: RecordedRun(tmp_path / name, config) for name, config in runs.items()}
    # where each section's keys are read: IRNet's in the irnet run, PRM's and the external
    # proposals' in the prm run, the rest in the default one
    home = {"irnet": "irnet", "retrieval.prm": "prm", "proposals.external": "prm",
            "sam": "sam", "proposals.sam": "sam-proposals"}
    checked, workflow_keys, fixed = 0, [], []
    for section, spec in sections().items():
        for path, key_spec in leaves(spec):
            readers = key_readers(section)[path[0]][0]
            if not readers:  # run_name, shards, upper_bound, ...: the job graph, not options
                workflow_keys.append(".".join((section, *path)))
                continue
            name = home.get(f"{section}.{path[0]}", home.get(section, "retrieval"))
            run = recorded[name]
            full = complete_config(run.config)
            new = (CHOICES.get((section, *path))
                   or changed_value(key_spec, nested_get(full, (section, *path)), tmp_path))
            if new is None:
                fixed.append(".".join((section, *path)))
                continue
            config = copy.deepcopy(run.config)
            nested_set(config, (section, *path), new)
            validate_config(config, where=".".join((section, *path)))
            got = run.params_changed(config)
            want = expected_rules(run, full, complete_config(config))
            assert got == want, (f"{section}.{'.'.join(path)} = {new!r}: reran {sorted(got)}, "
                                 f"the schema says {sorted(want)}")
            checked += 1
    assert checked > 150, checked
    assert fixed == ["irnet.feature_stride"], fixed  # an enum of one value
    assert {"verification.enabled", "self_training.rounds"} <= set(workflow_keys)

    # The in-process answer is the one `snakemake -n --rerun-triggers params` gives.
    run = recorded["retrieval"]
    config = copy.deepcopy(run.config)
    nested_set(config, ("maskrcnn", "score_threshold"), 0.5)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d",
         str(run.workdir), "--configfile", str(run.write(config)), "-n", "--rerun-triggers",
         "params"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})
    rules = {m.group(1) for block in re.split(r"\n(?=rule \w+:)", proc.stdout)
             if (m := re.match(r"rule (\w+):", block)) and "Params have changed" in block}
    assert rules == run.params_changed(config) == {"predict"}, proc.stdout[-3000:]
