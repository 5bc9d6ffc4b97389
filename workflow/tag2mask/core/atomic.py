"""Write outputs under a temporary name and rename them when complete (and read JSON back).

An interrupted stage then never leaves a file that looks finished: the temporary file is
removed on error, and a killed process leaves only a `.tmp-*` name that no rule reads.
"""

import contextlib
import json
import os
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
