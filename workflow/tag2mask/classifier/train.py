"""Training the peak classifier on the manifest's tags (train split): `tag2mask classifier train`.

Writes into --out-dir:
  last.pt        training checkpoint after every epoch (model, optimizer, scheduler, grad
                 scaler, RNG state, history), written atomically; a restarted run resumes
                 from it when it was made with the same options (epochs, num_workers,
                 device and processes aside), the same training images and tags, and the
                 learning rates of its epochs are those of this run's schedule (so the
                 result equals an uninterrupted run: more epochs under a cosine schedule
                 start afresh)
  log.jsonl      one JSON line per epoch: epoch, loss, lr, seconds, images, and on a dataset
                 with a val split val_mAP (classification mAP from the val tags) and val_AP
  classifier.pt  the final model (tag2mask.classifier.model checkpoint with class names and config)

Images are resized to input_size x input_size (aspect ratio not kept, as PRM does) and
flipped per image; scale jitter resizes each batch as a whole, so every image keeps all of
its tagged objects (a random crop could cut one out and make its tag wrong).
All randomness of an epoch (order, flips, scales) is drawn from (seed, epoch), so a resumed
run matches an uninterrupted one exactly on CPU.

With `processes` > 1 (torchrun, DistributedDataParallel; tag2mask.core.distributed) each
process takes batch_size / processes images of every batch of the epoch plan; the loss, a
mean over images, then gives the same steps as one process (BatchNorm synchronised on CUDA;
tested on the CPU with BatchNorm frozen, tests/test_distributed.py). Rank 0 scores the val
images and writes last.pt, log.jsonl and classifier.pt.
"""

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..core.atomic import atomic_path, write_text
from ..core.config import digest
from ..core.distributed import processes
from ..core.errors import InputError
from ..core.metrics import average_precision
from ..core.options import checkpoint_identity
from ..dataset.images import load_rgb
from ..dataset.manifest import read_manifest
from .backbones import freeze_early_stages
from .model import (
    FORMAT,
    VERSION,
    build_classifier,
    classifier_meta,
    read_checkpoint,
    save_classifier,
)

log = logging.getLogger(__name__)

class TagDataset(Dataset):
    """Images resized to a square as uint8 [3, S, S] and their multi-hot tag vectors.

    Items are addressed by (index, flip) pairs, so the random flips are drawn in the main
    process (reproducible whatever the number of workers).
    """

    def __init__(self, records, classes, input_size):
        self.records, self.classes, self.size = records, list(classes), input_size

    def __len__(self):
        return len(self.records)

    def __getitem__(self, item):
        index, flip = item
        rec = self.records[index]
        img = Image.fromarray(load_rgb(rec.path)).resize((self.size, self.size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        if flip:
            x = x.flip(-1)
        target = torch.zeros(len(self.classes))
        target[[self.classes.index(n) for n in rec.labels]] = 1.0
        return x, target


def epoch_plan(n, epoch, options):
    """(order, flips, batch sizes in pixels) of one epoch, drawn from (seed, epoch) only."""
    g = torch.Generator().manual_seed(options["seed"] * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    flips = (torch.rand(n, generator=g) < 0.5).tolist() if options["flip"] else [False] * n
    low, high = options["scale_range"]
    num_batches = math.ceil(n / options["batch_size"])
    scales = low + (high - low) * torch.rand(num_batches, generator=g)
    stride = options["stride"]
    sizes = [max(stride, round(options["input_size"] * s / stride) * stride)
             for s in scales.tolist()]
    return list(zip(order, flips)), sizes


def lr_factor(options):
    """The learning-rate multiplier as a function of the number of finished epochs."""
    kind, epochs = options["lr_schedule"], options["epochs"]
    if kind == "cosine":
        return lambda e: 0.5 * (1 + math.cos(math.pi * min(e, epochs) / epochs))
    if kind == "step":
        steps, gamma = options["lr_steps"], options["lr_gamma"]
        return lambda e: gamma ** sum(e >= s for s in steps)
    return lambda e: 1.0


def make_optimizer(model, options):
    # PRM fine-tunes the pretrained features at a fraction of the head's learning rate
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for p in model.head.parameters() if p.requires_grad]
    params = [{"params": backbone, "lr": options["lr"] * options["backbone_lr_factor"]},
              {"params": head, "lr": options["lr"]}]
    if options["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=options["lr"], momentum=options["momentum"],
                               weight_decay=options["weight_decay"])
    return torch.optim.Adam(params, lr=options["lr"], weight_decay=options["weight_decay"])


def freezes_batchnorm(options):
    """Whether `freeze_bn` applies: only a backbone that starts from ImageNet weights has
    BatchNorm statistics worth keeping; frozen at their initial values (mean 0, variance 1)
    they would leave a from-scratch network without normalisation, which collapses."""
    if not options["freeze_bn"]:
        return False
    if options["backbone"] == "tiny" or not (options["pretrained"] or options["pretrained_path"]):
        log.warning("classifier.freeze_bn ignored: the %s backbone is trained from scratch, so "
                    "its BatchNorm layers train", options["backbone"])
        return False
    return True


def freeze_early_layers(model, options):
    """Only the `trainable_layers` deepest stages of a pretrained backbone learn (the others
    keep their ImageNet weights and cost no backward pass); a backbone trained from scratch
    trains every layer."""
    trainable = options["trainable_layers"]
    if trainable >= 5:
        return
    if not hasattr(model.backbone, "stages") or not (options["pretrained"]
                                                    or options["pretrained_path"]):
        log.warning("classifier.trainable_layers ignored: the %s backbone is trained from "
                    "scratch, so every layer trains", options["backbone"])
        return
    freeze_early_stages(model.backbone.stages(), trainable)


def freeze_batchnorm(model):
    """BatchNorm layers in eval mode (running statistics fixed) with frozen affine weights."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def resume_key(options, manifest, train):
    """What a checkpoint must share with this run to be resumed from."""
    fixed = checkpoint_identity(options, "classifier", "train")
    data = [manifest.classes, [(r.id, list(r.labels)) for r in train]]
    return digest({"options": fixed, "data": data})


def load_resumable(path, key, options):
    """The checkpoint at `path` if this run can continue it, else None (logged why).

    Besides the resume key, the learning rates of its finished epochs must be the ones this
    run's schedule gives them (a longer cosine schedule changes them), so a resumed run always
    equals an uninterrupted one with the current options.
    """
    epochs = options["epochs"]
    if not path.exists():
        return None
    try:
        ckpt = read_checkpoint(path)
    except InputError as e:
        log.warning("not resuming: %s", e)
        return None
    done = ckpt["meta"]["epoch"]
    if ckpt.get("resume_key") != key:
        log.warning("not resuming from %s: made with other options or another training set", path)
        return None
    if done > epochs:
        log.warning("not resuming from %s: it has %d epochs, this run asks for %d", path, done,
                    epochs)
        return None
    factor = lr_factor(options)
    planned = [options["lr"] * factor(e) for e in range(done)]
    if not all(math.isclose(r["lr"], lr, rel_tol=1e-9, abs_tol=1e-12)
               for r, lr in zip(ckpt["history"], planned)):
        log.warning("not resuming from %s: its learning rates differ from this run's schedule "
                    "(epochs changed)", path)
        return None
    return ckpt


@torch.no_grad()
def predict_scores(model, loader, device, upsample, use_amp):
    """Class scores [N, C] and tag vectors [N, C] of all images of a loader (no augmentation)."""
    model.eval()
    scores, targets = [], []
    for images, target in loader:
        x = images.to(device).float() / 255
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            maps = model(x)
        scores.append(model.scores(maps, upsample).cpu())
        targets.append(target)
    return torch.cat(scores).numpy(), torch.cat(targets).numpy()


def write_log(path, history):
    write_text(path, "".join(json.dumps(r) + "\n" for r in history))


def train_classifier(manifest_path, options, out_dir, threads=None, progress=True):
    """Train (or resume training) the classifier; returns (model, history). Under torchrun
    every process calls it (module docstring)."""
    if threads:
        torch.set_num_threads(threads)
    with processes(options["device"], "classifier.device") as group:
        return _train(manifest_path, options, Path(out_dir), progress, group)


def _train(manifest_path, options, out_dir, progress, group):
    batch_size = group.batch_size(options["batch_size"], "classifier.batch_size")
    manifest = read_manifest(manifest_path)
    train, val = manifest.split("train"), manifest.split("val")
    if not train:
        raise InputError(manifest_path, "no images in the train split")
    device = group.device
    use_amp = options["amp"] and device.type == "cuda"
    epochs = options["epochs"]
    progress = progress and group.main

    torch.manual_seed(options["seed"])
    model = group.sync_batchnorm(build_classifier(options, manifest.classes).to(device))
    freeze_bn = freezes_batchnorm(options)
    if freeze_bn:
        freeze_batchnorm(model)
    freeze_early_layers(model, options)
    optimizer = make_optimizer(model, options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(options))
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)

    key = resume_key(options, manifest, train)
    ckpt_path = out_dir / "last.pt"
    history, start = [], 0
    ckpt = load_resumable(ckpt_path, key, options)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        # the saved optimizer holds the lr of the old run's schedule (which may have had fewer
        # epochs); set the lr this run's schedule gives after `start` epochs
        for param_group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            param_group["lr"] = base * lr_factor(options)(ckpt["meta"]["epoch"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        history, start = list(ckpt["history"]), ckpt["meta"]["epoch"]
        log.info("resuming from %s after epoch %d of %d", ckpt_path, start, epochs)
    out_dir.mkdir(parents=True, exist_ok=True)
    if group.main:
        write_log(out_dir / "log.jsonl", history)  # drops lines of epochs the checkpoint lacks
    net = group.wrap(model)  # DistributedDataParallel with several processes

    train_set = TagDataset(train, manifest.classes, options["input_size"])
    loader_args = {"num_workers": options["num_workers"], "pin_memory": device.type == "cuda",
                   "persistent_workers": False}
    val_loader = None
    if val and group.main:
        val_loader = DataLoader(TagDataset(val, manifest.classes, options["input_size"]),
                                batch_size=options["batch_size"],
                                sampler=[(i, False) for i in range(len(val))], **loader_args)
    log.info("training %s on %d images (%d val), %d classes, %s%s%s, epochs %d..%d",
             options["backbone"], len(train), len(val), len(manifest.classes), device,
             " (mixed precision)" if use_amp else "",
             f", {group.world} processes" if group.distributed else "", start + 1, epochs)

    for epoch in range(start, epochs):
        t0 = time.time()
        net.train()
        if freeze_bn:
            freeze_batchnorm(model)
        items, sizes = epoch_plan(len(train), epoch, options)
        loader = DataLoader(train_set, batch_size=batch_size, sampler=group.shard(items),
                            **loader_args)
        lr = optimizer.param_groups[-1]["lr"]  # the head's
        total, seen = 0.0, 0
        bar = tqdm(zip(loader, sizes), total=len(sizes), desc=f"epoch {epoch + 1}/{epochs}",
                   mininterval=2, leave=False, disable=not progress)
        for (images, targets), size in bar:
            x = images.to(device, non_blocking=True).float() / 255
            targets = targets.to(device, non_blocking=True)
            if size != x.shape[-1]:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                maps = net(x)
            loss = F.multilabel_soft_margin_loss(model.scores(maps, options["upsample"]), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} in epoch {epoch + 1}; "
                                         "lower classifier.lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += loss.item() * len(images)
            seen += len(images)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        scheduler.step()
        total, seen = group.sum([total, seen])
        seen = int(seen)

        record = {"epoch": epoch + 1, "loss": total / seen, "lr": lr, "images": seen}
        if val_loader is not None:
            scores, targets = predict_scores(model, val_loader, device, options["upsample"],
                                             use_amp)
            aps = average_precision(scores, targets)
            record["val_mAP"] = float(np.nanmean(aps)) if not np.isnan(aps).all() else None
            record["val_AP"] = {c: (None if np.isnan(a) else round(float(a), 4))
                                for c, a in zip(manifest.classes, aps)}
        record["seconds"] = round(time.time() - t0, 2)
        if epoch == start and start > 0:
            record["resumed_from"] = start
        history.append(record)
        if group.main:
            save_training_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, options,
                                     epoch + 1, history, key, device)
            write_log(out_dir / "log.jsonl", history)
        log.info("epoch %d/%d: loss %.4f, lr %.3g%s, %.1f s", epoch + 1, epochs, record["loss"],
                 lr, f", val mAP {record['val_mAP']:.3f}" if record.get("val_mAP") is not None
                 else "", record["seconds"])

    if group.main:
        final = {"history": history[-1] if history else None}
        save_classifier(out_dir / "classifier.pt", model, options, epochs, extra_meta=final)
    return model.eval(), history


def save_training_checkpoint(path, model, optimizer, scheduler, scaler, options, epoch, history,
                             key, device):
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    state = {"format": FORMAT, "version": VERSION,
             "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "meta": classifier_meta(model, options, epoch),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "rng": rng, "history": history, "resume_key": key}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
