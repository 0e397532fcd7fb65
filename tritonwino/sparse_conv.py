"""The public API of tritonwino: everything a model author needs, in one import.

```python
import tritonwino.sparse_conv as sc

y = sc.winograd_conv2d(x, weight, bias, padding=1, m=4)          # dense F(4x4, 3x3)
packed = sc.pack_winograd_weight(q, block=(16, 1))               # q = G W Gᵀ with pruned zeros
y = sc.sparse_winograd_conv2d(x, packed, bias, padding=1)        # skips pruned weights
model = sc.convert(pruned_model, m=4, block=(16, 1))             # swap eligible Conv2d layers
print(sc.tune_model(model, example_batch))                       # measured per-layer dispatch
```

``backend``: ``"auto"`` (Triton kernels for CUDA tensors, the torch path for CPU tensors; modules
with ``"auto"`` pick the fastest measured path per shape), ``"triton"`` (force the kernels; on CPU
tensors this needs ``TRITON_INTERPRET=1`` set before import), ``"torch"`` (the pure-torch path).
Notation (F(m, r), n, P, T, V, Q, M, block, group_k and every layout): docs/notation.md.
"""

from __future__ import annotations

from .functional import BACKENDS, sparse_winograd_conv2d, winograd_conv2d
from .modules import ExplainTable, SparseWinogradConv2d, compact_state_dict, convert, explain, tune_model
from .packing import PackedWinogradWeight, pack_winograd_weight

__all__ = [
    "BACKENDS",
    "ExplainTable",
    "PackedWinogradWeight",
    "SparseWinogradConv2d",
    "compact_state_dict",
    "convert",
    "explain",
    "pack_winograd_weight",
    "sparse_winograd_conv2d",
    "tune_model",
    "winograd_conv2d",
]
