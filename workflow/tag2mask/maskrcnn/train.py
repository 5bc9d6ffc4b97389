"""`tag2mask maskrcnn train`: train Mask R-CNN on a pseudo-mask store.

Writes into --out-dir:
    model.pt               final checkpoint: weights, config, class names (torch.load with
                           weights_only=True; tag2mask.maskrcnn.model.load_checkpoint
                           builds the model)
    log.jsonl              one JSON line per epoch: loss components, lr, seconds, images/s
    checkpoints/epoch-NNNN.pt   written atomically after every epoch: model, optimizer,
                           scheduler, AMP scaler, RNG states, log history

A restarted run resumes after the last checkpoint whose training configuration and store
match (the checkpoint records a digest of both); checkpoints that do not match are removed
and training starts over. Changing only `epochs` extends (or ends) a finished run.
Ground truth is never read: the inputs are the manifest (image paths, sizes) and the store.

With `processes` > 1 (torchrun, DistributedDataParallel; tag2mask.core.distributed) each
process takes batch_size / processes images of every batch of the EpochSampler order, and rank
0 writes the checkpoints, log.jsonl and model.pt. This is not exactly one process's training:
torchvision averages each loss over the samples of the process's batch (anchors, proposals,
positive proposals: counts that differ between images), and DDP then averages the processes,
so images with fewer samples weigh a little more; and the random sampling of anchors and
proposals draws from each process's own random stream. (Detectron2's and torchvision's own
distributed training do the same.) With as many samples in every image and nothing left to
chance, the processes take the same steps as one (tests/test_distributed.py).
"""

import hashlib
import json
import logging
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..core.atomic import atomic_path, write_text
from ..core.config import digest
from ..core.distributed import Group, ShardSampler, processes
from ..core.errors import InputError
from ..core.options import checkpoint_identity
from ..core.torchfiles import load_torch_file
from ..dataset.manifest import read_manifest
from .model import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    EpochSampler,
    PseudoMaskDataset,
    build_model,
    collate,
)

log = logging.getLogger(__name__)

LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
              "loss_rpn_box_reg")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lr_lambda(options, iters_per_epoch):
    """Learning-rate factor per iteration: linear warmup times a step or cosine schedule."""
    warmup = options["warmup_iters"]
    total = max(1, options["epochs"] * iters_per_epoch)

    def factor(it):
        f = 1.0
        if it < warmup:
            alpha = it / warmup
            f = options["warmup_factor"] * (1 - alpha) + alpha
        if options["schedule"] == "step":
            f *= options["lr_gamma"] ** sum(it >= s * iters_per_epoch for s in options["lr_steps"])
        elif options["schedule"] == "cosine":
            f *= 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
        return f

    return factor


def _rng_state():
    # CUDA: the generator of this process's GPU (the current device) only; every GPU's would
    # open a CUDA context on each of them in each of several processes
    return {"torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
            "python": random.getstate()}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])
    random.setstate(state["python"])


def _checkpoints(ckpt_dir):
    return sorted(Path(ckpt_dir).glob("epoch-*.pt"))


def _resume(ckpt_dir, identity, model, optimizer, scheduler, scaler, group=None):
    """Load the newest matching checkpoint; return (epoch, history). Stale ones are removed
    (with several processes, by rank 0 once all have looked)."""
    for path in reversed(_checkpoints(ckpt_dir)):
        try:  # zip CRCs checked first: a damaged file is skipped, never half-trusted
            state = load_torch_file(path, "training checkpoint",
                                    remedy="not resumed from (an older one, or a fresh start)")
        except InputError as e:
            log.warning("%s", e)
            continue
        if state.get("identity") != identity:
            log.warning("%s: written for another configuration or store; starting over", path)
            break
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        log.info("resuming after epoch %d from %s", state["epoch"], path)
        return state["epoch"], list(state["history"])
    group = group or Group(torch.device("cpu"))
    group.barrier()
    if group.main:
        for path in _checkpoints(ckpt_dir):
            path.unlink()
    return 0, []


def _save_checkpoint(ckpt_dir, epoch, identity, model, optimizer, scheduler, scaler, history,
                     keep):
    path = Path(ckpt_dir) / f"epoch-{epoch:04d}.pt"
    state = {"epoch": epoch, "identity": identity, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "rng": _rng_state(), "history": history}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in _checkpoints(ckpt_dir)[:-keep]:
        old.unlink()


def _to_device(images, targets, device):
    nb = device.type == "cuda"
    images = [im.to(device, non_blocking=nb).float().div_(255) for im in images]
    targets = [{k: v.to(device, non_blocking=nb) if torch.is_tensor(v) else v
                for k, v in t.items()} for t in targets]
    return images, targets


def train_one_epoch(model, loader, optimizer, scheduler, scaler, device, amp, desc="",
                    progress=True, clip=None, group=None):
    """One pass over `loader`; returns the epoch's log record (without the epoch number).
    `clip`: clip the gradient norm to this (None: no clipping). With several processes
    (`group`, `model` in DistributedDataParallel) the record is of all processes' batches."""
    group = group or Group(device)
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sums = dict.fromkeys(LOSS_NAMES, 0.0)
    total, steps, skipped, n_images = 0.0, 0, 0, 0
    start = time.perf_counter()
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False,
                                mininterval=2.0):
        images, targets = _to_device(images, targets, device)
        with torch.autocast(device.type, enabled=amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        if not group.all_finite(loss):
            # a non-finite loss would poison the weights; skip the step and count it
            skipped += 1
            scheduler.step()
            continue
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        steps += 1
        n_images += len(images)
        total += loss.item()
        for k in LOSS_NAMES:
            sums[k] += losses[k].item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if skipped and not steps:
        raise InputError("maskrcnn.lr", f"{desc}: training diverged (every batch had a "
                                        "non-finite loss); lower lr or set grad_clip_norm")
    if skipped:
        log.warning("%s: %d batch(es) with a non-finite loss skipped", desc, skipped)
    if group.distributed:  # the means over the processes (as many steps in each)
        total, n_images, *parts = group.sum([total, n_images, *sums.values()])
        total, n_images = total / group.world, int(n_images)
        sums = {k: v / group.world for k, v in zip(LOSS_NAMES, parts)}
    record = {"iterations": steps, "images": n_images,
              "loss": total / max(steps, 1),
              **{k: v / max(steps, 1) for k, v in sums.items()},
              "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
              "images_per_s": round(n_images / seconds, 3) if seconds > 0 else None,
              "skipped_batches": skipped}
    return record


def make_loader(dataset, options, device, group=None):
    """Batches in EpochSampler order (call loader.sampler.set_epoch before each epoch), with
    several processes (`group`) this process's part of each; the workers persist across
    epochs."""
    workers = options["num_workers"]
    group = group or Group(device)
    sampler = EpochSampler(len(dataset), options["seed"], options["flip"])
    return torch.utils.data.DataLoader(
        dataset, batch_size=group.batch_size(options["batch_size"], "maskrcnn.batch_size"),
        sampler=ShardSampler(sampler, group) if group.distributed else sampler,
        # its own generator: the loader's seed draws must not shift the global RNG that
        # Mask R-CNN's sampling uses, or runs with and without workers would differ
        generator=torch.Generator().manual_seed(options["seed"]),
        num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def train(options, store_path, manifest_path, out_dir, progress=True):
    """Train (or resume) and write out_dir/model.pt, log.jsonl, checkpoints/. Returns the
    path of model.pt. Under torchrun every process calls it (module docstring)."""
    with processes(options["device"], "maskrcnn.device") as group:
        return _train(options, store_path, manifest_path, Path(out_dir), progress, group)


def _train(options, store_path, manifest_path, out_dir, progress, group):
    group.batch_size(options["batch_size"], "maskrcnn.batch_size")  # (checked early)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(manifest_path)
    device = group.device
    progress = progress and group.main
    amp = bool(options["amp"]) and device.type == "cuda"
    dataset = PseudoMaskDataset(store_path, manifest, options["empty_images"], options["flip"],
                                min_score=options["min_score"],
                                below_cut=options["below_cut"],
                                instance_weights=options["instance_weights"])
    if len(dataset) == 0:
        raise InputError(store_path, "no training images: no image has a pseudo mask with "
                                     f"a confidence of at least maskrcnn.min_score "
                                     f"{options['min_score']} (and maskrcnn.empty_images is "
                                     "'skip')")
    class_names = dataset.class_names
    store_sha = file_sha256(store_path)
    identity = digest({"options": checkpoint_identity(options, "maskrcnn", "train"),
                       "store": store_sha, "classes": class_names, "images": len(dataset)})

    torch.manual_seed(options["seed"])
    random.seed(options["seed"])
    model = group.sync_batchnorm(build_model(options, len(class_names)).to(device))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=options["lr"], momentum=options["momentum"],
                                weight_decay=options["weight_decay"])
    iters_per_epoch = math.ceil(len(dataset) / options["batch_size"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(options, iters_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start_epoch, history = _resume(ckpt_dir, identity, model, optimizer, scheduler, scaler,
                                   group)
    if start_epoch > options["epochs"]:
        log.warning("the last checkpoint is after epoch %d, beyond epochs=%d: using it as is",
                    start_epoch, options["epochs"])

    net = group.wrap(model)  # DistributedDataParallel with several processes

    log_path = out_dir / "log.jsonl"
    if group.main:
        write_text(log_path, "".join(json.dumps(r) + "\n" for r in history))
    log.info("training %s Mask R-CNN on %s: %d images, %d classes, epochs %d..%d, batch %d%s",
             options["backbone"], device, len(dataset), len(class_names), start_epoch + 1,
             options["epochs"], options["batch_size"],
             f" over {group.world} processes" if group.distributed else "")
    loader = make_loader(dataset, options, device, group)
    for epoch in range(start_epoch + 1, options["epochs"] + 1):
        loader.sampler.set_epoch(epoch)
        record = {"epoch": epoch, "pseudo_masks": dataset.mask_counts, **train_one_epoch(
            net, loader, optimizer, scheduler, scaler, device, amp,
            desc=f"epoch {epoch}/{options['epochs']}", progress=progress,
            clip=options["grad_clip_norm"], group=group)}
        history.append(record)
        log.info("epoch %d: loss %.4f (mask %.4f), lr %.2e, %.1f s, %.1f images/s", epoch,
                 record["loss"], record["loss_mask"], record["lr"], record["seconds"],
                 record["images_per_s"] or 0)
        if group.main:
            _save_checkpoint(ckpt_dir, epoch, identity, model, optimizer, scheduler, scaler,
                             history, options["keep_checkpoints"])
            with open(log_path, "a") as f:  # the checkpoint's history is the authority on resume
                f.write(json.dumps(record) + "\n")

    model_path = out_dir / "model.pt"
    if group.main:
        final = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                 "model": {k: v.cpu() for k, v in model.state_dict().items()},
                 "config": json.dumps(options, sort_keys=True), "class_names": list(class_names),
                 "epochs": options["epochs"], "store_sha256": store_sha, "history": history}
        with atomic_path(model_path) as tmp:
            torch.save(final, tmp)
        log.info("wrote %s", model_path)
    return model_path
