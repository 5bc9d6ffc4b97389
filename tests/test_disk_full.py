"""A full disk is one line naming the file, the space left and what was written, never a bare
traceback or a half-written file (core/atomic.py: every writer goes through atomic_path)."""

import errno
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from tag2mask.cli import main as cli_main
from tag2mask.core import atomic
from tag2mask.core.atomic import atomic_path, write_json
from tag2mask.core.errors import InputError
from tag2mask.core.store import StoreWriter


def test_injected_enospc_in_a_json_writer(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.json, "dump", full)
    with pytest.raises(InputError, match=r"out\.json: no space left on the device while "
                                         r"writing it \(.* free in "):
        write_json(tmp_path / "out.json", {"a": 1})
    assert os.listdir(tmp_path) == []


def test_hdf5_and_torch_write_failures_say_disk_full(tmp_path, monkeypatch):
    # h5py reports ENOSPC in its message only ("errno = 28"), torch.save as a failed write
    h5py_text = RuntimeError("Unable to synchronously copy object (file write failed: "
                             "errno = 28, error message = 'No space left on device')")
    assert atomic.disk_full(h5py_text, tmp_path)
    torch_text = RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter "
                              "failed writing file data/0: file write failed")
    assert not atomic.disk_full(torch_text, tmp_path)  # this disk has room: not a full disk
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: type("U", (), {"free": 100}))
    assert atomic.disk_full(torch_text, tmp_path)
    assert not atomic.disk_full(ValueError("bad value"), tmp_path)  # not an I/O error
    monkeypatch.undo()
    with pytest.raises(ValueError, match="bad value"), atomic_path(tmp_path / "x") as tmp:
        tmp.write_text("partial")
        raise ValueError("bad value")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 16 KB tmpfs (needs root and a kernel that lets this process mount)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_store_on_a_full_disk(tiny_disk):
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match=r"x\.h5: no space left on the device .* "
                                         r"KB of it had been written, now removed"):
        with StoreWriter(tiny_disk / "x.h5", "proposals", ["a"]) as w:
            for i in range(50):
                w.add(f"i{i}", 64, 64, {"masks": ["abc" * 200] * 50,
                                        "scores": rng.random(50).astype(np.float32)})
    assert os.listdir(tiny_disk) == []


def test_a_checkpoint_and_a_command_on_a_full_disk(tiny_disk, tiny_manifest, capsys):
    with pytest.raises(InputError, match=r"model\.pt: no space left on the device"):
        with atomic_path(tiny_disk / "model.pt") as tmp:
            torch.save({"w": torch.zeros(64, 1024)}, tmp)
    assert os.listdir(tiny_disk) == []
    out = tiny_disk / "proposals.h5"
    config = json.dumps({"method": "builtin", "splits": ["train"], "max_proposals": 2000,
                         "builtin": {"working_size": 64}})
    rc = cli_main(["proposals", "make", "--manifest", str(tiny_manifest), "--config", config,
                   "--shard", "0", "--num-shards", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"tag2mask proposals make: error: {out}: no space "
                                          "left on the device")
    assert "Traceback" not in "\n".join(err) and os.listdir(tiny_disk) == []
