"""glibc malloc settings (tag2mask.core.cpu_memory), checked in child processes: they are
process-wide."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import resource, sys, torch
from tag2mask.core.cpu_memory import keep_freed_memory

def cycle():  # a batched backward's pattern: large tensors of a few sizes made and dropped
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for mb in (40, 64, 40):
        a = torch.ones(mb << 18)
        b = a * 2
        del a, b
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(2):
    cycle()
print(applied, min(cycle() for _ in range(3)))
"""


def page_faults(mode):
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO / "workflow")}, timeout=120, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_without_page_faults():
    applied, kept = page_faults("keep")
    if not applied:
        pytest.skip("not glibc")
    _, default = page_faults("default")
    # glibc's default mmaps each block over 32 MB afresh: a fault per 4 KB page (288 MB per
    # cycle, ~36k faults); kept, the blocks are reused once the heap has grown
    assert default > 10_000 and kept < default / 4
