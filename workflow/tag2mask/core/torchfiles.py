"""Loading torch files a user points at (weights, checkpoints) safely and with clear errors."""

import torch

from .errors import InputError


def load_torch_file(path, what):
    """torch.load(weights_only=True) onto the CPU; a missing or unreadable file is an
    InputError naming the file and `what` it should have been."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except Exception as e:  # unpickling and zip errors come in many types
        raise InputError(path, f"cannot read {what} ({e})") from None
