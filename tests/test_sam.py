"""Segment Anything as proposals (proposals.method sam) and as peak-prompted pseudo masks
(pseudo_masks.method sam), on a tiny SAM built from segment-anything's own modules with random
weights (no real SAM weights are needed or downloaded)."""

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from conftest import build_manifest  # noqa: E402
from tag2mask.core.errors import InputError  # noqa: E402
from tag2mask.core.store import StoreReader, StoreWriter  # noqa: E402
from tag2mask.dataset.manifest import read_manifest  # noqa: E402
from tag2mask.sam.model import Architecture, architecture, build_sam, load_sam  # noqa: E402

# image encoder of depth 2 (one windowed block, one global), 32 wide, 64 px input
TINY_SAM = Architecture(
    embed_dim=32, depth=2, num_heads=2, patch_size=8, image_size=64, window_size=4,
    global_attn_indexes=(1,), mlp_ratio=2.0, qkv_bias=True, prompt_dim=32, mask_in_chans=16,
    decoder_depth=1, decoder_mlp_dim=64, num_multimask_outputs=3, iou_head_depth=2,
    iou_head_hidden_dim=32)


def save_tiny_sam(path, seed=0):
    torch.manual_seed(seed)
    torch.save(build_sam(TINY_SAM).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")


def options(checkpoint, **more):
    return {"checkpoint": checkpoint and str(checkpoint), "model_type": "auto", "url": None,
            **more}


def test_architecture_is_read_back_from_the_checkpoint(checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    assert architecture(state) == TINY_SAM
    assert TINY_SAM.model_type() is None
    model = load_sam(options(checkpoint), "sam", torch.device("cpu"))
    assert not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_a_checkpoint_of_another_type_names_the_key(checkpoint):
    with pytest.raises(InputError, match=r"proposals\.sam\.model_type: is vit_b, but .* "
                                         r"non-standard image encoder \(width 32, 2 blocks\)"):
        load_sam(options(checkpoint, model_type="vit_b"), "proposals.sam", "cpu")


def test_damaged_missing_and_foreign_checkpoints_are_named(checkpoint, tmp_path):
    damaged = tmp_path / "damaged.pth"
    data = bytearray(checkpoint.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    damaged.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged"):
        load_sam(options(damaged), "sam", "cpu")
    with pytest.raises(InputError, match=r"SAM checkpoint \(sam\.checkpoint\) not found"):
        load_sam(options(tmp_path / "none.pth"), "sam", "cpu")
    with pytest.raises(InputError, match=r"sam\.checkpoint: no SAM checkpoint given"):
        load_sam(options(None), "sam", "cpu")
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, foreign)
    with pytest.raises(InputError, match="not a Segment Anything checkpoint"):
        load_sam(options(foreign), "sam", "cpu")


def test_automatic_proposals_write_a_valid_store(checkpoint, tmp_path):
    from tag2mask.proposals.make import METHODS, store_writer

    manifest_path = build_manifest(tmp_path, n_images=3, size=(48, 40))
    manifest = read_manifest(manifest_path)
    sam = options(checkpoint, device="cpu", points_per_side=4, points_per_batch=8,
                  pred_iou_thresh=0.0, stability_score_thresh=0.0, nms_iou=0.7, min_area=0.0)
    opts = {"method": "sam", "max_proposals": 5, "sam": sam, "splits": ["train"]}
    out = tmp_path / "proposals.h5"
    with store_writer(out, manifest, opts, "sam", 0, 1) as w:
        METHODS["sam"](manifest.images, manifest, opts, w)
    with StoreReader(out, "proposals") as store:
        assert sorted(store.image_ids) == sorted(r.id for r in manifest.images)
        for rec in manifest.images:
            entry = store.read(rec.id)
            assert (entry["height"], entry["width"]) == (40, 48)
            scores = entry["scores"]
            assert len(entry["masks"]) == len(scores) <= 5
            assert np.all(np.diff(scores) <= 0) and np.all((scores >= 0) & (scores <= 1.5))


def write_peaks(path, manifest, peaks_per_image):
    """A peaks store with the arrays the SAM method reads: one peak per class, in turn."""
    n_classes = len(manifest.classes)
    with StoreWriter(path, "peaks", manifest.classes) as w:
        for rec in manifest.images:
            yx = np.stack([np.linspace(4, rec.height - 5, peaks_per_image),
                           np.linspace(4, rec.width - 5, peaks_per_image)], 1)
            w.add(rec.id, rec.height, rec.width, {
                "peak_class": (np.arange(peaks_per_image) % n_classes).astype(np.int16),
                "peak_yx": yx.astype(np.float32),
                "peak_value": np.linspace(2, -1, peaks_per_image).astype(np.float32),
                "response_argmax_yx": yx.astype(np.float32),
            }, {"num_peaks": peaks_per_image})


def test_each_peak_prompts_one_mask(checkpoint, tmp_path):
    from segment_anything import SamPredictor

    from tag2mask.sam.prompts import prompt_masks

    predictor = SamPredictor(load_sam(options(checkpoint), "sam", "cpu"))
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8))
    points = np.array([[5, 5], [40, 30], [20, 10], [47, 39], [0, 0]], np.float32)
    masks, iou = prompt_masks(predictor, points, batch=2)  # batches of 2: 3 decoder calls
    assert masks.shape == (5, 40, 48) and masks.dtype == bool and iou.shape == (5,)
    alone, iou_alone = prompt_masks(predictor, points[3:4], batch=8)
    assert np.array_equal(alone[0], masks[3]) and np.isclose(iou_alone[0], iou[3], atol=1e-5)


def test_peak_prompted_pseudo_masks(checkpoint, tmp_path):
    from tag2mask.sam.prompts import make_shard

    manifest_path = build_manifest(tmp_path, n_images=4, size=(48, 40))
    manifest = read_manifest(manifest_path)
    write_peaks(tmp_path / "peaks.h5", manifest, peaks_per_image=3)
    opts = options(checkpoint, device="cpu", batch=4, point="peak", nms_iou=1.0,
                   nms_class_agnostic=False, min_score=0.0)
    shards = [tmp_path / f"pm{i}.h5" for i in range(2)]
    for i, out in enumerate(shards):
        make_shard({"peaks": tmp_path / "peaks.h5"}, manifest_path, opts, i, 2, out,
                   progress=False)
    seen = []
    for out in shards:
        with StoreReader(out, "pseudo_masks") as store:
            for image_id in store.image_ids:
                seen.append(image_id)
                e = store.read(image_id)
                # peaks of three classes, class-wise NMS: one mask per peak
                assert len(e["masks"]) == len(e["scores"]) == 3
                assert sorted(e["labels"].tolist()) == sorted(
                    e["peak_index"].tolist())  # peak i has class i here
                assert np.all(np.diff(e["scores"]) <= 0) and np.all(e["scores"] <= 1)
                assert e["boxes"].shape == (len(e["masks"]), 4)
    assert sorted(seen) == sorted(r.id for r in manifest.images)


def test_the_workflow_runs_to_the_pseudo_masks_with_sam(checkpoint, tmp_path):
    """The demo's chain, tiny, with SAM twice: its automatic masks as the proposals, and the
    peaks as its prompts for the pseudo masks (that method reads no proposals: targeted here
    only to run the generator in the workflow too)."""
    from test_workflow import TINY, snakemake

    sam = {"checkpoint": str(checkpoint), "device": "cpu"}
    config = {**TINY, "shards": 1, "verification": {"enabled": False}, "sam": sam,
              "proposals": {**TINY["proposals"], "method": "sam",
                            "sam": {**sam, "points_per_side": 4, "pred_iou_thresh": 0.0,
                                    "stability_score_thresh": 0.0}},
              "pseudo_masks": {"method": "sam"}}
    shell = snakemake(tmp_path, "-n", "-p", "results/tiny/pseudo_masks/pseudo_masks.h5",
                      config=config).stdout
    assert "pseudo_masks make --method sam --input peaks=" in shell
    assert "rule propose:" not in shell  # the prompts need no proposals
    snakemake(tmp_path, "results/tiny/pseudo_masks/pseudo_masks.h5",
              "results/tiny/proposals/proposals.h5", config=config)
    run = tmp_path / "results" / "tiny"
    with StoreReader(run / "proposals" / "proposals.h5", "proposals") as store:
        assert len(store.image_ids) == 16
        assert max(len(store.read(i)["masks"]) for i in store.image_ids) > 0
    with StoreReader(run / "pseudo_masks" / "pseudo_masks.h5", "pseudo_masks") as store:
        assert len(store.image_ids) == 16
        assert sum(len(store.read(i)["masks"]) for i in store.image_ids) > 0
