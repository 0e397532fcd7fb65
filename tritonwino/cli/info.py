"""Show the device, library versions, which execution paths are available here, and where the
autotune cache lives with a summary of what it holds (entries per kernel).

Paths: "triton-gpu" (Triton kernels on a CUDA GPU), "triton-interpreter" (the same kernels run
by the Triton interpreter on CPU; needs TRITON_INTERPRET=1 set before start-up), "torch" (the
pure-torch path, always available).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from typing import Any

import torch

from .. import tuning
from ..env import cpu_model, interpreting, versions


def collect() -> dict[str, Any]:
    """Everything ``tritonwino info`` reports, as a JSON-ready dict."""
    interpret = interpreting()
    cuda = bool(torch.cuda.is_available())
    device: dict[str, Any] = {
        "type": "cuda" if cuda else "cpu",
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        device["name"] = torch.cuda.get_device_name()
        device["capability"] = "sm_{}{}".format(*torch.cuda.get_device_capability())
        device["cuda"] = torch.version.cuda
    else:
        device["name"] = device["cpu_model"]

    paths = (["triton-gpu"] if cuda else []) + (["triton-interpreter"] if interpret else []) + ["torch"]

    cache = tuning.TuningCache()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        per_kernel = cache.summary()
    cache_info: dict[str, Any] = {
        "path": str(cache.path),
        "dir": str(cache.path.parent),
        "env_var": tuning.ENV_VAR,
        "env_override": os.environ.get(tuning.ENV_VAR),
        "device_key": cache.device,
        "exists": cache.path.exists(),
        "entries": sum(per_kernel.values()),
        "per_kernel": per_kernel,
    }
    if caught:
        cache_info["warnings"] = [str(w.message) for w in caught]

    return {
        "device": device,
        "versions": versions(),
        "triton_interpret": interpret,
        "paths": paths,
        "tuning_cache": cache_info,
    }


def format_text(info: dict[str, Any]) -> str:
    d, v, c = info["device"], info["versions"], info["tuning_cache"]
    dev = (f"{d['name']} ({d['capability']}, CUDA {d['cuda']})" if d["type"] == "cuda"
           else f"CPU: {d['cpu_model']}, {d['cpu_count']} cores, torch threads {d['torch_threads']}")
    lines = [
        f"device            {dev}",
        "versions          " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"TRITON_INTERPRET  {'on' if info['triton_interpret'] else 'off'}",
        f"paths available   {', '.join(info['paths'])}",
        f"tuning cache      {c['path']}"
        + ("" if c["exists"] else " (not created yet)")
        + (f"  [from ${c['env_var']}]" if c["env_override"] else ""),
        f"  device key      {c['device_key']}",
        f"  entries         {c['entries']}",
    ]
    for kernel, n in c["per_kernel"].items():
        lines.append(f"    {kernel:<24} {n}")
    for w in c.get("warnings", []):
        lines.append(f"  warning: {w}")
    if "triton-gpu" not in info["paths"] and "triton-interpreter" not in info["paths"]:
        lines.append("note: no GPU; Triton kernels run only under the interpreter "
                     "(export TRITON_INTERPRET=1 before starting Python).")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the information as JSON")


def run(args: argparse.Namespace) -> int:
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0
