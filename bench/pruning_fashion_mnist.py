"""The committed pruning experiment: `tritonwino prune` into bench/results/pruning_accuracy.*.

Spatial-Winograd pruning (step 1 + step 2) against the baselines on Fashion-MNIST, F(4,3) by default
(`--m 2` for F(2,3); the F(2,3) results were written with `--out bench/results/pruning_accuracy_f23`).
See `tritonwino prune --help` for every option.

Run: python bench/pruning_fashion_mnist.py [options]
"""

import sys
from pathlib import Path

from tritonwino.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", str(Path(__file__).parent / "results" / "pruning_accuracy")]
    sys.exit(main(["prune", *args]))
