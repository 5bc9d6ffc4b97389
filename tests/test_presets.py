"""A config with only a `dataset:` section gets settings made for its data (core/presets.py),
not the demo's: the synthetic preset sizes Mask R-CNN to the generated images, photographs
get the photo preset; the choice is printed and reaches the report."""

import json
import re

import numpy as np
import pytest
from conftest import COCO_TINY, VOC_MINI
from PIL import Image
from test_workflow import snakemake

from tag2mask.core.config import complete_config


def planned_options(workdir, config):
    """{(stage, action): its --config options} of every job a forced dry run plans, and what
    the workflow printed about its settings."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = snakemake(workdir, "-n", "-p", "--forceall", config=config)
    options = {}
    for m in re.finditer(r"tag2mask\.cli (\w+) ([\w-]+) .*?--config '(\{.*?\})'", proc.stdout):
        options[m.group(1), m.group(2)] = json.loads(m.group(3))
    return options, proc.stderr


def coco_photos(folder, n=3, size=(640, 480)):
    """A COCO-format dataset of n photo-sized images with one box-shaped object each."""
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        name = f"{i}.jpg"
        Image.new("RGB", size, (90, 60 + 20 * i, 30)).save(folder / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": size[0], "height": size[1]})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                            "bbox": [100, 100, 200, 150], "area": 30000,
                            "segmentation": [[100, 100, 300, 100, 300, 250, 100, 250]]})
    (folder / "train.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "traffic light"}]}))
    return {"kind": "coco", "coco": {"train_annotations": str(folder / "train.json"),
                                     "train_images": str(folder / "images")}}


def test_a_dataset_section_alone_gets_settings_for_its_images(tmp_path):
    small = {"dataset": {"kind": "synthetic", "synthetic": {"image_size": 96}}}
    large = {"dataset": {"kind": "synthetic", "synthetic": {"image_size": 256}}}
    photos = {"dataset": coco_photos(tmp_path / "coco")}
    plans = {}
    for name, config in (("small", small), ("large", large), ("photos", photos)):
        plans[name] = planned_options(tmp_path / name, config)

    for name, size in (("small", 96), ("large", 256)):
        options, printed = plans[name]
        train = options["maskrcnn", "train"]
        assert train["min_size"] == [size] and train["max_size"] == size
        assert train["anchor_sizes"] == [round(size / 16), round(size / 8), round(size / 4),
                                         round(size / 2), size]
        assert options["classifier", "train"]["stride"] == 16  # the demo's classifier
        assert "tag2mask: settings: preset synthetic (preset auto, dataset kind synthetic" \
            in printed
    options, printed = plans["photos"]
    train = options["maskrcnn", "train"]
    assert train["min_size"] == [320] and train["max_size"] == 480
    assert train["anchor_sizes"] == [16, 32, 64, 128, 256] and train["fpn_channels"] == 128
    classifier = options["classifier", "train"]
    assert classifier["stride"] == 8 and classifier["pooling"] == "mean"
    assert classifier["optimizer"] == "sgd"  # not the demo's Adam at 2e-4
    assert options["proposals", "make"]["builtin"]["working_size"] == 384
    assert "tag2mask: settings: preset photos (preset auto, dataset kind coco" in printed
    # a user's run of photos never writes into the demo's folder
    assert (tmp_path / "photos").exists() and "results/coco/" in \
        snakemake(tmp_path / "photos", "-n", config=photos).stdout


def test_user_keys_win_over_the_preset_and_none_leaves_the_defaults():
    config = complete_config({"dataset": {"kind": "voc", "voc": {"root": "x"}},
                              "maskrcnn": {"epochs": 2}})
    assert config["preset"] == "photos" and config["run_name"] == "voc"
    assert config["maskrcnn"]["epochs"] == 2 and config["maskrcnn"]["min_size"] == [320]
    bare = complete_config({"preset": "none", "dataset": {"kind": "voc", "voc": {"root": "x"}}})
    assert bare["classifier"]["backbone"] == "resnet50"  # the papers' defaults
    assert bare["maskrcnn"]["min_size"] == [480, 512, 544, 576, 608]
    demo = complete_config({})
    assert demo["preset"] == "synthetic" and demo["run_name"] == "demo"
    assert demo["maskrcnn"]["anchor_sizes"] == [8, 16, 32, 64, 128]


@pytest.mark.parametrize("kind", ["voc", "coco", "tags"])
def test_every_photo_kind_takes_the_photo_preset(kind):
    assert complete_config({"dataset": {"kind": kind}})["preset"] == "photos"
    assert np.array_equal(complete_config({"dataset": {"kind": kind}})["maskrcnn"]["min_size"],
                          [320])


PAPER_CONFIGS = {
    "voc2012.yaml": lambda: {"voc": {"root": str(VOC_MINI)}},
    "coco2017.yaml": lambda: {"coco": {
        "train_annotations": str(COCO_TINY / "annotations" / "instances_train2017.json"),
        "train_images": str(COCO_TINY / "train2017"),
        "val_annotations": str(COCO_TINY / "annotations" / "instances_val2017.json"),
        "val_images": str(COCO_TINY / "val2017")}},
}


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_configs_are_valid_and_differ_from_the_demo(repo, name):
    """config/voc2012.yaml and coco2017.yaml: every key in the schema, no preset, the papers'
    models (ResNet-50 at 448 px, Mask R-CNN R-50-FPN at WISE's or Detectron's sizes), shards
    for a cluster; and only the dataset's paths are left to set."""
    import yaml
    raw = yaml.safe_load((repo / "config" / name).read_text())
    config = complete_config(raw, where=name)
    demo = complete_config({})
    assert config["preset"] == "none" and demo["preset"] == "synthetic"
    assert (config["classifier"]["backbone"], config["classifier"]["input_size"]) == \
        ("resnet50", 448)
    assert config["maskrcnn"]["backbone"] == "resnet50_fpn"
    assert min(config["maskrcnn"]["min_size"]) >= 480 and config["maskrcnn"]["max_size"] >= 1000
    assert config["shards"] >= 64
    for key in ("classifier", "maskrcnn", "proposals"):
        assert config[key] != demo[key], key
    kind = config["dataset"]["kind"]
    unset = {k for k, v in raw["dataset"][kind].items() if v is None}
    assert unset <= {"root", "sbd_root", "train_annotations", "train_images", "val_annotations",
                     "val_images"}, unset


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_configs_dry_run_with_only_the_dataset_set(repo, tmp_path, name):
    import yaml
    folder = VOC_MINI if name.startswith("voc") else COCO_TINY
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    config = yaml.safe_load((repo / "config" / name).read_text())
    kind = config["dataset"]["kind"]
    config["dataset"][kind].update(PAPER_CONFIGS[name]()[kind])
    proc = snakemake(tmp_path, "-n", config=config)
    assert "train_maskrcnn" in proc.stdout and "extract_peaks" in proc.stdout
    shards = config["shards"]
    assert len(re.findall(r"^rule extract_peaks:", proc.stdout, re.M)) == shards
