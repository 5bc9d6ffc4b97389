"""The HTML report, built from small constructed inputs, and rendered in headless Chromium."""

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tag2mask.cli import main as cli_main
from tag2mask.core import masks as rle
from tag2mask.core.store import StoreWriter
from tag2mask.dataset.groundtruth import CocoBuilder
from tag2mask.dataset.manifest import Manifest, make_record, read_manifest, write_manifest
from tag2mask.report.cli import inputs_from_args, missing_reasons
from tag2mask.report.page import TEMPLATES, build_report, verdict
from tag2mask.report.readers import Part, ReportInputs, read_benchmarks

REPO = Path(__file__).resolve().parents[1]
H, W = 48, 64
OPTIONS = {"panel_images": 2, "panel_size": 96}


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def evaluation(m25, m50, m75, ap, abo, per_class=None):
    return {"mAP@0.25": m25, "mAP@0.5": m50, "mAP@0.75": m75, "AP": ap, "ABO": abo,
            "images": 2, "predictions": 3, "gt_instances": 4,
            "per_class": per_class or {"disc": {"AP@0.5": m50, "instances": 2},
                                       "square": {"AP@0.5": None, "instances": 0}}}


@pytest.fixture
def run_dir(tmp_path):
    """A run folder with every report input, made by hand (no pipeline)."""
    classes = ["disc", "square"]
    (tmp_path / "images").mkdir()
    records = []
    for i, split in enumerate(["train", "train", "val", "val"]):
        img = np.full((H, W, 3), 40 + 40 * i, np.uint8)
        img[10:30, 10:30] = (220, 60, 60)
        path = tmp_path / "images" / f"im{i}.png"
        Image.fromarray(img).save(path)
        records.append(make_record(f"im{i}", path, W, H, split, ["disc"], classes))
    manifest_path = tmp_path / "dataset" / "manifest.json"
    write_manifest(manifest_path, Manifest("constructed", classes, records,
                                           stats={"splits": {"train": 2, "val": 2}}))
    m = read_manifest(manifest_path)
    for split in ("train", "val"):
        b = CocoBuilder(classes)
        for rec in m.split(split):
            b.add_image(m.coco_image_id(rec.id), rec, box(10, 30, 10, 30)[None], [0])
        (tmp_path / "dataset" / "gt").mkdir(exist_ok=True)
        (tmp_path / "dataset" / "gt" / f"{split}.json").write_text(json.dumps(b.to_dict()))
    with StoreWriter(tmp_path / "peaks.h5", "peaks", classes) as w:
        for rec in m.split("train"):
            w.add(rec.id, H, W, {"peak_class": np.array([0], np.int16),
                                 "peak_yx": np.array([[20, 20]], np.float32),
                                 "peak_value": np.array([1.0], np.float32)})
    with StoreWriter(tmp_path / "pseudo_masks.h5", "pseudo_masks", classes) as w:
        for rec in m.split("train"):
            counts = rle.encode(box(12, 28, 12, 34)[None])
            w.add(rec.id, H, W, {"masks": counts, "labels": np.array([0], np.int16),
                                 "scores": np.array([0.7], np.float32),
                                 "boxes": rle.boxes(counts, H, W),
                                 "peak_index": np.array([0], np.int32),
                                 "peak_yx": np.array([[20, 20]], np.float32)})
    preds = [{"image_id": m.coco_image_id(rec.id), "category_id": 1, "score": 0.9,
              "segmentation": {"size": [H, W], "counts": rle.encode(box(11, 30, 10, 31))}}
             for rec in m.split("val")]
    (tmp_path / "predictions_val.json").write_text(json.dumps(preds))
    evals = {
        "pseudo.json": evaluation(0.512, 0.2468, 0.081, 0.11, 0.4321),
        "mrcnn_train.json": evaluation(0.634, 0.4173, 0.237, 0.25, 0.552),
        "mrcnn_val.json": evaluation(0.601, 0.3989, 0.2004, 0.22, 0.5333),
        "round1.json": evaluation(0.65, 0.4456, 0.26, 0.27, 0.57),
    }
    for name, ev in evals.items():
        (tmp_path / name).write_text(json.dumps(ev))
    (tmp_path / "classifier_log.jsonl").write_text("".join(
        json.dumps({"epoch": e, "loss": 1.0 / e, "val_mAP": 0.2 * e}) + "\n" for e in (1, 2, 3)))
    (tmp_path / "maskrcnn_log.jsonl").write_text("".join(
        json.dumps({"epoch": e, "loss": 3.0 - e, "loss_mask": 0.7 - 0.1 * e,
                    "pseudo_masks": {"objects": 812, "ignored": 40 + e, "left_out": 9}}) + "\n"
        for e in (1, 2)))
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    header = "s\th:m:s\tmax_rss\n"
    (bench / "peaks_0.tsv").write_text(header + "12.5\t0:00:12\t100\n")
    (bench / "peaks_1.tsv").write_text(header + "7.5\t0:00:07\t100\n")
    (bench / "train_maskrcnn.tsv").write_text(header + "95.25\t0:01:35\t900\n")
    return tmp_path


def full_inputs(d):
    return ReportInputs(
        manifest=d / "dataset" / "manifest.json", run_name="unit",
        pseudo_eval=Part(d / "pseudo.json"), maskrcnn_train_eval=Part(d / "mrcnn_train.json"),
        maskrcnn_eval=Part(d / "mrcnn_val.json"),
        upper_bound_eval=Part(None, "upper_bound is false in the config"),
        round_evals={1: Part(d / "round1.json")},
        classifier_log=Part(d / "classifier_log.jsonl"),
        maskrcnn_log=Part(d / "maskrcnn_log.jsonl"),
        benchmarks=Part(d / "benchmarks"), peaks=Part(d / "peaks.h5"),
        pseudo_masks=Part(d / "pseudo_masks.h5"),
        predictions_val=Part(d / "predictions_val.json"),
        gt_train=Part(d / "dataset" / "gt" / "train.json"),
        gt_val=Part(d / "dataset" / "gt" / "val.json"))


class _Rows(HTMLParser):
    """The rows of every table: their cells' text."""

    def __init__(self):
        super().__init__()
        self.rows, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def table_rows(page):
    """Each table row as "|cell|cell|...|" (cell text, tags stripped), for value checks."""
    parser = _Rows()
    parser.feed(page)
    return ["|" + "|".join(cells) + "|" for cells in parser.rows]


def element_text(page, element_id):
    """The text of the element with this id (tags stripped, white space collapsed)."""
    m = re.search(rf'<(\w+)[^>]* id="{element_id}"[^>]*>(.*?)</\1>', page, re.DOTALL)
    return m and " ".join(re.sub(r"<[^>]+>", "", m.group(2)).split())


def test_report_holds_the_figures_and_the_verdict(run_dir):
    page = build_report(full_inputs(run_dir), OPTIONS)
    rows = table_rows(page)
    row = next(r for r in rows if "Pseudo masks" in r)
    assert all(v in row for v in ("51.2", "24.7", "8.1", "11.0", "43.2"))
    row = next(r for r in rows if "Mask R-CNN on pseudo masks" in r and "|train|" in r)
    assert all(v in row for v in ("63.4", "41.7", "23.7", "25.0", "55.2"))
    row = next(r for r in rows if "Self-training round 1" in r)
    assert "44.6" in row and "57.0" in row
    row = next(r for r in rows if "Upper bound" in r)
    assert "not available: upper_bound is false in the config" in row
    # WISE's finding, stated plainly, on the same training images
    assert element_text(page, "verdict").startswith(
        "Yes: Mask R-CNN beats its own pseudo masks on this run (mAP@0.5 41.7 vs 24.7 on the "
        "same training images; better on 4 of 4")
    assert 'class="verdict yes"' in page
    # published reference points, labelled as VOC 2012 figures
    assert "PASCAL VOC 2012 val" in page and "41.7" in page and "67.9" in page
    # per-class AP (a class without GT shows n/a)
    disc = next(r for r in rows if r.startswith("|disc|") or "|disc|" in r[:8])
    assert "24.7" in disc and "41.7" in disc
    # benchmark times: the two peak shards are summed into one stage
    assert "|peaks|2|20.0|12.5|" in rows
    assert "95.2" in page or "95.3" in page
    # what became of the pseudo masks in training (the last epoch's record)
    assert element_text(page, "training-masks").startswith(
        "Mask R-CNN trained on 812 pseudo masks as objects and 42 as ignore regions; 9 were "
        "left out")
    # curves and pictures are inline; nothing is fetched from elsewhere
    assert page.count("<svg") >= 4  # classifier loss + val mAP, Mask R-CNN losses, timings
    assert page.count('src="data:image/png;base64,') == 2 * 4 + 2 * 3
    assert not re.search(r"(https?:)?//[a-z]", page.replace("</", ""))
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)


def test_report_from_nothing_but_a_manifest_says_what_is_missing(run_dir, tmp_path):
    inputs = ReportInputs(manifest=run_dir / "dataset" / "manifest.json",
                          pseudo_eval=Part(None, "the dataset has no ground truth"),
                          maskrcnn_log=Part(tmp_path / "missing" / "log.jsonl"))
    page = build_report(inputs, OPTIONS)
    assert "not available: the dataset has no ground truth" in page
    assert "does not exist" in page  # a named file that is absent
    assert "Cannot tell whether Mask R-CNN beats its own pseudo masks" in page
    assert page.count("<img") == 2 * 1 + 2 * 1  # the plain images still shown


def test_upper_bound_row_and_gap(run_dir):
    inputs = full_inputs(run_dir)
    (run_dir / "ub.json").write_text(json.dumps(evaluation(0.9, 0.7978, 0.5, 0.45, 0.8)))
    inputs.upper_bound_eval = Part(run_dir / "ub.json")
    page = build_report(inputs, OPTIONS)
    row = next(r for r in table_rows(page) if "Upper bound" in r)
    assert "79.8" in row and "90.0" in row
    assert "mAP@0.5 39.9 vs 79.8, i.e. 50% of the fully supervised figure" in page


def test_verdict_no_and_val_fallback():
    low, high = evaluation(0.5, 0.3, 0.1, 0.1, 0.4), evaluation(0.6, 0.4, 0.2, 0.2, 0.5)
    cls, text = verdict(high, low, None)
    assert cls == "no" and text.startswith("No: Mask R-CNN does not beat")
    assert "30.0 vs 40.0" in text
    cls, text = verdict(low, None, high)
    assert cls == "yes" and "different images" in text


def test_benchmarks_grouping(tmp_path):
    (tmp_path / "retrieve").mkdir()
    for i, s in enumerate((1.0, 2.0, 4.0)):
        (tmp_path / "retrieve" / f"{i}.tsv").write_text(f"s\th:m:s\n{s}\t0\n")
    (tmp_path / "report.tsv").write_text("s\th:m:s\n0.5\t0\n")
    (tmp_path / "odd.tsv").write_text("x\n1\n")
    st = read_benchmarks(tmp_path)
    assert st == {"retrieve": {"jobs": 3, "seconds": 7.0, "max": 4.0},
                  "report": {"jobs": 1, "seconds": 0.5, "max": 0.5}}
    # a run with 2 shards ignores shard 2, left by an earlier run with 3
    st = read_benchmarks(tmp_path, shards=2)
    assert st["retrieve"] == {"jobs": 2, "seconds": 3.0, "max": 2.0}
    assert st["report"]["jobs"] == 1


def test_benchmarks_count_only_this_runs_jobs(tmp_path):
    """Every benchmark name the rules write (rules/*.smk), left by an earlier run with more
    shards, more self-training rounds, the upper bound or a val split, is not counted; the
    current run's files are."""
    names = {
        # sharded stages: <stage>/<shard>
        "extract_peaks/0": 1, "extract_peaks/1": 1, "extract_peaks/2": 0, "extract_peaks/10": 0,
        "propose/0": 1, "propose/1": 1, "propose/3": 0,
        "retrieve/0": 1, "retrieve/1": 1, "retrieve/2": 0,
        "gather_peaks": 1, "prepare_dataset": 1, "train_classifier": 1, "report": 1,
        # per model and split
        "train_maskrcnn/maskrcnn": 1, "predict/maskrcnn_train": 1,
        "evaluate_predictions/maskrcnn_train": 1,
        "predict/maskrcnn_val": 0, "evaluate_predictions/maskrcnn_val": 0,
        # self-training: this run has one round
        "self_training_masks_1": 1, "train_maskrcnn/self_training/round_1": 1,
        "predict/self_training/round_1_train": 1,
        "self_training_masks_2": 0, "train_maskrcnn/self_training/round_2": 0,
        "predict/self_training/round_2_train": 0,
        "evaluate_predictions/self_training/round_12_train": 0,
        # the upper bound: off in this run
        "gt_training_masks": 0, "train_maskrcnn/upper_bound": 0, "predict/upper_bound_train": 0,
        "evaluate_predictions/upper_bound_train": 0,
    }
    for name in names:
        path = tmp_path / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("s\th:m:s\n1.0\t0\n")
    everything = read_benchmarks(tmp_path)
    assert sum(v["jobs"] for v in everything.values()) == len(names)
    st = read_benchmarks(tmp_path, shards=2, rounds=1, upper_bound=False, val_split=False)
    assert sum(v["jobs"] for v in st.values()) == sum(names.values())
    assert st["extract_peaks"]["jobs"] == st["propose"]["jobs"] == st["retrieve"]["jobs"] == 2
    assert "gt_training_masks" not in st and "train_maskrcnn/upper_bound" not in st
    assert st["self_training_masks"]["jobs"] == 1
    # with the facts of a run that has them, the same files count
    st = read_benchmarks(tmp_path, shards=11, rounds=12, upper_bound=True, val_split=True)
    assert sum(v["jobs"] for v in st.values()) == len(names)


def build_args(*args):
    """`tag2mask report build` arguments as parsed by the command line."""
    from tag2mask.cli import build_parser
    return build_parser(only="report").parse_args(
        ["report", "build", "--out", "r.html", "--input", "manifest=m.json", *args])


def test_report_says_what_produced_the_run(run_dir, monkeypatch):
    from tag2mask.report.provenance import RUN_ENV, run_record
    inputs = ReportInputs(manifest=run_dir / "dataset" / "manifest.json")
    options = {"panel_images": 0, "panel_size": 96}
    by_hand = build_report(inputs, options)
    assert ('Settings</td><td><span class="na">not available: not recorded (the report was '
            "built by hand)") in \
        by_hand and 'id="config"' not in by_hand
    config = {"run_name": "r", "maskrcnn": {"epochs": 12, "min_size": [128]}}
    monkeypatch.setenv(RUN_ENV, run_record(config, "preset synthetic (why)",
                                           ["snakemake", "--cores", "2"]))
    page = build_report(inputs, options)
    assert "<td>preset synthetic (why)</td>" in page
    assert "<code>snakemake --cores 2</code>" in page
    assert '<details id="config">' in page and "  epochs: 12\n" in page
    from importlib import metadata
    assert f"torch {metadata.version('torch')}," in page
    assert f"snakemake {metadata.version('snakemake')}" in page


def test_report_command(run_dir):
    out = run_dir / "report.html"
    rc = cli_main(["report", "build", "--out", str(out), "--config", json.dumps(OPTIONS),
                   "--input", f"manifest={run_dir / 'dataset' / 'manifest.json'}",
                   f"pseudo_eval={run_dir / 'pseudo.json'}",
                   "--input", f"round_eval_2={run_dir / 'round1.json'}",
                   "--ground-truth", "yes", "--upper-bound", "no", "--val-split", "yes",
                   "--rounds", "2", "--benchmarks", str(run_dir / "benchmarks")])
    assert rc == 0
    rows = table_rows(out.read_text())
    assert next(r for r in rows if r.startswith("|Self-training round 2|")).count("44.6") == 1
    assert ("|Self-training round 1|val|not available: not produced by this run|" in rows)
    assert ("|Upper bound: Mask R-CNN on GT masks|val|not available: upper_bound is false in "
            "the config|") in rows
    assert "|peaks|2|20.0|12.5|" in rows


@pytest.mark.parametrize("args, message", [
    (["--input", "nonsense=x"], "unknown input 'nonsense'"),
    (["--input", "peaks"], "expected NAME=PATH"),
    (["--input", "peaks=a.h5", "peaks=b.h5"], "peaks is given twice"),
    (["--input", "round_eval_x=a.json"], "unknown input 'round_eval_x'"),
])
def test_report_command_rejects_bad_inputs(run_dir, capsys, args, message):
    rc = cli_main(["report", "build", "--out", str(run_dir / "r.html"),
                   "--input", f"manifest={run_dir / 'dataset' / 'manifest.json'}", *args])
    assert rc == 2 and message in capsys.readouterr().err


def test_report_command_needs_the_manifest(run_dir, capsys):
    rc = cli_main(["report", "build", "--out", str(run_dir / "r.html"),
                   "--input", f"peaks={run_dir / 'peaks.h5'}"])
    assert rc == 2 and "manifest=PATH is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a run fact that is not yes or no
        build_args("--ground-truth", "maybe")


NO_GT, NO_VAL = "the dataset has no ground truth", "the dataset has no val split"


def test_missing_parts_say_why_from_the_run_facts():
    # a dataset without ground truth: every evaluation side part says so, the others are
    # given; the rounds the run makes are listed, without evaluations
    inputs = inputs_from_args(build_args(
        "--input", "peaks=p.h5", "round_log_1=l.jsonl", "--ground-truth", "no",
        "--upper-bound", "yes", "--val-split", "yes", "--rounds", "1"))
    for name in ("pseudo_eval", "maskrcnn_train_eval", "maskrcnn_eval", "upper_bound_eval",
                 "upper_bound_log", "gt_train", "gt_val"):
        assert getattr(inputs, name).why() == NO_GT, name
    assert inputs.rounds_reason == NO_GT and inputs.round_evals == {}
    assert inputs.peaks.path == Path("p.h5") and inputs.round_logs == {1: Part(Path("l.jsonl"))}
    assert inputs.round_stores[1].why() == "not produced by this run"
    assert inputs.maskrcnn_log.why() == "not produced by this run"
    assert inputs.manifest == Path("m.json")
    # ground truth, but no upper bound, no val split and no self-training
    inputs = inputs_from_args(build_args("--ground-truth", "true", "--upper-bound", "false",
                                         "--val-split", "no", "--rounds", "0"))
    assert inputs.upper_bound_eval.why() == inputs.upper_bound_log.why() == \
        "upper_bound is false in the config"
    for name in ("predictions_val", "maskrcnn_eval", "gt_val"):
        assert getattr(inputs, name).why() == NO_VAL, name
    assert inputs.pseudo_eval.why() == "not produced by this run"
    assert inputs.rounds_reason == "self_training.rounds is 0 in the config"
    assert inputs.round_logs == inputs.round_stores == {}
    # no ground truth and no val split: ground truth explains the evaluations
    why = missing_reasons(ground_truth=False, val_split=False, rounds=0)
    assert why["maskrcnn_eval"] == why["gt_val"] == NO_GT
    assert why["predictions_val"] == NO_VAL
    assert why["round_eval"] == "self_training.rounds is 0 in the config"
    # facts not given: nothing is explained
    assert missing_reasons() == {}
    inputs = inputs_from_args(build_args())
    assert inputs.rounds_reason == "self-training was not run"
    assert inputs.benchmarks.why() == "not produced by this run"


def test_the_rule_passes_what_the_command_takes(tmp_path):
    """The report rule's command line (dry run) parses, with every input the rule declares."""
    config = {"run_name": "dry", "upper_bound": False, "self_training": {"rounds": 1},
              "dataset": {"kind": "synthetic", "synthetic": {"val_images": 0}}}
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
         "--configfile", str(tmp_path / "config.yaml"), "-n", "-p", "--cores", "1",
         "results/dry/report.html"], check=False, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if "report build" in x)
    argv = shlex.split(line[line.index("report build"):line.index(" > ")])
    from tag2mask.cli import build_parser
    args = build_parser(only="report").parse_args(argv)
    inputs = inputs_from_args(args)
    assert inputs.manifest == Path("results/dry/dataset/manifest.json")
    assert inputs.classifier_log.path == Path("results/dry/classifier/log.jsonl")
    assert inputs.pseudo_eval.path == Path("results/dry/pseudo_masks/evaluation.json")
    assert inputs.round_evals[1].path == Path(
        "results/dry/self_training/round_1/evaluation_train.json")
    assert inputs.eval_split == "train" and inputs.shards == 2
    assert inputs.upper_bound_eval.why() == "upper_bound is false in the config"
    assert inputs.gt_val.why() == NO_VAL
    assert inputs.benchmarks.path == Path("results/dry/benchmarks")


def test_text_from_the_inputs_is_escaped(run_dir):
    inputs = ReportInputs(manifest=run_dir / "dataset" / "manifest.json", run_name="<i>run</i>",
                          pseudo_eval=Part(None, "a <script>reason</script> & more"))
    page = build_report(inputs, {"panel_images": 0, "panel_size": 96})
    assert "<i>run" not in page and "&lt;i&gt;run&lt;/i&gt;" in page
    assert "<script>reason" not in page
    assert "a &lt;script&gt;reason&lt;/script&gt; &amp; more" in page
    assert "not available: report.panel_images is 0" in page


def test_templates_ship_with_the_package(repo):
    """A non-editable install carries the templates: pyproject's package data names them."""
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["tag2mask"]
    package = repo / "workflow" / "tag2mask"
    files = sorted(p.relative_to(package).as_posix() for p in TEMPLATES.iterdir())
    assert files and {"report/templates/report.html.j2"} <= set(files)
    for f in files:
        assert any(fnmatch.fnmatch(f, p) for p in patterns), f


# ----------------------------------------------------------------------------- in a browser

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


def chromium(tmp_path, *args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                             "(apt-get install -y chromium chromium-driver)")
def test_report_renders_in_chromium_with_all_images(run_dir, tmp_path):
    page = build_report(full_inputs(run_dir), OPTIONS)
    path = tmp_path / "report.html"
    path.write_text(page)
    n_images = page.count("<img")
    dom = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", path.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-images-total="{n_images}"' in dom.stdout, dom.stdout[:300]
    assert 'data-images-loaded="all"' in dom.stdout
    assert "Yes: Mask R-CNN beats its own pseudo masks" in dom.stdout

    shot = tmp_path / "shot.png"
    res = chromium(tmp_path, "--window-size=1200,1600", "--hide-scrollbars",
                   f"--screenshot={shot}", path.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels.std() > 10  # not a blank page
    # the green verdict box is drawn near the top
    green = (np.abs(pixels[:400] - [0xe3, 0xf4, 0xe1]).sum(-1) < 6).sum()
    assert green > 2000


def test_stage_table_traces_each_stage(tmp_path):
    """The stage-by-stage table reads the classifier log and the peak and proposal quality
    JSONs; a part the run does not have shows why."""
    from tag2mask.report.page import stage_rows
    from tag2mask.report.readers import Part, ReportInputs

    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1, "val_mAP": 0.5}\n{"epoch": 2, "val_mAP": 0.75}\n')
    peaks = tmp_path / "peaks.json"
    peaks.write_text(json.dumps({"peaks_per_image": 4.0, "peak_precision": 0.5,
                                 "instance_recall": 0.25, "duplicate_rate": 0.125}))
    inputs = ReportInputs(manifest=tmp_path / "m.json", classifier_log=Part(log),
                          peaks_quality=Part(peaks),
                          proposals_quality=Part(None, "the dataset has no ground truth"))
    rows = {(stage, measure): (value, why) for stage, measure, value, why in stage_rows(inputs)}
    assert rows[("Classifier", "val classification mAP (last epoch)")][0] == "0.750"
    assert rows[("Peaks", "peaks per image")][0] == "4.0"
    assert rows[("Peaks", "instance recall (instances with a peak)")][0] == "0.250"
    assert rows[("Proposals", "ABO (best IoU per instance)")] == \
        (None, "the dataset has no ground truth")
