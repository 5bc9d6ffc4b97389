"""Training IRNet from inter-pixel relations (`tag2mask irnet train`).

Inputs: the manifest (train images), the classifier checkpoint (its backbone) and the relation
seeds (tag2mask.irnet.seeds; never ground truth). Each image is resized to input_size x
input_size (as the classifier) and flipped at random; its seed map (flipped with it) gives the
relation labels of every pair of grid cells within `relation_radius`
(tag2mask.irnet.relations). The losses are IRNet's:
  - boundary: affinities a = 1 - max B on the pair's line; -log(a) on background pairs and on
    same-class foreground pairs (each averaged, weighted 1/2), -log(1 - a) on pairs of
    different labels (averaged);
  - displacement: for same-class foreground pairs (p, q = p + o) |D(p) - D(q) - o| (both
    point to one centroid), averaged; and |D(p)| averaged over the background seed cells.
    IRNet's background term is |D(p) - D(q)| on background pairs, which leaves each image's
    field free by a constant: on the demo that constant (about one cell) carried every cell's
    path to the image border within IRNet's 100 steps, so here background cells are pulled
    to displacement 0 itself (a background cell is its own centroid).
Adam, the learning rate decaying polynomially (power 0.9) to 0 over all steps.
After the last epoch the mean displacement over the (unflipped) training images becomes the
model's displacement_mean (IRNet's mean shift).

Writes into --out-dir:
  last.pt    training checkpoint after every epoch (model, optimizer, RNG state, history and
             a resume key: the options other than num_workers/device/processes, the classifier
             checkpoint's and the seeds store's digests), written atomically; a restarted
             run resumes after its epoch when the key matches
  log.jsonl  one JSON line per epoch: epoch, loss and its parts, lr, images, seconds
  irnet.pt   the final model (tag2mask.irnet.model)
All randomness of an epoch (order, flips) is drawn from (seed, epoch), so a resumed run
matches an uninterrupted one on CPU.

With `processes` > 1 (torchrun, DistributedDataParallel; tag2mask.core.distributed) each
process takes batch_size / processes images of every batch, and each loss term's count of
pairs or cells is summed over the processes, so that every term is the mean over the global
batch and the processes take the same steps as one (the backbone's BatchNorm is frozen, the
branches use GroupNorm; tests/test_distributed.py). Rank 0 writes last.pt, log.jsonl and,
with the mean displacement over all images, irnet.pt.
"""

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..classifier.cams import resized_input
from ..classifier.model import load_classifier
from ..core.atomic import atomic_path, write_text
from ..core.config import digest
from ..core.distributed import processes
from ..core.errors import InputError
from ..core.options import checkpoint_identity
from ..core.store import StoreReader
from ..dataset.images import load_rgb
from ..dataset.manifest import read_manifest
from .model import FORMAT, VERSION, build_irnet, irnet_meta, read_irnet_checkpoint, save_irnet
from .relations import BG_POS, FG_POS, NEG, PairPaths, pair_displacement, relation_labels
from .seeds import KIND as SEEDS_KIND

log = logging.getLogger(__name__)

LOSSES = ("loss_bg", "loss_fg", "loss_neg", "loss_dp_fg", "loss_dp_bg")


class SeedDataset(Dataset):
    """(uint8 image [3, S, S], uint8 relation labels [D, G, G], bool background seeds
    [G, G]) per (index, flip) item; the resized images are kept after their first load."""

    def __init__(self, records, seeds, input_size, radius):
        self.records, self.seeds, self.size, self.radius = records, seeds, input_size, radius
        self.images = {}

    def __len__(self):
        return len(self.records)

    def image(self, index):
        if index not in self.images:
            x = resized_input(load_rgb(self.records[index].path), self.size, "cpu")[0]
            self.images[index] = (x * 255).round().to(torch.uint8)
        return self.images[index]

    def __getitem__(self, item):
        index, flip = item
        x, seeds = self.image(index), self.seeds[index]
        if flip:
            x, seeds = x.flip(-1), seeds[:, ::-1]
        seeds = np.ascontiguousarray(seeds)
        return (x, torch.from_numpy(relation_labels(seeds, self.radius)),
                torch.from_numpy(seeds == 0))


def relation_losses(boundary_logits, displacement, labels, background, paths, group=None):
    """The five loss terms (a dict of scalars) of a batch: logits [B, 1, G, G],
    displacement [B, 2, G, G], relation labels [B, D, G, G], background seeds [B, G, G].
    Each term is a mean over its pairs or cells. With several processes (`group`) the counts
    are those of all processes and the terms are scaled by the number of processes, so that
    DDP's average of the processes' gradients is the gradient of the global batch's means."""
    aff = 1 - paths.max_on_lines(torch.sigmoid(boundary_logits[:, 0]))  # [B, D, G, G]
    pair_disp = pair_displacement(displacement, paths.offsets)          # [B, 2, D, G, G]
    target = torch.as_tensor(paths.offsets, dtype=displacement.dtype,
                             device=displacement.device).T[None, :, :, None, None]

    bg, fg, neg = ((labels == k).to(aff.dtype) for k in (BG_POS, FG_POS, NEG))
    terms = {"loss_bg": (-torch.log(aff + 1e-5), bg),
             "loss_fg": (-torch.log(aff + 1e-5), fg),
             "loss_neg": (-torch.log(1 + 1e-5 - aff), neg),
             "loss_dp_fg": ((pair_disp - target).abs().mean(1), fg),
             "loss_dp_bg": (displacement.abs().mean(1), background.to(aff.dtype))}
    counts = torch.stack([mask.sum() for _, mask in terms.values()])
    scale = 1
    if group is not None and group.distributed:
        torch.distributed.all_reduce(counts)
        scale = group.world
    return {name: scale * (values * mask).sum() / count.clamp(min=1)
            for (name, (values, mask)), count in zip(terms.items(), counts)}


def total_loss(parts):
    return (parts["loss_bg"] / 2 + parts["loss_fg"] / 2 + parts["loss_neg"]
            + parts["loss_dp_fg"] + parts["loss_dp_bg"])


def epoch_items(n, epoch, options):
    g = torch.Generator().manual_seed(options["seed"] * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    flips = (torch.rand(n, generator=g) < 0.5).tolist() if options["flip"] else [False] * n
    return list(zip(order, flips))


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def read_seeds(seeds_path, records, grid):
    """The seed maps of `records` (uint8 [G, G] each) and the records the store holds."""
    kept, seeds = [], []
    with StoreReader(seeds_path, SEEDS_KIND) as store:
        for rec in records:
            if rec.id not in store:
                continue
            s = store.read(rec.id, ["seeds"])["seeds"]
            if s.shape != (grid, grid):
                raise InputError(seeds_path, f"image {rec.id!r}: seeds are {s.shape}, the "
                                             f"IRNet grid is {grid}x{grid}")
            kept.append(rec)
            seeds.append(s)
    return kept, seeds


def make_optimizer(model, options):
    """Adam on the branches (and the backbone at lr / 10 with train_backbone). IRNet uses SGD
    at 0.1 with batches of 32; with the demo's batches of 8 that collapsed the displacement
    branch to a constant field (its loss never moved), Adam does not."""
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    groups = [{"params": heads, "lr": options["lr"]}]
    if options["train_backbone"]:
        groups.append({"params": list(model.backbone.parameters()), "lr": options["lr"] / 10})
    return torch.optim.Adam(groups, lr=options["lr"], weight_decay=options["weight_decay"])


@torch.no_grad()
def mean_displacement(model, dataset, device, batch_size):
    """Mean displacement [2] over the dataset's unflipped images (training mode: no shift)."""
    model.train()
    total, cells = torch.zeros(2, dtype=torch.float64), 0
    for start in range(0, len(dataset), batch_size):
        x = torch.stack([dataset.image(i) for i in range(start, min(start + batch_size,
                                                                     len(dataset)))])
        _, disp = model(x.to(device).float() / 255)
        total += disp.double().sum((0, 2, 3)).cpu()
        cells += disp.shape[0] * disp.shape[2] * disp.shape[3]
    return (total / max(cells, 1)).float()


def train_irnet(manifest_path, classifier_path, seeds_path, options, out_dir, threads=None,
                progress=True):
    """Train (or resume) IRNet; returns (model, history). Under torchrun every process calls
    it (module docstring)."""
    if threads:
        torch.set_num_threads(threads)
    with processes(options["device"], "irnet.device") as group:
        return _train(manifest_path, classifier_path, seeds_path, options, Path(out_dir),
                      progress, group)


def _train(manifest_path, classifier_path, seeds_path, options, out_dir, progress, group):
    per_process = group.batch_size(options["batch_size"], "irnet.batch_size")
    manifest = read_manifest(manifest_path)
    device = group.device
    progress = progress and group.main
    classifier, cmeta = load_classifier(classifier_path, "cpu", manifest.classes)
    input_size = options["input_size"] or cmeta["input_size"]
    grid = (input_size - 1) // options["feature_stride"] + 1
    records, seeds = read_seeds(seeds_path, manifest.split("train"), grid)
    if not records:
        raise InputError(seeds_path, "no train image of the manifest has relation seeds")
    torch.manual_seed(options["seed"])
    model = build_irnet(classifier, options).to(device)
    optimizer = make_optimizer(model, options)
    epochs, batch = options["epochs"], options["batch_size"]
    steps_per_epoch = -(-len(records) // batch)
    total_steps = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1 - step / total_steps) ** 0.9)
    key = digest({"options": checkpoint_identity(options, "irnet", "train"),
                  "classifier": file_digest(classifier_path), "seeds": file_digest(seeds_path),
                  "images": [r.id for r in records]})

    ckpt_path, history, start = out_dir / "last.pt", [], 0
    if ckpt_path.exists():
        try:
            ckpt = read_irnet_checkpoint(ckpt_path)
        except InputError as e:
            log.warning("not resuming: %s", e)
            ckpt = None
        if ckpt is not None and ckpt.get("resume_key") == key:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng"])
            history, start = list(ckpt["meta"]["history"]), ckpt["meta"]["epoch"]
            log.info("resuming from %s after epoch %d of %d", ckpt_path, start, epochs)
        elif ckpt is not None:
            log.warning("not resuming from %s: made with other options or inputs", ckpt_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    if group.main:
        write_log(out_dir / "log.jsonl", history)
    net = group.wrap(model)  # DistributedDataParallel with several processes

    dataset = SeedDataset(records, seeds, input_size, options["relation_radius"])
    paths = PairPaths(options["relation_radius"])
    log.info("training IRNet (%s backbone, %s) on %d images, %s, grid %dx%d, %d pair offsets, "
             "epochs %d..%d%s", cmeta["backbone"],
             "trained" if options["train_backbone"] else "frozen", len(records), device, grid,
             grid, len(paths.offsets), start + 1, epochs,
             f", {group.world} processes" if group.distributed else "")
    for epoch in range(start, epochs):
        t0 = time.time()
        net.train()
        loader = DataLoader(dataset, batch_size=per_process,
                            sampler=group.shard(epoch_items(len(records), epoch, options)),
                            num_workers=options["num_workers"])
        sums, seen, lr = dict.fromkeys(LOSSES, 0.0), 0, optimizer.param_groups[0]["lr"]
        bar = tqdm(loader, desc=f"irnet epoch {epoch + 1}/{epochs}", mininterval=2,
                   leave=False, disable=not progress)
        for images, labels, background in bar:
            x = images.to(device).float() / 255
            parts = relation_losses(*net(x), labels.to(device), background.to(device), paths,
                                    group)
            loss = total_loss(parts)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"IRNet loss became {loss.item()} in epoch "
                                         f"{epoch + 1}; lower irnet.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for k in LOSSES:
                sums[k] += parts[k].item() * len(images)
            seen += len(images)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        *totals, seen = group.sum([*sums.values(), seen])  # (one process: as they are)
        sums, seen = dict(zip(LOSSES, totals)), int(seen)
        record = {"epoch": epoch + 1, **{k: v / seen for k, v in sums.items()}}
        record["loss"] = total_loss(record)
        record.update(lr=lr, images=seen, seconds=round(time.time() - t0, 2))
        history.append(record)
        if group.main:
            save_training_checkpoint(ckpt_path, model, optimizer, scheduler, cmeta, options,
                                     epoch + 1, history, key)
            write_log(out_dir / "log.jsonl", history)
        log.info("epoch %d/%d: loss %.4f (boundary bg %.3f fg %.3f neg %.3f, displacement fg "
                 "%.3f bg %.3f), lr %.3g, %.1f s", epoch + 1, epochs, record["loss"],
                 *(record[k] for k in LOSSES), lr, record["seconds"])

    if group.main:  # (the others are done)
        shift = mean_displacement(model, dataset, device, batch)
        model.displacement_mean.copy_(shift.to(device))
        log.info("mean displacement (removed at inference): dy %.3f, dx %.3f", *shift.tolist())
        save_irnet(out_dir / "irnet.pt", model, irnet_meta(model, cmeta, options, epochs,
                                                           history))
    return model.eval(), history


def write_log(path, history):
    write_text(path, "".join(json.dumps(r) + "\n" for r in history))


def save_training_checkpoint(path, model, optimizer, scheduler, cmeta, options, epoch, history,
                             key):
    state = {"format": FORMAT, "version": VERSION,
             "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "meta": irnet_meta(model, cmeta, options, epoch, history),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": torch.get_rng_state(), "resume_key": key}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
