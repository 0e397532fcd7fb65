"""The converged pruning grid: dense models trained to convergence on full Fashion-MNIST, then every
pruning method (spatial-Winograd step 1 + 2, Li native, Liu magnitude, Winograd-ReLU, spatial
magnitude) x granularity (1x1, 16x1, 32x1) x seed (0, 1, 2), plus the distillation recipe, into
bench/results/pruning_converged.{csv,md,png} and pruning_converged_curve.csv.

Resumable: checkpoints under bench/results/pruning_converged.state/ (not committed); rerun the same
command after a stop and it continues. Several CPU-hours on one thread; see docs/pruning.md and
`python bench/pruning_converged.py --help` (protocol: tritonwino/experiments/converged_grid.py).

Run: nohup python bench/pruning_converged.py > /tmp/converged.log 2>&1 &
Smoke: python bench/pruning_converged.py --out /tmp/smoke --train-limit 512 --test-limit 256 \
    --dense-epochs 1 --stage-epochs 0.25 --seeds 0 --methods yu --granularities 1x1
"""

import sys
from pathlib import Path

from tritonwino.experiments.converged_grid import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args and not any(a.startswith("--out=") for a in args) and not {"-h", "--help"} & set(args):
        args += ["--out", str(Path(__file__).parent / "results" / "pruning_converged")]
    sys.exit(main(args))
