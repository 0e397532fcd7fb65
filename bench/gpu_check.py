"""The GPU check's layer benchmark (run by bench/gpu_check.sh after the CUDA-marked tests).

Times the sparse Triton paths (the chosen one, one kernel, two kernels) and dense Winograd against
F.conv2d (channels_last, fp16, cudnn.benchmark=True) on 64@56², 128@28², 256@14², 512@7² at
N = 1, 8, 32, sparsity 0/75/90 % at (16,1) and (32,1), F(4,3); N=1 is timed as CUDA-graph replays.
Writes gpu_check_cuda.{csv,json,md}. Needs a CUDA GPU; --dry-run prints the plan anywhere.

Run:  python bench/gpu_check.py [--out DIR] [--quick] [--budget-s S] [--autotune] [--dry-run]
"""

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    ap.add_argument("--quick", action="store_true", help="512@7² and 256@14² at N=8 only (about a minute)")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="stop starting new cases after this many seconds (default 300; rows so far are kept)")
    ap.add_argument("--autotune", action="store_true",
                    help="time every launch config candidate (default: the first one, to bound compile time)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit (works without a GPU)")
    args = ap.parse_args(argv)
    if args.budget_s <= 0:
        ap.error(f"--budget-s must be positive, got {args.budget_s}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.autotune:
        os.environ.setdefault("TRITONWINO_AUTOTUNE", "0")
    import torch

    from tritonwino.experiments import gpu_check

    cases = (gpu_check.plan(shapes=[(512, 7), (256, 14)], batches=[8]) if args.quick else gpu_check.plan())
    print(f"gpu check: {len(cases)} cases, 4 timed paths each against F.conv2d (fp16, channels_last), "
          f"budget {args.budget_s:.0f} s, autotune {'on' if args.autotune else 'off'}, out {args.out}")
    if args.dry_run:
        print(gpu_check.describe(cases))
        return 0
    if not torch.cuda.is_available():
        print("gpu check: no CUDA GPU here; nothing was timed (use --dry-run to see the plan)", file=sys.stderr)
        return 2
    from tritonwino.experiments.rows import write_rows
    from tritonwino.tables import markdown_table

    rows, skipped = gpu_check.run_all(cases, gpu_check.environment_rows(), args.budget_s)
    write_rows(rows, args.out, "gpu_check_cuda")
    cols = ["C", "H", "N", "block", "sparsity", "path", "chosen_path", "conv2d_ms", "winograd_ms",
            "speedup_vs_conv2d", "rel_err", "conv2d_rel_err"]
    head = (f"# GPU check ({rows[0]['device'] if rows else '?'}, measured)\n\n"
            f"torch {rows[0]['torch'] if rows else '?'}, triton {rows[0]['triton'] if rows else '?'}; "
            "times are medians of triton.testing.do_bench (ms); N=1 as CUDA-graph replays.\n\n")
    note = f"\nNot run (time budget): {len(skipped)} cases.\n" if skipped else ""
    (Path(args.out) / "gpu_check_cuda.md").write_text(head + markdown_table(rows, cols) + note)
    print(f"wrote {len(rows)} rows to {args.out}/gpu_check_cuda.*" + (f"; {len(skipped)} cases over budget" if skipped
                                                                        else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
