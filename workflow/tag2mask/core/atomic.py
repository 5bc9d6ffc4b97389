"""Write outputs under a temporary name and rename them when complete (and read JSON back).

An interrupted stage then never leaves a file that looks finished: the temporary file is
removed on error, and a killed process leaves only a `.tmp-*` name that no rule reads. A full
disk is one line naming the file and the space it needed (every writer goes through here:
stores, checkpoints, JSON, the report).
"""

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        written, full = _size(tmp), disk_full(e, path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full:
            raise InputError(path, disk_full_message(path.parent, written)) from None
        raise


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _human(n):
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def disk_full(error, folder):
    """Whether `error` (or what caused it) says the disk is full: ENOSPC from Python, h5py's
    "errno = 28" text, or an I/O error (torch.save's C++ stream errors name no errno) while
    under 1 MB is left in `folder`."""
    seen, io_error = set(), False
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in text or "errno = 28" in text:
            return True
        io_error |= isinstance(error, (OSError, RuntimeError))
        error = error.__cause__ or error.__context__
    return io_error and shutil.disk_usage(folder).free < 2**20


def disk_full_message(folder, written):
    """One line: the disk is full, how much is free and how much the file had taken."""
    free = shutil.disk_usage(folder).free
    return (f"no space left on the device while writing it ({_human(free)} free in "
            f"{folder}; {_human(written)} of it had been written, now removed; it needs more "
            "than that): free space there, or run in a folder on a larger disk "
            "(snakemake --directory)")


def write_json(path, data, indent=1):
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=indent)
            f.write("\n")


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def read_json(path, what):
    """A JSON file's value; InputError naming the file when it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"{what} is not valid JSON ({e})") from None
