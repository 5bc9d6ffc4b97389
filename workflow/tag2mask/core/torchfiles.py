"""Loading torch files (weights, checkpoints) safely, checked, and with clear errors.

Every load is `torch.load(weights_only=True)` (downloads too: `load_state_dict_from_url`),
so a file can hold tensors and plain containers but no code. Before loading, the file's
zip container (what `torch.save` writes) is verified: each member's CRC-32 against its bytes
(`zipfile.ZipFile.testzip`). torch.load does not check them, so a checkpoint with bytes
overwritten inside a tensor would otherwise load without a word and give other weights
(about 4 ms for a 20 MB checkpoint; docs/results.md).
"""

import os
import urllib.parse
import zipfile
from pathlib import Path

import torch

from .errors import InputError

# what to do about a damaged file nobody in the pipeline wrote (a weights file of the user's)
REPLACE = "replace the file (download or copy it again)"


def zip_problem(path):
    """None when `path` is not a zip file or every member passes its CRC check, else what is
    wrong (a short text naming the member)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return None  # torch's legacy (pre-1.6) format, or not torch at all: torch.load decides
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            RuntimeError) as e:
        return f"damaged zip container ({e})"
    except Exception as e:  # zlib.error and the like from a damaged member
        return f"damaged zip container ({type(e).__name__}: {e})"
    if bad is not None:
        return f"zip member {bad!r} fails its CRC check (the file was changed after it was written)"
    return None


def load_torch_file(path, what, remedy=REPLACE):
    """torch.load(weights_only=True) onto the CPU, after the zip CRC check. A missing,
    damaged or unreadable file is an InputError naming the file, `what` it should have been,
    what is wrong and `remedy` (what to do)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    problem = zip_problem(path)
    if problem:
        raise InputError(path, f"{what} is damaged: {problem}; {remedy}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except Exception as e:  # unpickling and zip errors come in many types
        raise InputError(path, f"cannot read {what} ({_one_line(e)}); {remedy}") from None


def load_url_state_dict(url, what):
    """A state dict downloaded by torch.hub (cached under torch.hub.get_dir()/checkpoints),
    loaded with weights_only=True; the download is checked against the hash in its file
    name where there is one (torchvision's are), a cached copy by its zip CRCs."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(
        urllib.parse.urlparse(url).path)
    if cached.is_file():
        return load_torch_file(cached, what, remedy="delete it, it is downloaded again")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False,
                                                  check_hash=True, weights_only=True)
    except Exception as e:
        raise InputError(url, f"cannot download or read {what} ({_one_line(e)})") from None


def _one_line(e):
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."
