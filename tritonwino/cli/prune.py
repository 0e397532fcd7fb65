"""The pruning experiment: accuracy versus Winograd-domain sparsity on Fashion-MNIST, spatial-Winograd
pruning (both steps) against the baselines on the same seed, data and step budget.

See ``tritonwino.experiments.pruning_experiment`` for the schedule; bench/pruning_fashion_mnist.py
runs the committed experiment into bench/results/pruning_accuracy.*.

Example: tritonwino prune --out results/pruning --stage-steps 30
"""

from __future__ import annotations

import argparse

from ..experiments import pruning_experiment


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--train-limit", type=int, default=20000)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--dense-epochs", type=float, default=4.0)
    ap.add_argument("--stage-steps", type=int, default=30)
    ap.add_argument("--spatial-targets", type=str, default="0.3,0.5,0.6,0.7")
    ap.add_argument("--winograd-targets", type=str, default="0.75,0.8,0.85")
    ap.add_argument("--winograd-lr", type=float, default=3e-4)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--methods", type=str, default="yu,yu16,magnitude,li,liu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", type=str, default="auto")
    ap.add_argument("--out", type=str, required=True,
                    help="path stem of the results: writes OUT.csv, OUT.md and OUT.png")
    ap.add_argument("--plot-from", type=str, default=None,
                    help="only rebuild the plot from a saved CSV (writes <csv stem>.png)")
    ap.add_argument("--no-plot", action="store_true")


def run(args: argparse.Namespace) -> int:
    return pruning_experiment.run(args)
