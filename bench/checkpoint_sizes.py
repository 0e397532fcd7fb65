"""Checkpoint size of a converted model against the dense model it came from.

ResNet-18 (ResNet.max variant, the 16 stride-1 3x3 convs eligible), random weights, pruned at the
(16, 1) granularity that ``convert`` packs with, two ways: spatial structured pruning
(``SpatialPruner``: the converted layers store their spatial weight W, dense or as a bit mask plus
its nonzeros, whichever is smaller; Q is re-derived at load) and
Winograd-domain pruning (``convert_to_winograd`` + ``WinogradPruner``: the layers store packed
values in the model's dtype with int16 indices). Sizes are ``torch.save`` files of the
``state_dict`` (masks not saved), plus the "packed everywhere, fp32" bytes of tritonwino 0.1 for
comparison. Every converted checkpoint is loaded into a freshly built, converted model and its
output compared bit for bit.

Rows -> bench/results/checkpoint_sizes.{csv,json,md}. Run: python bench/checkpoint_sizes.py
"""

from __future__ import annotations

import argparse
import copy
import io
from pathlib import Path

import torch

from tritonwino.env import environment
from tritonwino.experiments.models import resnet18_max
from tritonwino.experiments.rows import write_rows
from tritonwino.pruning import SpatialPruner, WinogradPruner, convert_to_winograd, model_winograd_sparsity
from tritonwino.sparse_conv import SparseWinogradConv2d, compact_state_dict, convert
from tritonwino.tables import markdown_table


def file_bytes(sd: dict) -> int:
    buf = io.BytesIO()
    torch.save({k: v for k, v in sd.items() if not k.endswith("spatial_mask")}, buf)
    return buf.tell()


def packed_everywhere_fp32(model: torch.nn.Module) -> int:
    """Tensor bytes of the tritonwino 0.1 format: every converted layer as fp32 packed arrays."""
    total = 0
    for mod in model.modules():
        if isinstance(mod, SparseWinogradConv2d):
            p = mod.packed
            total += p.values.numel() * 4 + p.indices.numel() * p.indices.element_size() + p.offsets.numel() * 4
            tensors = [] if mod.bias is None else [mod.bias]
        else:
            tensors = list(mod.parameters(recurse=False)) + [
                b for n, b in mod.named_buffers(recurse=False)
                if n not in mod._non_persistent_buffers_set and n != "spatial_mask"]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.4, 0.75, 0.9])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.manual_seed(0)
    dense = resnet18_max(10, 3).eval()
    dense_file = file_bytes(dense.state_dict())
    dense_params = sum(p.numel() * p.element_size() for p in dense.parameters())
    x = torch.randn(1, 3, 32, 32)
    env = environment("cpu")
    rows = []
    for kind in ("spatial", "winograd"):
        for target in args.sparsities:
            model = copy.deepcopy(dense)
            if kind == "spatial":
                SpatialPruner(model, m=4, block=(16, 1)).prune(target)
            else:
                convert_to_winograd(model, m=4)
                WinogradPruner(model, block=(16, 1)).prune(target)
            convert(model, m=4, block=(16, 1), backend="torch")
            sd = model.state_dict()
            fresh = convert(resnet18_max(10, 3).eval(), m=4, block=(16, 1), backend="torch")
            fresh.load_state_dict(torch.load(io.BytesIO(_saved(sd)), weights_only=True))
            with torch.no_grad():
                exact = torch.equal(fresh(x), model(x))
            rows.append({
                "model": "resnet18_max", "pruning": kind, "target": target,
                "winograd_sparsity": model_winograd_sparsity(model, m=None)["overall"],
                "dense_param_bytes": dense_params, "dense_file_bytes": dense_file,
                "converted_file_bytes": file_bytes(sd),
                "compact_fp16_file_bytes": file_bytes(compact_state_dict(model)),
                "v0_1_packed_fp32_tensor_bytes": packed_everywhere_fp32(model),
                "ratio_converted_vs_dense_file": file_bytes(sd) / dense_file,
                "roundtrip_bit_identical": exact, **env})
            print(rows[-1]["pruning"], target, f"{rows[-1]['ratio_converted_vs_dense_file']:.3f}x", exact)
    write_rows(rows, args.out, "checkpoint_sizes")
    mb = 1e6
    table = [{"pruning": r["pruning"], "Winograd sparsity": f"{r['winograd_sparsity']:.1%}",
              "dense": f"{r['dense_file_bytes'] / mb:.1f} MB", "converted": f"{r['converted_file_bytes'] / mb:.1f} MB",
              "converted / dense": f"{r['ratio_converted_vs_dense_file']:.2f}x",
              "compact (fp16)": f"{r['compact_fp16_file_bytes'] / mb:.1f} MB",
              "0.1 format (fp32 packed)": f"{r['v0_1_packed_fp32_tensor_bytes'] / mb:.1f} MB",
              "exact round trip": "yes" if r["roundtrip_bit_identical"] else "NO"} for r in rows]
    cols = list(table[0])
    (Path(args.out) / "checkpoint_sizes.md").write_text(markdown_table(table, cols, str) + "\n")
    print(markdown_table(table, cols, str))


def _saved(sd: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


if __name__ == "__main__":
    main()
