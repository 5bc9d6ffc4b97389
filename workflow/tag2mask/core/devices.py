"""Choosing the torch device from a config value (auto | cpu | cuda)."""

import torch

from .errors import InputError


def resolve_device(name, config_key):
    """auto: cuda when available, else cpu. Asking for cuda without one is an error naming
    the config key (e.g. 'classifier.device')."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(config_key, "cuda requested but no CUDA device is available")
    return torch.device(name)
