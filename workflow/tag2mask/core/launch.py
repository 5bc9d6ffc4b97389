"""`--processes N` of the training commands, and their torchrun launch.

The training actions (`classifier train`, `maskrcnn train`, `irnet train`) take `--processes N`
(default: their config section's `processes`; the Snakemake rules pass it). With N > 1 the
command replaces itself with torchrun running the same command line on N processes:

    python -m torch.distributed.run --standalone --nproc-per-node N -m tag2mask.cli <arguments>

(`python -m torch.distributed.run` is torchrun, run by the interpreter that runs the command.)
The processes then train together (tag2mask.core.distributed). A command started by torchrun
by hand runs as the worker it is, whatever --processes says. No torch import here: the
argument parsers stay light.
"""

import logging
import os
import sys

from .errors import InputError

log = logging.getLogger(__name__)


def add_processes(p, section):
    """--processes of a training action."""
    p.add_argument("--processes", type=int, default=None,
                   help="training processes on this node: N > 1 runs the command again under "
                        "torchrun with N processes (DistributedDataParallel, one GPU each on "
                        f"CUDA); default: the config's {section}.processes")


def training_processes(args, options):
    """--processes, else the config section's `processes`."""
    n = options["processes"] if args.processes is None else args.processes
    if n < 1:
        raise InputError("--processes", f"must be at least 1, not {n}")
    return n


def under_torchrun():
    """Whether this process is a worker that torchrun started (torchrun sets these)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(processes):
    """With processes > 1, replace this process with torchrun running this command line
    (`tag2mask <sys.argv[1:]>`) on that many processes; return without doing anything when
    processes is 1 or this process is a torchrun worker already."""
    if processes == 1 or under_torchrun():
        return
    argv = sys.argv[1:]
    log.info("training on %d processes: torchrun --standalone --nproc-per-node %d -m "
             "tag2mask.cli %s", processes, processes, " ".join(argv))
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc-per-node", str(processes), "-m", "tag2mask.cli", *argv])
