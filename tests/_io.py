"""Save/load helpers shared by the checkpoint tests."""

import io

import torch


def reloaded(obj):
    """``obj`` after a ``torch.save`` / ``torch.load(weights_only=True)`` round trip in memory, as a
    checkpoint file would bring it back."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)
