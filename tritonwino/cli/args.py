"""Argument parsing shared by the subcommands: one spelling of a block and of a shape list."""

from __future__ import annotations


def parse_block(text: str, option: str = "--block") -> tuple[int, int]:
    """``"16x1"`` -> (16, 1); a clear one-line exit for anything else."""
    try:
        bk, bc = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"{option} expects BKxBC such as 16x1, got {text!r}") from None
    return bk, bc


def parse_shape(text: str, option: str, lengths: tuple[int, ...], example: str) -> list[int]:
    """``"64:64:56"`` -> [64, 64, 56]: positive ints, as many as one of ``lengths``."""
    try:
        vals = [int(v) for v in text.split(":")]
    except ValueError:
        vals = []
    if len(vals) not in lengths or min(vals) < 1:
        raise SystemExit(f"{option} expects positive ints like {example}, got {text!r}")
    return vals
