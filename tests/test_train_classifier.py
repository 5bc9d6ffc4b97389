import json

import numpy as np
import pytest
import torch
from PIL import Image

from tag2mask.classifier.model import check_classes, load_classifier
from tag2mask.classifier.train import freezes_batchnorm, train_classifier
from tag2mask.cli import main
from tag2mask.core.config import section_options
from tag2mask.core.errors import InputError
from tag2mask.core.metrics import average_precision
from tag2mask.dataset.manifest import Manifest, make_record, write_manifest

CLASSES = ["bright", "dark"]



def blob_manifest(folder, n_train=12, n_val=6, size=32):
    """Grey noise images with a bright and/or a dark square: tags that a tiny CNN can learn."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    records = []
    for i in range(n_train + n_val):
        img = rng.integers(100, 156, (size, size, 3), dtype=np.uint8)
        labels = [CLASSES[i % 2]] if i % 3 else CLASSES
        for name in labels:
            y, x = rng.integers(0, size - 10, 2)
            img[y:y + 10, x:x + 10] = 250 if name == "bright" else 5
        path = folder / "images" / f"{i}.png"
        Image.fromarray(img).save(path)
        split = "train" if i < n_train else "val"
        records.append(make_record(f"im{i}", path, size, size, split, labels, CLASSES))
    write_manifest(folder / "manifest.json", Manifest("blobs", CLASSES, records))
    return folder / "manifest.json"


def options(**changes):
    base = {"backbone": "tiny", "pretrained": False, "input_size": 32, "batch_size": 4,
            "optimizer": "adam", "lr": 0.01, "epochs": 2, "num_workers": 0, "device": "cpu",
            "scale_range": [0.75, 1.25]}
    return section_options(json.dumps({**base, **changes}), "classifier")


def read_log(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return blob_manifest(tmp_path_factory.mktemp("blobs"))


def test_training_writes_log_checkpoints_and_a_loadable_classifier(manifest, tmp_path):
    out = tmp_path / "run"
    assert main(["classifier", "train", "--manifest", str(manifest), "--config",
                 json.dumps(dict(options(epochs=3))), "--out-dir", str(out)]) == 0
    log = read_log(out)
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert all(r["images"] == 12 and r["seconds"] > 0 for r in log)
    assert log[-1]["loss"] < log[0]["loss"]
    assert 0 <= log[-1]["val_mAP"] <= 1 and set(log[-1]["val_AP"]) == set(CLASSES)
    assert log[1]["lr"] < log[0]["lr"]  # cosine schedule
    assert (out / "last.pt").exists()
    model, meta = load_classifier(out / "classifier.pt")
    assert meta["class_names"] == CLASSES and meta["backbone"] == "tiny"
    assert meta["epoch"] == 3 and meta["stride"] == 8 and meta["input_size"] == 32
    assert meta["config"]["lr"] == 0.01
    assert not model.training
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 48)).shape == (1, 2, 4, 6)


def test_resume_equals_an_uninterrupted_run(manifest, tmp_path):
    whole = tmp_path / "whole"
    model_whole, _ = train_classifier(manifest, options(epochs=2), whole)

    parts = tmp_path / "parts"
    train_classifier(manifest, options(epochs=1), parts)
    (parts / "classifier.pt").unlink()
    model_parts, history = train_classifier(manifest, options(epochs=2), parts)
    log = read_log(parts)
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["resumed_from"] == 1 and "resumed_from" not in log[0]
    # the restarted run follows the 2-epoch schedule, as the uninterrupted run did
    assert [r["lr"] for r in log] == [r["lr"] for r in read_log(whole)]
    for (name, a), b in zip(model_whole.state_dict().items(), model_parts.state_dict().values()):
        assert torch.equal(a, b), name
    # nothing left to do: a third call trains no epoch and rewrites the same classifier
    _, history = train_classifier(manifest, options(epochs=2), parts)
    assert len(history) == 2 and len(read_log(parts)) == 2


def test_checkpoint_of_other_options_is_not_resumed(manifest, tmp_path):
    out = tmp_path / "run"
    train_classifier(manifest, options(epochs=1), out)
    train_classifier(manifest, options(epochs=1, lr=0.005), out)
    log = read_log(out)
    assert len(log) == 1 and "resumed_from" not in log[0] and log[0]["lr"] == 0.005
    # 2 -> 3 epochs: the cosine schedule of epoch 2 changes, so a resume could not equal an
    # uninterrupted 3-epoch run: start afresh
    out = tmp_path / "longer"
    train_classifier(manifest, options(epochs=2), out)
    train_classifier(manifest, options(epochs=3), out)
    assert [("resumed_from" in r, r["epoch"]) for r in read_log(out)] == [(False, 1), (False, 2),
                                                                          (False, 3)]
    # with a constant schedule the same extension resumes
    out = tmp_path / "constant"
    train_classifier(manifest, options(epochs=1, lr_schedule="constant"), out)
    train_classifier(manifest, options(epochs=2, lr_schedule="constant"), out)
    assert read_log(out)[1]["resumed_from"] == 1


def test_checkpoint_with_another_class_list_is_refused(manifest, tmp_path):
    train_classifier(manifest, options(epochs=1), tmp_path)
    path = tmp_path / "classifier.pt"
    with pytest.raises(InputError, match="classifier.pt"):
        load_classifier(path, class_names=["dark", "bright"])
    _, meta = load_classifier(path, class_names=CLASSES)
    with pytest.raises(InputError, match="trained on classes"):
        check_classes(meta, ["bright", "dark", "grey"], path)


def test_unreadable_checkpoint_is_an_input_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt"):
        load_classifier(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a tag2mask-classifier"):
        load_classifier(tmp_path / "other.pt")


def test_average_precision_known_answers():
    scores = np.array([[0.9, 0.1], [0.8, 0.5], [0.7, 0.5], [0.6, 0.2]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    ap = average_precision(scores, targets)
    assert ap[0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # class 1: its positive ties with a negative at the top score: precision 1/2 there
    assert ap[1] == pytest.approx(0.5)
    assert np.isnan(average_precision(scores, np.zeros_like(targets))).all()


def test_freeze_bn_applies_to_pretrained_backbones_only(manifest, tmp_path, caplog):
    """A from-scratch backbone with freeze_bn (a demo config switched to tiny) trains its
    BatchNorm, with a warning: frozen at mean 0 / variance 1 it would collapse."""
    assert freezes_batchnorm(options(backbone="efficientnet_lite0", pretrained=True,
                                     freeze_bn=True))
    assert freezes_batchnorm(options(backbone="resnet18", pretrained=False,
                                     pretrained_path="r18.pth", freeze_bn=True))
    assert not freezes_batchnorm(options(freeze_bn=False))
    model, _ = train_classifier(manifest, options(freeze_bn=True, pretrained=True, epochs=1),
                                tmp_path / "run", progress=False)
    assert "freeze_bn ignored: the tiny backbone is trained from scratch" in caplog.text
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.weight.requires_grad for m in bns)
    assert all(m.num_batches_tracked > 0 for m in bns)  # statistics were updated
