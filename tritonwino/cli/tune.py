"""Autotune the Triton kernels of a model's layers for this GPU and store the winners.

What gets tuned: for every 3x3 (odd r×r) stride-1 layer and every --batch, the dense fused
Winograd multiply ("fused_dense") and the sparse one on both kernel paths ("fused_sparse", one key
per path), through tritonwino.tuning.dense_config / sparse_config, which time every candidate
launch config and write the fastest into the tuning cache of this GPU and Triton version (see
`tritonwino info` for its path; $TRITONWINO_CACHE_DIR moves it); on a GPU also the choice between
the one- and the two-kernel sparse path ("sparse_path": both paths timed with their tuned configs).
Layers that share a tuning key are tuned once. Later runs of the model, in any process, read the
cache instead of re-timing.

Which layers (pick one; with --dry-run and none given, the plan for --arch resnet18):
  --arch resnet18|vgg16|small-vgg  a built-in architecture with random Winograd-domain masks of
                                   --sparsity at the --block granularity and --tile
  --model PATH                     a torch.save()d whole model: its SparseWinogradConv2d layers
                                   (or, if it has none, its eligible Conv2d layers packed at --tile
                                   and --block with their own zeros as the sparsity)
  --shapes C:K:H[:W] ...           explicit layer shapes (3x3, padding 1), random masks as --arch

Without a CUDA GPU there is nothing to tune for the Triton kernels (under the interpreter they
run one fixed config). `tune` then says so and times the CPU paths of every layer instead (F.conv2d
vs dense vs sparse Winograd, pure torch, interleaved) as a report: --out writes its rows; nothing
goes into the tuning cache. With --model, each converted layer's measured dispatch decision
(`tune_model`) is stored in the cache, so the model's first forward reads it.

Examples:
  tritonwino tune --arch resnet18 --sparsity 0.8 --block 16x1 --tile 4 --batch 1 8 32
  tritonwino tune --model pruned_converted.pt --input-size 32 --batch 8 --out tune-results/
  tritonwino tune --shapes 64:64:56 128:128:28 --dry-run
  tritonwino tune --dry-run                 # the default plan (resnet18), nothing timed
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import _checks, _triton_path, tuning
from ..dispatch import winograd_backend
from ..env import environment, interpreting
from ..experiments.layers import (
    ARCH_INPUT,
    ARCHS,
    Layer,
    first_in_channels,
    layers_from_arch,
    layers_from_model,
    layers_from_shapes,
    load_model,
)
from ..experiments.rows import write_rows
from ..functional import sparse_winograd_conv2d, winograd_conv2d_pck
from ..kernels._common import dot_precision
from ..kernels.fused_multiply import (
    GPU_MAX_M,
    dense_block_k,
    fused_multiply,
    gpu_configs,
    interpreter_config,
    one_kernel_supported,
)
from ..modules import SparseWinogradConv2d, tune_model
from ..packing import PackedWinogradWeight
from ..tuning import select
from .args import parse_block, parse_shape

CPU_DISPATCH_KERNEL = "cpu_dispatch"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Job:
    """One tuning key and the layers that share it."""

    kernel: str
    key: str
    batch: int
    layer: Layer
    layers: list[str]
    candidates: int


# --------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("which layers (exactly one)")
    src.add_argument("--arch", choices=ARCHS, default=None,
                     help="built-in architecture; its layers get random Winograd-domain masks of --sparsity")
    src.add_argument("--model", default=None, metavar="PATH",
                     help="a whole model saved with torch.save(model, PATH), e.g. the output of convert()")
    src.add_argument("--shapes", nargs="+", default=None, metavar="C:K:H[:W]",
                     help="layer shapes: in channels, out channels, input height (and width); 3x3, padding 1")
    pr = p.add_argument_group("pruning pattern for --arch / --shapes (and for --model layers not yet converted)")
    pr.add_argument("--sparsity", type=float, default=0.75,
                    help="Winograd-domain sparsity of the random masks, in [0, 1) (default 0.75)")
    pr.add_argument("--block", default="16x1", metavar="BKxBC",
                    help="mask granularity (bk, bc): 1x1, 16x1, 32x1, 64x1 or blocks like 16x16 (default 16x1)")
    pr.add_argument("--tile", type=int, default=4, metavar="M", help="output tile m of F(m, 3) (default 4)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], metavar="N",
                   help="batch sizes you will run (each bucket of T is its own key; default 1), e.g. 1 8 32")
    p.add_argument("--input-size", type=int, default=None, metavar="HW",
                   help="input height=width for --arch/--model (default 224 for resnet18/vgg16 and "
                        "--model, 28 for small-vgg)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="input dtype (default float16 on a GPU, float32 on CPU)")
    p.add_argument("--allow-tf32", action="store_true", help="tune fp32 GEMMs with TF32 tensor cores (GPU)")
    p.add_argument("--force", action="store_true", help="re-time keys that already have a cached winner")
    p.add_argument("--dry-run", action="store_true",
                   help="list the layers, tuning keys and candidate counts, then stop without timing anything")
    p.add_argument("--reps", type=int, default=5,
                   help="minimum timed repeats per path on CPU (median over at least 0.1 s of them; default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and masks")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="also write the result rows as DIR/tune_<cuda|cpu>.csv and .json (plan_*.csv with --dry-run)")
    p.add_argument("--interpreter", action="store_true",
                   help="no GPU but TRITON_INTERPRET=1: run the Triton tuning loop under the interpreter with two "
                        "tiny configs, to check the machinery (the timings say nothing about GPU speed)")


# --------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------

def cpu_dispatch_key(batch: int, c: int, k: int, h: int, w: int, padding: tuple[int, int],
                     packed: PackedWinogradWeight, dtype: torch.dtype, threads: int | None = None) -> str:
    """Key of a "cpu_dispatch" cache entry. CPU times depend on the exact spatial size and on the
    thread count, so both are in the key; the batch is bucketed like the GPU keys."""
    return tuning.make_key(N=tuning.shape_bucket(batch), C=c, K=k, H=h, W=w, pad=padding,
                           tile=(packed.m, packed.r), block=packed.block, sig=packed.sparsity_signature,
                           dtype=dtype, threads=threads if threads is not None else torch.get_num_threads())


def _dedup(jobs: list[Job]) -> list[Job]:
    by_key: dict[tuple[str, str], Job] = {}
    for j in jobs:
        first = by_key.setdefault((j.kernel, j.key), j)
        if first is not j:
            first.layers.append(j.layers[0])
    return list(by_key.values())


def triton_jobs(layers: list[Layer], batches: list[int], dtype: torch.dtype, allow_tf32: bool) -> list[Job]:
    """One job per distinct (kernel, key), with the candidate count a GPU would time."""
    opd = _checks.operand_dtype(dtype)
    prec = dot_precision(opd, allow_tf32)
    jobs = []
    for nb in batches:
        for layer in layers:
            if torch.cuda.is_available() and layer.m > GPU_MAX_M:
                continue  # no GPU kernel for this tile: it runs on the torch path, nothing to tune
            t = layer.tiles(nb)
            jobs.append(Job(select.DENSE_KERNEL,
                            select.dense_key(t, layer.c, layer.k, layer.m, layer.r, opd, allow_tf32),
                            nb, layer, [layer.name], len(gpu_configs(layer.m, dense_block_k(layer.k), opd, prec, "v"))))
            # the one-kernel path exists for half operands only (fp32 layers always take two kernels)
            paths = (("two-kernel", "v"),) + ((("one-kernel", "x"),) if one_kernel_supported(layer.m, opd) else ())
            for path, src in paths:
                n_cands = len(gpu_configs(layer.m, layer.packed.group_k, opd, prec, src))
                jobs.append(Job(select.SPARSE_KERNEL, select.sparse_key(t, layer.packed, opd, allow_tf32, path),
                                nb, layer, [layer.name], n_cands))
            if torch.cuda.is_available():
                jobs.append(Job(select.PATH_KERNEL, select.sparse_key(t, layer.packed, opd, allow_tf32, "path"),
                                nb, layer, [layer.name], 2))
    return _dedup(jobs)


def cpu_jobs(layers: list[Layer], batches: list[int], dtype: torch.dtype) -> list[Job]:
    jobs = [Job(CPU_DISPATCH_KERNEL, cpu_dispatch_key(nb, L.c, L.k, L.h, L.w, L.padding, L.packed, dtype),
                nb, L, [L.name], 3)
            for nb in batches for L in layers]
    return _dedup(jobs)


# --------------------------------------------------------------------------------------------
# tuning
# --------------------------------------------------------------------------------------------

def _interpreter_candidates(job: Job):
    """Two configs the interpreter can run quickly: enough to exercise the timing and cache
    writing of the Triton tuning loop on a machine without a GPU (the timings mean nothing)."""
    base = interpreter_config(job.layer.tiles(job.batch))
    # num_warps does not change what the interpreter computes, so the variant is always valid.
    return [base, type(base)(**{**asdict(base), "num_warps": 2 if base.num_warps != 2 else 4})]


def tune_triton_job(job: Job, device: torch.device, dtype: torch.dtype, allow_tf32: bool, force: bool,
                    candidates_fn: Callable[[Job], list] | None = None) -> dict:
    """Tune one (kernel, key) through tritonwino.tuning.select (which writes the cache); returns a row."""
    layer = job.layer
    gen = torch.Generator().manual_seed(job.batch)
    x = torch.randn(job.batch, layer.c, layer.h, layer.w, generator=gen).to(device=device, dtype=dtype)
    opd = _checks.operand_dtype(dtype)
    path_job = job.kernel == select.PATH_KERNEL
    candidates = candidates_fn(job) if candidates_fn is not None and not path_job else None
    n_candidates = len(candidates) if candidates is not None else job.candidates
    cache = tuning.get_cache()
    was_cached = not force and cache.get_entry(job.kernel, job.key) is not None
    packed = layer.packed.to(device)
    call = _triton_path.SparseCall(x, packed, packed.values_as(opd), None, layer.padding, False, allow_tf32)
    t0 = time.perf_counter()
    if path_job:
        winner = select.sparse_path(call, force).path
    elif job.kernel == select.SPARSE_KERNEL:
        path = "one-kernel" if "path=one-kernel" in job.key else "two-kernel"
        winner = tuning.config_label(asdict(select.sparse_config(call, path, candidates, force)))
    else:
        n = layer.m + layer.r - 1
        q_pck = layer.packed.unpack().permute(2, 3, 1, 0).reshape(n * n, layer.c, layer.k)
        q_pck = q_pck.to(device=device, dtype=opd).contiguous()
        v = call.transform()
        y = torch.empty(job.batch, layer.k, call.ho, call.wo, device=device, dtype=dtype)

        def launch(cfg):
            return fused_multiply(v, call.spec, "v", (q_pck,), dense_block_k(layer.k), layer.c, call.tiles, y,
                                  allow_tf32=allow_tf32, config=cfg)

        winner = tuning.config_label(asdict(select.dense_config(v, q_pck, layer.m, layer.r, allow_tf32, launch,
                                                                candidates, force)))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    entry = cache.get_entry(job.kernel, job.key) or {}
    timings = entry.get("timings", {})
    best_ms = timings.get(winner)
    return {"kernel": job.kernel, "key": job.key, "layers": " ".join(job.layers), "N": job.batch,
            "C": layer.c, "K": layer.k, "H": layer.h, "W": layer.w, "tile": f"F({layer.m},{layer.r})",
            "block": f"{layer.packed.block[0]}x{layer.packed.block[1]}", "kept_slots": layer.packed.density,
            "candidates": n_candidates, "winner": winner, "best_ms": best_ms,
            "configs_timed": len(timings), "configs_failed": len(entry.get("errors", {})),
            "status": "cached" if was_cached else ("tuned" if timings else "single config, not timed"),
            "tune_s": seconds, "dtype": str(dtype).removeprefix("torch."), "allow_tf32": allow_tf32}


def time_cpu_job(job: Job, dtype: torch.dtype, reps: int) -> dict:
    """Time F.conv2d, the dense and the sparse Winograd paths for one layer on CPU (the backend dispatch
    would use: the C++ kernels for float32, else the torch path), interleaved;
    returns a report row (nothing is written to the tuning cache: layers measure their own dispatch
    on first use, or through ``tune_model``)."""
    layer = job.layer
    gen = torch.Generator().manual_seed(job.batch)
    x = torch.randn(job.batch, layer.c, layer.h, layer.w, generator=gen).to(dtype)
    # Times do not depend on values, so a random spatial weight stands in for the conv2d baseline.
    w = (torch.randn(layer.k, layer.c, layer.r, layer.r, generator=gen) / math.sqrt(9 * layer.c)).to(dtype)
    n = layer.m + layer.r - 1
    pts = layer.packed.points_fractions()
    # The dense path keeps its weight position-major (P, C, K), as a deployed layer would.
    q_pck = layer.packed.unpack().permute(2, 3, 1, 0).reshape(n * n, layer.c, layer.k).float().contiguous()
    packed, pad, m, r = layer.packed, layer.padding, layer.m, layer.r
    be = winograd_backend(x)
    t0 = time.perf_counter()
    t = tuning.time_interleaved({
        "conv2d": lambda: F.conv2d(x, w, padding=pad),
        "dense": lambda: winograd_conv2d_pck(x, q_pck.to(x.dtype), None, pad, m, r, pts, backend=be),
        "sparse": lambda: sparse_winograd_conv2d(x, packed, None, pad, backend=be),
    }, "cpu", rounds=reps)
    seconds = time.perf_counter() - t0
    ms = {name: v["ms"] for name, v in t.items()}
    best = min(ms, key=ms.__getitem__)
    return {"kernel": CPU_DISPATCH_KERNEL, "key": job.key, "layers": " ".join(job.layers), "N": job.batch,
            "C": layer.c, "K": layer.k, "H": layer.h, "W": layer.w, "tile": f"F({m},{r})",
            "block": f"{packed.block[0]}x{packed.block[1]}", "kept_slots": packed.density,
            "winograd_sparsity": float((packed.unpack() == 0).float().mean()),
            "conv2d_ms": ms["conv2d"], "dense_ms": ms["dense"], "sparse_ms": ms["sparse"],
            "sparse_ms_p20": t["sparse"]["ms_p20"], "sparse_ms_p80": t["sparse"]["ms_p80"], "winner": best,
            "speedup_best_vs_conv2d": ms["conv2d"] / ms[best], "tune_s": seconds,
            "dtype": str(dtype).removeprefix("torch."), "backend": be}


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------

DEFAULT_DRY_RUN_ARCH = "resnet18"


def _check_args(args: argparse.Namespace) -> None:
    chosen = [name for name in ("arch", "model", "shapes") if getattr(args, name)]
    if not chosen and args.dry_run:
        # a plan costs nothing: show the default one rather than an error
        args.arch = DEFAULT_DRY_RUN_ARCH
        print(f"no --arch, --model or --shapes given: the plan for the default, --arch {DEFAULT_DRY_RUN_ARCH} "
              f"(sparsity {args.sparsity:g}, block {args.block}, F({args.tile},3))")
        return _check_args(args)
    if len(chosen) != 1:
        raise SystemExit("tritonwino tune: give exactly one of --arch, --model or --shapes"
                         + (f" (got {', '.join('--' + c for c in chosen)})" if chosen else
                            f" (--dry-run alone shows the plan for --arch {DEFAULT_DRY_RUN_ARCH})"))
    if not 0.0 <= args.sparsity < 1.0:
        raise SystemExit(f"tritonwino tune: --sparsity must be in [0, 1), got {args.sparsity}")
    if args.tile < 1:
        raise SystemExit(f"tritonwino tune: --tile must be >= 1, got {args.tile}")
    if min(args.batch) < 1:
        raise SystemExit(f"tritonwino tune: --batch sizes must be >= 1, got {args.batch}")
    if args.input_size is not None and args.input_size < 1:
        raise SystemExit(f"tritonwino tune: --input-size must be >= 1, got {args.input_size}")
    if args.reps < 1:
        raise SystemExit(f"tritonwino tune: --reps must be >= 1, got {args.reps}")


def _shapes(items: list[str]) -> list[tuple[int, int, int, int]]:
    out = []
    for it in items:
        vals = parse_shape(it, "--shapes", (3, 4), "64:64:56 (C:K:H or C:K:H:W)")
        c, k, h = vals[:3]
        out.append((c, k, h, vals[3] if len(vals) == 4 else h))
    return out


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    block = parse_block(args.block)
    gen = torch.Generator().manual_seed(args.seed)
    cuda = torch.cuda.is_available()
    interp = bool(args.interpreter) and not cuda
    if interp and not interpreting():
        raise SystemExit("tritonwino tune: --interpreter needs TRITON_INTERPRET=1 set before start-up")
    if args.interpreter and cuda:
        print("note: --interpreter is ignored: a CUDA GPU is present, so the kernels are tuned on it")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if cuda else torch.float32)

    t_start = time.perf_counter()
    try:
        if args.arch:
            size = args.input_size or ARCH_INPUT[args.arch][0]
            layers = layers_from_arch(args.arch, size, args.sparsity, block, args.tile, gen)
            source = (f"{args.arch} at {size}x{size}, random masks: sparsity {args.sparsity:g}, "
                      f"block {args.block}, F({args.tile},3)")
        elif args.model:
            layers, note = layers_from_model(args.model, args.input_size or 224, block, args.tile)
            source = f"{args.model}: {note}"
        else:
            layers = layers_from_shapes(_shapes(args.shapes), args.sparsity, block, args.tile, gen)
            source = (f"{len(layers)} layer shapes, random masks: sparsity {args.sparsity:g}, "
                      f"block {args.block}, F({args.tile},3)")
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"tritonwino tune: {e}") from None
    if not layers:
        raise SystemExit("tritonwino tune: no layer to tune")
    print(f"layers: {source}")
    for L in layers:
        print(f"  {L.name:<28} C={L.c:<4} K={L.k:<4} {L.h}x{L.w}  F({L.m},{L.r}) block {L.packed.block[0]}x"
              f"{L.packed.block[1]}  kept channel slots {L.packed.density:.1%}")

    cache = tuning.get_cache()
    dev_kind = "cuda" if cuda else "cpu"
    if cuda or interp:
        jobs = triton_jobs(layers, args.batch, dtype, args.allow_tf32)
        where = (f"GPU {tuning.device_name()}" if cuda else
                 "the Triton interpreter: a machinery check with two tiny configs, meaningless timings")
    else:
        jobs = cpu_jobs(layers, args.batch, dtype)
        where = "CPU"
        print("\nno CUDA GPU: nothing to tune for the Triton kernels on this machine (without a GPU they run "
              "only under the interpreter, with one fixed config). Timing the CPU paths per layer instead "
              f"(F.conv2d vs dense vs sparse Winograd, torch, {torch.get_num_threads()} threads, interleaved) "
              "as a report (--out writes its rows; layers measure their own dispatch on first use).")
    print(f"\ntuning cache: {cache.path}")

    if args.dry_run:
        total = sum(j.candidates for j in jobs)
        print(f"\ndry run: {len(jobs)} keys on {where}, {total} candidate timings in all "
              f"(batches {' '.join(map(str, args.batch))}, dtype {str(dtype).removeprefix('torch.')})")
        plan = []
        for j in jobs:
            cached = j.kernel != CPU_DISPATCH_KERNEL and cache.get_entry(j.kernel, j.key) is not None
            print(f"  {j.kernel:<22} N={j.batch:<3} {j.candidates:>3} candidates  {'cached ' if cached else ''}"
                  f"{j.key}  <- {', '.join(j.layers)}")
            plan.append({"kernel": j.kernel, "key": j.key, "N": j.batch, "layers": " ".join(j.layers),
                         "candidates": j.candidates, "cached": cached})
        if not cuda:
            gpu = triton_jobs(layers, args.batch, torch.float16, args.allow_tf32)
            print(f"(on a CUDA GPU, float16: {len(gpu)} Triton keys, {sum(j.candidates for j in gpu)} "
                  "candidate configs to time)")
        if args.out:
            csv_path, _ = write_rows(plan, args.out, f"plan_{dev_kind}")
            print(f"wrote {csv_path}")
        return 0

    env = environment("cuda" if cuda else "cpu")
    rows = []
    candidates_fn = _interpreter_candidates if interp else None
    bar = tqdm(jobs, desc=f"tuning on {where.split(' (')[0]}", unit="key", file=sys.stderr)
    for job in bar:
        bar.set_postfix_str(f"{job.kernel} {job.layer.name} N={job.batch}", refresh=False)
        if cuda or interp:
            row = tune_triton_job(job, torch.device("cuda" if cuda else "cpu"), dtype, args.allow_tf32,
                                  args.force, candidates_fn)
        else:
            row = time_cpu_job(job, dtype, args.reps)
        rows.append({**row, **env})
    bar.close()

    print(f"\nwinners ({where}):")
    for r in rows:
        if r["kernel"] == CPU_DISPATCH_KERNEL:
            detail = (f"best {r['winner']:<6} | conv2d {_fmt_ms(r['conv2d_ms'])} ms, "
                      f"dense {_fmt_ms(r['dense_ms'])} ms, sparse {_fmt_ms(r['sparse_ms'])} ms")
        else:
            detail = f"{r['winner']}  {_fmt_ms(r['best_ms'])} ms  [{r['status']}]"
        print(f"  {r['kernel']:<22} N={r['N']:<3} {r['layers']:<28} {detail}  ({r['tune_s']:.2f} s)")
    print(f"{len(rows)} keys in {time.perf_counter() - t_start:.1f} s; cache {cache.path} now holds "
          f"{', '.join(f'{k}: {v}' for k, v in cache.summary().items()) or 'nothing'}")
    if args.out:
        csv_path, json_path = write_rows(rows, args.out, f"tune_{dev_kind}")
        print(f"wrote {csv_path} and {json_path}")
    if args.model and not interp:
        _tune_model_dispatch(args, dtype)
    return 0


def _tune_model_dispatch(args: argparse.Namespace, dtype: torch.dtype) -> None:
    """For a saved converted model, also measure what each ``backend="auto"`` layer will run
    (``tritonwino.dispatch``) at every batch size, so its first forward reads the cache."""
    model = load_model(args.model).eval()
    if not any(isinstance(mod, SparseWinogradConv2d) and mod.backend == "auto" for mod in model.modules()):
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device=device, dtype=dtype)
    size = args.input_size or 224
    for nb in args.batch:
        x = torch.randn(nb, first_in_channels(model), size, size, device=device, dtype=dtype)
        print(f"\nper-layer dispatch at batch {nb} (stored in the cache for backend='auto' layers):")
        print(tune_model(model, x))



