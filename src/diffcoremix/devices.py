"""Where models run: the one resolution of ``auto`` devices, shared by generation, the filter and sample context."""

from __future__ import annotations


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; any other value is returned as given."""
    if device != "auto":
        return device
    import torch  # here, so that the command line's light commands start without loading torch

    return "cuda" if torch.cuda.is_available() else "cpu"
