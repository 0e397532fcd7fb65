"""CNN vs AdderNet vs Winograd AdderNet on Fashion-MNIST: accuracy and counted operations per image.

One small CNN (conv → 2 × [3x3 layer → BN → ReLU → pool] → Linear) is trained once per variant,
the two middle layers being: Conv2d (cnn), AdderConv2d (addernet), WinogradAdderConv2d F(2,3) with
the standard or the balanced matrices, each without and with the ℓ2→ℓ1 schedule, and the balanced
layer with Winograd-domain filters U as its parameter (wino-balanced-u). Everything runs on
the CPU with one torch thread by default. Each variant checkpoints after every epoch in --work
and a finished variant is never retrained, so an interrupted run resumes where it stopped (the
same command again); changing a setting starts a new set of rows.

Writes <out>.csv, <out>.md and <out>.png (default bench/results/adder_fashion_mnist.*). See
docs/adder.md for what the variants are and what the numbers mean.

Run:  python bench/adder_fashion_mnist.py                 (all seven variants, 6 epochs, ~1.2 CPU-hours;
                                                          the committed 6-epoch rows have the first six)
      python bench/adder_fashion_mnist.py --variants cnn addernet wino-balanced wino-balanced-u \
          --epochs 12 --out bench/results/adder_fashion_mnist_12ep     (the 12-epoch rows, ~1 CPU-hour)
      python bench/adder_fashion_mnist.py --train-limit 2000 --test-limit 500 --epochs 1 --out /tmp/quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tritonwino.experiments.adder import VARIANTS, Settings, run_experiment, write_outputs

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="which variants to train (default: all seven)")
    ap.add_argument("--epochs", type=int, default=6, help="training epochs per variant (default 6)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1, help="initial learning rate of the cosine schedule")
    ap.add_argument("--eta", type=float, default=0.2, help="AdderNet adaptive learning-rate coefficient")
    ap.add_argument("--l2-to-l1-end", type=float, default=0.5,
                    help="fraction of training at which p reaches 1 (default 0.5)")
    ap.add_argument("--l2-to-l1-schedule", choices=("linear", "step"), default="step",
                    help="linear: p goes 2 → 1 linearly from the start to --l2-to-l1-end; step: p = 2 until "
                         "--l2-to-l1-end, then 1 (default: step; 1 < p < 2 costs ~40x more CPU time per step)")
    ap.add_argument("--widths", type=int, nargs=3, default=[16, 16, 32], metavar=("C0", "C1", "C2"),
                    help="channels of the first conv and of the two compared layers (default 16 16 32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    ap.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    ap.add_argument("--out", default=str(HERE / "results" / "adder_fashion_mnist"),
                    help="output stem for .csv/.md/.png (default bench/results/adder_fashion_mnist)")
    ap.add_argument("--work", default="out/adder_fashion_mnist",
                    help="checkpoints and finished rows (default out/adder_fashion_mnist)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.threads < 1:
        ap.error("--epochs, --batch-size and --threads must be >= 1")
    settings = Settings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, eta=args.eta,
                        l2_to_l1_end=args.l2_to_l1_end, l2_to_l1_schedule=args.l2_to_l1_schedule,
                        widths=tuple(args.widths), seed=args.seed,
                        train_limit=args.train_limit, test_limit=args.test_limit, threads=args.threads)
    rows = run_experiment(args.work, args.variants, settings, progress=not args.no_progress)
    for path in write_outputs(rows, args.out, settings):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
