"""The ``tritonwino`` command line. Each subcommand lives in ``tritonwino/cli/<name>.py`` with
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them up. Subcommand
modules are imported only when their subcommand runs (or for ``--help``), so ``tritonwino info``
does not pay for matplotlib and friends."""

from __future__ import annotations

import argparse
import importlib
import sys

# (subcommand, module under tritonwino.cli, one-line help)
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("demo", "demo", "the main job: prune -> convert -> verify -> benchmark -> plot"),
    ("bench", "bench", "time conv2d vs dense vs sparse Winograd per layer shape and sparsity"),
    ("plot", "plot", "rebuild speedup / memory / accuracy plots from saved result rows"),
    ("tune", "tune", "autotune the kernel configs of a model's layers for this GPU (CPU: a timing report)"),
    ("prune", "prune", "the pruning experiment: spatial-Winograd pruning (both steps) vs baselines"),
    ("info", "info", "device, versions, available paths and tuning-cache summary"),
    ("fuzz", "fuzz", "generated valid and invalid cases on both paths: counts silent wrong answers, crashes, hangs"),
    ("points", "points", "search interpolation points for a tile F(m, r) and report the error ratio to a direct conv"),
    ("compile-check", "compile_check",
     "AOT-compile every kernel config for sm_80/sm_90 and report registers, spills, tensor cores"),
]


# Packages of the [experiments] extra that some subcommands import.
EXTRA_PACKAGES = ("pandas", "matplotlib", "tqdm", "sklearn")


def _command(argv: list[str]) -> str | None:
    names = {name for name, _, _ in SUBCOMMANDS}
    return next((a for a in argv if a in names), None)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand's module is imported (the others still
    appear in ``tritonwino --help`` with their one-line help)."""
    parser = argparse.ArgumentParser(
        prog="tritonwino",
        description="Sparse Winograd convolution for pruned CNNs (Triton kernels + tools). "
                    "`tritonwino COMMAND --help` explains each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in SUBCOMMANDS:
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        try:
            mod = importlib.import_module(f"tritonwino.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name not in EXTRA_PACKAGES:
                raise
            raise SystemExit(f"tritonwino {name} needs {e.name}, which is not installed: "
                             "pip install 'tritonwino[experiments]'") from None
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    parser = build_parser(command if command is not None else "")
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
