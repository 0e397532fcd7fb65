"""Counted-work model of the Triton paths (a model, not a measurement) into bench/results/.

For ResNet-18's 3x3 layers (64@56², 128@28², 256@14², 512@7²) at N = 1, 8, 32 and Winograd-domain
sparsity 0/50/75/90/95% at (32,1), F(4,3), fp16: the one-kernel and the two-kernel sparse paths and
the dense Winograd path, each put through a roofline with the published peaks of A100, H100 and
H200 (2.5 µs per launch) next to the dense direct convolution's bound. The sweep uses the closed
form (exactly the interpreter's counts, see tests/test_work_model.py); 512x7x7 at N=32 and
256x14x14 at N=8, 75% and 90%, are also counted under the interpreter (minutes each) and checked
against it.

Writes work_model.{csv,json}, work_model.md (the acceptance table) and work_model.png.

Run:  python bench/work_model.py [--counted none|done-when] [--gpus A100 H100 H200] [--quick]
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton kernels: counts run in the interpreter

from tqdm import tqdm  # noqa: E402

from tritonwino.env import environment  # noqa: E402
from tritonwino.experiments import work_model as report  # noqa: E402
from tritonwino.experiments.rows import write_rows  # noqa: E402
from tritonwino.workmodel.layer_model import TITLE  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    ap.add_argument("--gpus", nargs="+", default=["A100", "H100", "H200"], choices=sorted(report.GPUS))
    ap.add_argument("--counted", choices=["none", "done-when"], default="done-when",
                    help="also count the acceptance cases under the interpreter (default; ~5 min each)")
    ap.add_argument("--quick", action="store_true", help="two small layers, N=1: a smoke run")
    args = ap.parse_args(argv)

    env = {k: v for k, v in environment("cpu").items() if k in ("torch", "triton", "tritonwino", "timestamp")}
    env["counted_on"] = "Triton interpreter (CPU); no GPU was used"
    if args.quick:
        layers, batches, sparsities = [(16, 8), (32, 6)], [1], [0.0, 0.75]
        done_when = [(report.LayerCase(2, 32, 32, 6, 6, 0.75), 0.75)]
    else:
        layers, batches, sparsities = report.LAYERS, report.BATCHES, report.SPARSITIES
        done_when = report.DONE_WHEN
    rows = []
    t0 = time.perf_counter()
    cases = report.sweep_cases(layers, batches, sparsities)
    for case in tqdm(cases, desc="closed form", file=sys.stderr):
        paths = ("one-kernel", "two-kernel") + (("dense",) if case.sparsity == 0 else ())
        rows += report.rows_for(case, paths, args.gpus, env, counted=False)
    if args.counted == "done-when":
        for case, _ in tqdm(done_when, desc="counted (interpreter)", file=sys.stderr):
            rows += report.rows_for(case, ("one-kernel", "two-kernel"), args.gpus, env, counted=True)
    out = Path(args.out)
    write_rows(rows, out, "work_model")
    summary = report.summary_markdown(rows)
    (out / "work_model.md").write_text(f"# Work model ({TITLE})\n\n{summary}")
    report.plot_speedup(rows, out / "work_model.png", batch=max(batches))
    print(summary)
    bad = [r for r in rows if r.get("closed_form_agrees") is False or r.get("oob_accesses")]
    print(f"{len(rows)} rows in {time.perf_counter() - t0:.0f} s -> {out}/work_model.*"
          + (f"; {len(bad)} counted rows disagree with the closed form or touched memory out of bounds" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
