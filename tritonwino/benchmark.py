"""The one timing module every benchmark uses, and the metadata every result row carries.

GPU: ``triton.testing.do_bench`` (warm-up, L2 flushed between runs), quantiles 0.5/0.2/0.8,
cudnn.benchmark on for the conv2d baseline, the TF32 setting recorded.
CPU: warm-up, then the median of repeats with ``time.perf_counter``; the thread count is recorded
and every row says ``timer=cpu-perf_counter`` so a CPU timing is never mistaken for a GPU one.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

import torch


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {cpu}"


def environment(device: torch.device | str) -> dict:
    """Metadata for a result row: device, versions, threads, TF32 and timer."""
    device = torch.device(device)
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "tritonwino": _version("tritonwino"),
        "threads": torch.get_num_threads(),
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if device.type == "cuda" else False,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else False,
        "timer": "cuda-do_bench" if device.type == "cuda" else "cpu-perf_counter",
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def time_ms(fn: Callable[[], object], device: torch.device | str, warmup: int = 2, reps: int = 7,
            min_time_s: float = 0.0) -> dict:
    """Median, 20th and 80th percentile of ``fn()`` in milliseconds."""
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing

        torch.backends.cudnn.benchmark = True
        med, lo, hi = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return {"ms": med, "ms_p20": lo, "ms_p80": hi, "reps": None}
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < reps or (time.perf_counter() - start) < min_time_s:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return {"ms": statistics.median(times), "ms_p20": q[0], "ms_p80": q[3], "reps": len(times)}


def write_rows(rows: Iterable[dict], out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``name.csv`` and ``name.json`` under ``out_dir``; returns both paths."""
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


def markdown_table(rows: list[dict], columns: list[str], floatfmt: str = "{:.3g}") -> str:
    def fmt(v):
        return floatfmt.format(v) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
