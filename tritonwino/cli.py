"""The ``tritonwino`` command line. Each subcommand lives in its own module with
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them up."""

from __future__ import annotations

import argparse
import importlib
import sys

# (subcommand, module, one-line help). Each module adds its own arguments, so every
# `tritonwino SUBCOMMAND --help` documents itself.
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("demo", "tritonwino.demo", "the main job: prune -> convert -> verify -> benchmark -> plot"),
    ("bench", "tritonwino.layer_bench", "time conv2d vs dense vs sparse Winograd per layer shape and sparsity"),
    ("plot", "tritonwino.plot_cmd", "rebuild speedup / memory / accuracy plots from saved result rows"),
    ("tune", "tritonwino.tune", "autotune the kernel configs of a model's layers for this GPU (CPU: dispatch timings)"),
    ("prune", "tritonwino.prune_cmd",
     "the pruning experiment: spatial-Winograd pruning (both steps) vs baselines, accuracy vs sparsity"),
    ("info", "tritonwino.info", "device, versions, available paths and tuning-cache summary"),
    ("compile-check", "tritonwino.compile_check",
     "AOT-compile every kernel config for sm_80/sm_90 and report registers, spills, tensor cores"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritonwino",
        description="Sparse Winograd convolution for pruned CNNs (Triton kernels + tools).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in SUBCOMMANDS:
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
