"""Mask R-CNN throughput: tag2mask's training loop against plain torchvision loops, and predict.

    python benchmarks/maskrcnn_throughput.py [--images 64] [--size 128]
        [--backbone efficientnet_lite0] [--batch-size 8] [--num-workers 2] [--device auto]
        [--threads N] [--repeats 3]

Builds a pseudo-mask store of generated images (shapes on noise) in a temp folder, then times
epochs of one model over the same batches (order and flips) in three ways, after a warm-up
epoch each, interleaved `--repeats` times (the median is reported):

  tag2mask   train_maskrcnn.train_one_epoch over PseudoMaskDataset with persistent DataLoader
             workers (uint8 images and masks decoded in the workers, AMP on CUDA)
  plain      the loop of torchvision's detection tutorial: each batch read and decoded in the
             training process (PIL + RLE decode), float images, then forward/backward/step
  in_memory  the same loop over batches already decoded and held in memory: compute only, the
             ceiling for any data pipeline

and prints JSON with images/s of each, ratio_vs_plain (>= 1.0: the data pipeline is not a
bottleneck relative to the plain loop), ratio_vs_in_memory (how close to pure compute), and
predict's images/s (`tag2mask.maskrcnn.predict.predict`, batch --batch-size).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from tag2mask.core import masks as rle  # noqa: E402
from tag2mask.core.config import section_options  # noqa: E402
from tag2mask.core.devices import resolve_device  # noqa: E402
from tag2mask.dataset.manifest import Manifest, make_record, read_manifest, write_manifest  # noqa: E402
from tag2mask.maskrcnn.model import PseudoMaskDataset, build_model, collate  # noqa: E402
from tag2mask.maskrcnn.predict import configure, manifest_items, predict  # noqa: E402
from tag2mask.maskrcnn.train import make_loader, train_one_epoch  # noqa: E402

CLASSES = ["square", "disk", "bar"]


def make_store(folder, n, size, seed=0):
    """n images of 1-4 filled shapes on noise; a pseudo_masks store with their exact masks."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    records, entries = [], {}
    for i in range(n):
        img = rng.integers(0, 255, (size, size, 3)).astype(np.uint8)
        masks, labels = [], []
        for _ in range(int(rng.integers(1, 5))):
            c = int(rng.integers(0, 3))
            r = int(rng.integers(size // 12, size // 5))
            cy, cx = rng.integers(r, size - r, 2)
            m = {0: (abs(yy - cy) <= r) & (abs(xx - cx) <= r),
                 1: (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r,
                 2: (abs(yy - cy) <= r // 3) & (abs(xx - cx) <= r)}[c]
            img[m] = rng.integers(0, 255, 3)
            masks.append(m)
            labels.append(c)
        path = folder / "images" / f"{i:05d}.png"
        Image.fromarray(img).save(path)
        records.append(make_record(f"{i:05d}", path, size, size, "train",
                                   [CLASSES[c] for c in labels], CLASSES))
        entries[f"{i:05d}"] = (np.array(masks), labels)
    write_manifest(folder / "manifest.json", Manifest("bench", CLASSES, records))
    from tag2mask.core.store import StoreWriter

    with StoreWriter(folder / "store.h5", "pseudo_masks", CLASSES) as w:
        for image_id, (masks, labels) in entries.items():
            counts = rle.encode(masks)
            w.add(image_id, size, size, {
                "masks": counts, "labels": np.array(labels, np.int16),
                "scores": np.ones(len(labels), np.float32), "boxes": rle.boxes(counts, size, size),
                "peak_index": np.full(len(labels), -1, np.int32),
                "peak_yx": np.zeros((len(labels), 2), np.float32)})
    return folder / "manifest.json", folder / "store.h5"


def fresh(options, device):
    torch.manual_seed(0)
    model = build_model(options, len(CLASSES)).to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=options["lr"],
                          momentum=0.9, weight_decay=1e-4)
    return model, opt


def plain_epoch(model, opt, batches, device, amp, load):
    """torchvision tutorial loop; `load(batch)` gives (float images, targets) for a batch."""
    model.train()
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    n, start = 0, time.perf_counter()
    for batch in batches:
        images, targets = load(batch)
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]
        with torch.autocast(device.type, enabled=amp):
            loss = sum(model(images, targets).values())
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        n += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                    help="ImageNet weights (offline for efficientnet_lite0; ignored by tiny)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per loop (median)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, "--device")
    amp = device.type == "cuda"
    s = args.size
    options = section_options(json.dumps({
        "backbone": args.backbone, "pretrained": args.pretrained, "fpn_channels": 64,
        "anchor_sizes": [8, 16, 32, 64, 128], "box_head_dim": 256, "mask_head_channels": 64,
        "mask_head_layers": 2, "min_size": [s], "max_size": s, "batch_size": args.batch_size,
        "num_workers": args.num_workers, "lr": 0.002, "flip": True, "device": device.type,
        "predict_batch_size": args.batch_size, "rpn_pre_nms_top_n_train": 600,
        "rpn_post_nms_top_n_train": 300, "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_test": 100, "box_batch_size_per_image": 128}), "maskrcnn")
    with tempfile.TemporaryDirectory() as tmp:
        manifest_path, store = make_store(tmp, args.images, s)
        manifest = read_manifest(manifest_path)
        ds = PseudoMaskDataset(store, manifest, flip=True)
        # one model and optimiser for every loop: only the data path differs
        model, opt = fresh(options, device)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        loader = make_loader(ds, options, device)
        loader.sampler.set_epoch(1)
        # the same batches (order and flips) for the plain loops
        order = list(torch.utils.data.BatchSampler(loader.sampler, args.batch_size, False))

        def load_from_disk(indices):
            images, targets = collate([ds[i] for i in indices])
            return [im.float() / 255 for im in images], targets

        cached = {tuple(b): load_from_disk(b) for b in order}
        loops = {
            "tag2mask": lambda: train_one_epoch(model, loader, opt, sched, scaler, device, amp,
                                                progress=False)["images_per_s"],
            "plain": lambda: plain_epoch(model, opt, order, device, amp, load_from_disk),
            "in_memory": lambda: plain_epoch(model, opt, order, device, amp,
                                             lambda b: cached[tuple(b)]),
        }
        # warm-up, then the loops interleaved so a change in machine load hits all of them
        rates = {name: [] for name in loops}
        for name, run in loops.items():
            run()
        for _ in range(args.repeats):
            for name, run in loops.items():
                rates[name].append(run())
        median = {name: float(np.median(r)) for name, r in rates.items()}

        items, _ = manifest_items(manifest_path, "train")
        configure(model, options)
        predict(model, items[: args.batch_size], options, device, progress=False)  # warm-up
        predict_rates = [predict(model, items, options, device, progress=False)[2]["images_per_s"]
                         for _ in range(args.repeats)]

    print(json.dumps({
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "backbone": args.backbone, "pretrained": args.pretrained, "images": args.images,
        "size": s, "batch_size": args.batch_size, "num_workers": args.num_workers, "amp": amp,
        "repeats": args.repeats,
        "train_images_per_s": {k: round(v, 3) for k, v in median.items()},
        "train_images_per_s_runs": {k: [round(x, 3) for x in v] for k, v in rates.items()},
        "ratio_vs_plain": round(median["tag2mask"] / median["plain"], 3),
        "ratio_vs_in_memory": round(median["tag2mask"] / median["in_memory"], 3),
        "predict_images_per_s": float(np.median(predict_rates)),
    }, indent=1))


if __name__ == "__main__":
    main()
