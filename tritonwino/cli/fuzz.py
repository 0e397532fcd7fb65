"""Fuzz the library: generated cases, valid and invalid, on the torch path and the Triton path,
each under a timeout. Counts silent wrong answers, crashes and hangs (the goal is 0 / 0 / 0).

Valid cases (shapes incl. empty batches and inputs smaller than a tile, NCHW / channels_last /
strided / transposed inputs, float32 / float16 / bfloat16 (+ float64 on the torch path), every tile
the dtype supports, standard and accurate points, dense and sparse at every granularity, packed
arrays contiguous / non-contiguous / saved and loaded, biases of any stride, ReLU) must match the
float64 oracle: the test suite's accuracy rule for Triton against the torch path, and the tile's
error bound on both paths. Invalid cases (one defect each: bad shapes, dtypes, padding, tiles,
points, corrupt packed weights, bad packing arguments ...) must raise ValueError or TypeError.

Each case runs in a worker process under --timeout: a case that does not finish is a hang, a
worker that dies is a crash. Without a GPU the Triton cases run under the Triton interpreter
(set automatically): expect about half an hour for 1000 cases on one core.

Examples:
  tritonwino fuzz                                  # 1000 cases, seed 0 -> bench/results/fuzz.{md,json}
  tritonwino fuzz --cases 200 --seed 3 --out /tmp/fuzz
  tritonwino fuzz --replay '{"valid": true, "kind": "dense", ...}'   # one case from a report
  tritonwino fuzz --calibrate 2000                 # the torch path's error per tile and dtype

Exit status: 0 when no case was a silent wrong answer, a crash or a hang; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", type=int, default=1000, help="number of generated cases (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run; case i is the same for a seed (default 0)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds one case may take before it counts as a hang (default 300)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the worker process (default 1)")
    p.add_argument("--out", default="bench/results", help="directory for fuzz.json and fuzz.md (default bench/results)")
    p.add_argument("--replay", metavar="JSON", help="run this one case (parameters as printed in a report)")
    p.add_argument("--calibrate", type=int, metavar="N",
                   help="instead of fuzzing: the torch path's largest error per tile and dtype over N valid cases")
    p.add_argument("--paths", choices=("both", "torch", "triton"), default="both",
                   help="which paths the generated cases run on (default both)")
    p.add_argument("--no-progress", action="store_true", help="no progress line")


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton (the worker too)
    from ..experiments import fuzz

    if args.calibrate:
        print(json.dumps(fuzz.calibrate(args.calibrate, args.seed + 1000), indent=1))
        return 0
    params = None
    if args.replay:
        try:
            params = [json.loads(args.replay)]
        except json.JSONDecodeError as e:
            raise SystemExit(f"--replay expects the JSON parameters of one case: {e}") from None
    if args.cases < 1 or args.timeout <= 0 or args.threads < 1:
        raise SystemExit("--cases and --threads must be >= 1 and --timeout > 0")

    def progress(done: int, total: int, out: dict) -> None:
        if out["status"] in ("wrong", "crash", "hang"):
            print(f"\ncase {out['index']}: {out['status']}: {json.dumps(out['params'])}\n  {out['detail'][:500]}",
                  file=sys.stderr)
        if not args.no_progress:
            print(f"\rfuzz: {done}/{total}", end="", file=sys.stderr, flush=True)

    backends = ("torch", "triton") if args.paths == "both" else (args.paths,)
    report = fuzz.fuzz(args.cases, args.seed, args.timeout, args.threads, progress, params, backends)
    if not args.no_progress:
        print(file=sys.stderr)
    c = report["counts"]
    print(f"{report['cases']} cases in {report['seconds']:.0f} s: ok {c['ok']}, silent wrong answers {c['wrong']}, "
          f"crashes {c['crash']}, hangs {c['hang']}, skipped {c['skip']}")
    if params is None:
        jpath, mpath = fuzz.write_report(report, args.out)
        print(f"wrote {mpath} and {jpath}")
    return 1 if c["wrong"] or c["crash"] or c["hang"] else 0
