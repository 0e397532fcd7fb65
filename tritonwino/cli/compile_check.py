"""``tritonwino compile-check``: compile every kernel config for sm_80 and sm_90 without a GPU.

For every CompileSpec in tritonwino.kernels.registry (a kernel with one launch config) and every
architecture, the kernel is compiled with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", 80|90, 32))``; the resulting PTX is assembled by the ptxas shipped in
the triton wheel (``ptxas`` for sm_80, ``ptxas-blackwell`` for sm_90a) with ``-v``, and the
table reports registers per thread, spill bytes (stores + loads), shared memory (bytes, from
the compiled metadata), whether tensor-core instructions (mma.sync / wgmma) appear in the PTX,
and the compile time.

Exit status is non-zero when any config fails to compile, spills registers, or is expected to
use tensor cores (fp16/bf16/tf32 dot) but has no tensor-core instruction.

Compilation never runs under TRITON_INTERPRET=1 (the command re-runs itself without it) and
uses a private Triton cache directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..aot import ARCHS, check_specs, format_table, select_specs, short_error
from ..kernels._common import interpreting

_CHILD_ENV = "TRITONWINO_COMPILE_CHECK_CHILD"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", action="append", choices=sorted(ARCHS),
                        help="architecture to compile for (repeatable; default: sm_80 and sm_90)")
    parser.add_argument("--kernel", action="append", metavar="NAME",
                        help="only this kernel (repeatable), e.g. fused_x_sparse")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="only the first N configs of each kernel (a quick representative subset)")
    parser.add_argument("--jobs", type=int, default=1, metavar="J",
                        help="parallel compiles in worker processes (default 1)")
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON to PATH")
    parser.add_argument("--out", metavar="DIR",
                        help="write compile_check.json/.csv and every PTX + ptxas log under DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _child_argv(args: argparse.Namespace) -> list[str]:
    argv: list[str] = []
    for a in args.arch or []:
        argv += ["--arch", a]
    for k in args.kernel or []:
        argv += ["--kernel", k]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    argv += ["--jobs", str(args.jobs)]
    if args.json:
        argv += ["--json", str(Path(args.json).resolve())]
    if args.out:
        argv += ["--out", str(Path(args.out).resolve())]
    if args.no_progress:
        argv.append("--no-progress")
    return argv


def run(args: argparse.Namespace) -> int:
    if interpreting():
        # Kernels defined under the interpreter cannot be compiled: start over without it.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env[_CHILD_ENV] = "1"
        print("compile-check: TRITON_INTERPRET is set; re-running without it", file=sys.stderr)
        return subprocess.call([sys.executable, "-m", "tritonwino.cli.compile_check", *_child_argv(args)],
                               env=env)

    os.environ["TRITON_DEFAULT_FP_FUSION"] = "1"
    out_dir = Path(args.out) if args.out else None
    private_cache = tempfile.mkdtemp(prefix="tritonwino-compile-check-cache-")
    os.environ["TRITON_CACHE_DIR"] = private_cache
    try:
        from tritonwino._triton_path import shipped_tiles
        from tritonwino.kernels.registry import all_compile_specs

        try:
            all_specs = all_compile_specs(shipped_tiles())
        except Exception as e:  # noqa: BLE001 - a broken kernel module is a gate failure
            print(f"compile-check: could not collect kernel configs: {short_error(e)}", file=sys.stderr)
            return 1
        if not all_specs:
            print("compile-check: no kernel configs are registered (tritonwino.kernels.registry."
                  "all_compile_specs() is empty); nothing to check.")
            return 0
        specs = select_specs(all_specs, args.kernel, args.limit)
        if not specs:
            known = sorted({s.kernel for s in all_specs})
            print(f"compile-check: no configs match --kernel {args.kernel}; known kernels: {known}",
                  file=sys.stderr)
            return 2
        archs = args.arch or list(ARCHS)
        t0 = time.perf_counter()
        rows = check_specs(specs, archs, jobs=max(1, args.jobs), progress=not args.no_progress,
                           save_dir=out_dir / "ptx" if out_dir else None)
        elapsed = time.perf_counter() - t0
        print(format_table(rows))
        payload = [r.to_dict() for r in rows]
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "compile_check.json").write_text(json.dumps(payload, indent=1) + "\n")
            with open(out_dir / "compile_check.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(payload[0]))
                w.writeheader()
                w.writerows(payload)
        bad = [r for r in rows if not r.ok]
        for r in bad:
            print(f"{r.status}: {r.kernel} [{r.config}] {r.arch}"
                  f"{': ' + r.error if r.error else ''}"
                  f"{f': {r.spill_bytes} spill bytes' if r.status == 'SPILL' else ''}"
                  f"{': expected tensor-core instructions, found none' if r.status == 'NO-MMA' else ''}",
                  file=sys.stderr)
        arch_word = "archs" if len(archs) > 1 else "arch"
        print(f"\n{len(rows)} compiles ({len(specs)} configs x {len(archs)} {arch_word}) in {elapsed:.1f} s: "
              f"{len(rows) - len(bad)} ok, {len(bad)} failed"
              f"{f'; rows written to {out_dir}' if out_dir else ''}")
        return 1 if bad else 0
    finally:
        shutil.rmtree(private_cache, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m tritonwino.cli.compile_check [options]`` (same as ``tritonwino compile-check``)."""
    parser = argparse.ArgumentParser(prog="tritonwino compile-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
