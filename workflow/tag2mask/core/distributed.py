"""Training on several processes: PyTorch's DistributedDataParallel (DDP) under torchrun.

`processes: N` in the classifier, maskrcnn or irnet config section (default 1) makes the
training rule pass `--processes N`, and the command runs itself again under torchrun
(tag2mask.core.launch):

    python -m torch.distributed.run --standalone --nproc-per-node N -m tag2mask.cli ...

Each of the N processes joins the process group (`processes`): NCCL with one GPU each
(cuda:LOCAL_RANK) on CUDA, gloo on the CPU. N = 1 is one plain process without a process
group: the single-process training, unchanged.

How N processes train like one (`Group`):
- `batch_size` stays the batch of one optimizer step, now over all processes: each process
  takes batch_size / N images of it (batch_size must be a multiple of N), so the steps, the
  learning-rate schedule and the resume points do not depend on N.
- Every process draws the same epoch plan (order, flips, scales) from (seed, epoch), and
  torch's DistributedSampler, without shuffling of its own, deals it out: process r takes
  items r, r + N, r + 2N, ..., so the N processes' step k covers the images of one process's
  step k. When the number of images is not a multiple of N, DistributedSampler repeats the
  first items of the plan to make the parts equal (the only difference from one process).
- DDP averages the gradients over the processes; each process's loss is a mean over as many
  images as the others', so the average is the gradient of the mean over the global batch.
  (Losses that are means over a varying number of pixels or samples need more: IRNet sums its
  denominators over the processes; Mask R-CNN's are left as torchvision computes them.)
- BatchNorm layers that train become SyncBatchNorm on CUDA (statistics of the global batch;
  timm's conversion, which keeps its BatchNormAct layers' activations). SyncBatchNorm cannot
  run on the CPU: there (gloo, the tests) each process normalises with its own images'
  statistics. Frozen BatchNorm (eval mode, FrozenBatchNorm2d) and GroupNorm need nothing.
- Rank 0 alone writes checkpoints, logs and the final model, atomically as one process does;
  every process reads the checkpoint when a run resumes (onto the CPU, weights_only), so a
  killed run resumes after its last finished epoch, with any N. Ranks other than 0 log
  warnings only.
- A worker is killed with its torchrun (PR_SET_PDEATHSIG, Linux): after a SIGKILL of the job
  no orphan keeps training beside the rerun.
"""

import contextlib
import ctypes
import logging
import math
import os
import signal
import sys

import torch
from torch.utils.data import DistributedSampler, Sampler

from .devices import resolve_device
from .errors import InputError
from .launch import under_torchrun

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class Group:
    """The processes of one training run, seen from one of them (rank 0 of 1: no process
    group, and every method is the single-process no-op)."""

    def __init__(self, device, rank=0, world=1):
        self.device, self.rank, self.world = device, rank, world

    @property
    def distributed(self):
        return self.world > 1

    @property
    def main(self):
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    def batch_size(self, batch_size, config_key):
        """Images per step of this process: its share of the global batch_size."""
        if batch_size % self.world:
            raise InputError(config_key, f"{batch_size} images per step cannot be split evenly "
                                         f"between {self.world} training processes: make "
                                         "batch_size (the batch over all processes) a multiple "
                                         "of processes")
        return batch_size // self.world

    def shard(self, items):
        """This process's items of the list `items`: torch's DistributedSampler without
        shuffling (items rank, rank + world, ...; the parts evened out by repeating the
        first items)."""
        if not self.distributed:
            return items
        sampler = DistributedSampler(items, num_replicas=self.world, rank=self.rank,
                                     shuffle=False)
        return [items[i] for i in sampler]

    def sum(self, values):
        """The sums over all processes of a list of numbers (as floats)."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def all_finite(self, loss):
        """Whether the loss is finite in every process: one decision for all of them, so that
        they all take the step or all skip it (DDP's gradient averaging needs every one)."""
        finite = bool(torch.isfinite(loss).all())
        return self.sum([not finite])[0] == 0 if self.distributed else finite

    def barrier(self):
        if self.distributed:
            torch.distributed.barrier()

    def sync_batchnorm(self, model):
        """On CUDA with several processes, the model's BatchNorm layers as SyncBatchNorm (the
        same parameter and buffer tensors: build the optimizer before or after); else the
        model itself."""
        if not (self.distributed and self.device.type == "cuda"):
            return model
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)

    def wrap(self, model):
        """The model in DistributedDataParallel (the model itself in one process)."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


class ShardSampler(Sampler):
    """This process's part (Group.shard) of the items of a sampler with set_epoch."""

    def __init__(self, sampler, group):
        self.sampler, self.group = sampler, group

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return iter(self.group.shard(list(self.sampler)))

    def __len__(self):
        return math.ceil(len(self.sampler) / self.group.world)


@contextlib.contextmanager
def processes(device_option, config_key):
    """The Group of this training run. A torchrun worker of several joins the process group
    (NCCL on its GPU, gloo on the CPU), takes its share of the torch threads set so far, and
    leaves the group at the end; otherwise one plain process."""
    device = resolve_device(device_option, config_key)
    world = int(os.environ["WORLD_SIZE"]) if under_torchrun() else 1
    if world == 1:
        yield Group(device)
        return
    _die_with_parent()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if rank:
        logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads() // local_world))
    if device.type == "cuda":
        if torch.cuda.device_count() < local_world:
            raise InputError(config_key, f"{local_world} training processes on this node but "
                                         f"{torch.cuda.device_count()} GPU(s) visible: ask for "
                                         "one GPU per process")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl", device_id=device)
    else:
        torch.distributed.init_process_group("gloo")
    log.info("process %d of %d (%s, %s)", rank, world, device,
             torch.distributed.get_backend())
    try:
        yield Group(device, rank, world)
    finally:
        torch.distributed.destroy_process_group()


def _die_with_parent():
    """Ask the kernel to SIGKILL this process when its parent (torchrun) dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # torchrun was gone before the call
        os._exit(1)
