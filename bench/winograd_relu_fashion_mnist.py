"""The committed Winograd-ReLU experiment: Liu et al.'s Winograd-ReLU network (with their magnitude
pruning schedule) against spatial-Winograd pruning (Yu et al.) and Li et al.'s native pruning on
Fashion-MNIST, same model family and budget as bench/pruning_fashion_mnist.py, into
bench/results/winograd_relu_fashion_mnist.{csv,md,png}.

Resumable (checkpoints under the results stem's .state/ directory, not committed); one thread.
See tritonwino/experiments/winograd_relu_experiment.py for the arms and the counts, and
`python bench/winograd_relu_fashion_mnist.py --help` for the options.

Run: nohup python bench/winograd_relu_fashion_mnist.py > /tmp/wrelu.log 2>&1 &
"""

import sys
from pathlib import Path

from tritonwino.experiments.winograd_relu_experiment import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", str(Path(__file__).parent / "results" / "winograd_relu_fashion_mnist")]
    sys.exit(main(args))
