"""Full sparse-layer sweep on this machine into bench/results/ (see tritonwino/layer_bench.py).

ResNet-18's 3x3 shapes, sparsity 0/50/75/90%, granularities (1,1) (16,1) (32,1) (16,16), F(2,3) and
F(4,3), batch 1 and 8 on CPU (1, 8, 32 on a GPU). Writes sparse_layers_<cpu|cuda>.{csv,json,md} and plots.

Run: python bench/sparse_layers.py [extra `tritonwino bench` options]
"""

import sys
from pathlib import Path

from tritonwino.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--out", str(Path(__file__).parent / "results"), "--plot", *sys.argv[1:]]))
