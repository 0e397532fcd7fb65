"""Result rows: CSV/JSON writing and the row schema the plots read.

Every row carries ``tritonwino.env.environment(device)`` (device, versions, threads, TF32, timer,
timestamp); timings come from ``tritonwino.tuning.timer``; tables from ``tritonwino.tables``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

__all__ = ["sparse_row", "write_rows"]


def write_rows(rows: Iterable[dict], out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``name.csv`` and ``name.json`` under ``out_dir`` (created); returns both paths.

    Example:
        >>> import tempfile
        >>> csv_path, _ = write_rows([{"a": 1}], tempfile.mkdtemp(), "rows")
        >>> csv_path.read_text().splitlines()
        ['a', '1']
    """
    rows = list(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    csv_path, json_path = out / f"{name}.csv", out / f"{name}.json"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=1, default=str))
    return csv_path, json_path


def sparse_row(c: int, k: int, h: int, nb: int, m: int, block, sparsity: float, q, packed, packed16, path: str,
               conv2d: dict, sparse: dict, env: dict, **extra) -> dict:
    """One sparse-layer timing row in the schema ``plot_speedup`` / ``plot_memory`` read (shared by
    ``tritonwino bench`` and the demo). ``conv2d`` / ``sparse`` are ``tuning.time_ms`` results."""
    return {
        "C": c, "K": k, "H": h, "W": h, "N": nb, "tile": f"F({m},3)", "block": f"{block[0]}x{block[1]}",
        "target_sparsity": sparsity, "winograd_sparsity": float((q == 0).float().mean()),
        "kept_slots": packed.density, "path": path, **extra,
        "conv2d_ms": conv2d["ms"], "sparse_ms": sparse["ms"],
        "sparse_ms_p20": sparse["ms_p20"], "sparse_ms_p80": sparse["ms_p80"],
        "speedup_vs_conv2d": conv2d["ms"] / sparse["ms"],
        "packed_bytes_fp32": packed.nbytes, "packed_bytes_fp16": packed16.nbytes,
        "dense_spatial_bytes_fp32": k * c * 9 * 4, **env,
    }
