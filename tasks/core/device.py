"""The compute device of a `Device` setting, shared by masking and compositing."""

import torch

from tasks.core.errors import InvalidSettings
from tasks.core.settings import Device

__all__ = ["compute_device"]


def compute_device(device: Device) -> torch.device:
    """The torch device of a `Device` setting: 'auto' is CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidSettings("device 'cuda' was asked for but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return torch.device(device)
