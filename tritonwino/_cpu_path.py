"""The ``"cpu"`` backend: a fused C++ Winograd convolution (sparse and dense, fp32), built at first use.

``tritonwino/csrc/winograd_cpu.cpp`` does the three stages per block of tiles with nothing but the
block's transformed input in memory (its header comment has the design). This module generates the
constant-folded 1-D transforms of one F(m, r) point set, compiles the source with the system C++
compiler (``$CXX``, else ``g++`` / ``c++`` / ``clang++``; ``-O3 -march=native -fopenmp``) into a
shared library, caches it on disk, and calls it through ``ctypes`` (which releases the GIL). No torch
headers are compiled, so a build takes seconds; OpenMP is the libgomp torch itself loaded, so
``torch.set_num_threads`` sets the thread count here too.

Build cache: ``$TRITONWINO_CPU_BUILD_DIR``, else ``$TORCH_EXTENSIONS_DIR/tritonwino``, else
``$XDG_CACHE_HOME/tritonwino/cpu-kernels`` (``~/.cache/...``). A library's file name hashes the
source, the compiler, the flags and the CPU's feature flags, so one cache can serve several machines.
``TRITONWINO_CPU_KERNELS=0`` turns the backend off (``backend="auto"`` then runs the torch path).

Inference only, float32 only (the transforms and the accumulation are fp32, like the torch path for
fp32 inputs); the functional forms route anything else to the torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import struct
import subprocess
import tempfile
import threading
import warnings
import weakref
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import torch
from torch.utils import _python_dispatch

from . import _checks, reference
from .packing import PackedWinogradWeight
from .transforms import normalize_points, tile_size, winograd_matrices_exact

__all__ = [
    "CPU_DTYPES",
    "available",
    "build_dir",
    "check_cpu_dtype",
    "eager_direct",
    "library_path",
    "runs",
    "sparse_winograd_conv2d",
    "unavailable_reason",
    "winograd_conv2d",
]

CPU_DTYPES = (torch.float32,)
ENV_SWITCH = "TRITONWINO_CPU_KERNELS"
ENV_BUILD_DIR = "TRITONWINO_CPU_BUILD_DIR"
SOURCE = Path(__file__).with_name("csrc") / "winograd_cpu.cpp"
# Group sizes the kernel is instantiated for (packing.SUPPORTED_GROUP_K); the dense path packs by 16.
KERNEL_GROUP_K = (16, 32, 64)
DENSE_GROUP_K = 16
# Flag sets tried in order: a compiler without OpenMP or -march=native still gets a (slower) build.
# -O2, not -O3: the same speed measured, and -O3 took 40 s of compile time instead of 3.
_FLAG_SETS = (
    ["-O2", "-march=native", "-fopenmp"],
    ["-O2", "-fopenmp"],
    ["-O2", "-march=native"],
    ["-O2"],
)
_COMMON_FLAGS = ["-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-Wall"]

_lock = threading.Lock()
_libraries: dict[tuple, object] = {}  # (m, r, points) -> ctypes function, or the Exception of a failed build
_availability: list[str | None] = []  # [] unknown; [None] available; [reason] not


# --------------------------------------------------------------------------------------------
# code generation
# --------------------------------------------------------------------------------------------
def _float_literal(v: Fraction) -> str:
    # the float32 nearest the exact value (through float64), printed so that it reads back exactly
    f32 = struct.unpack("f", struct.pack("f", float(v)))[0]
    return f"{f32:.9e}f"


def _linear_form(row: Sequence[Fraction], src: str) -> str:
    """``sum_j row[j] * src[j]`` with zeros dropped and +-1 folded (what makes the transforms cheap)."""
    out = ""
    for j, c in enumerate(row):
        if c == 0:
            continue
        neg, mag = c < 0, abs(c)
        term = f"{src}[{j}]" if mag == 1 else f"{src}[{j}] * {_float_literal(mag)}"
        if not out:
            out = f"-{term}" if neg else term
        else:
            out += f" - {term}" if neg else f" + {term}"
    return out or "VF{}"


def generated_header(m: int, r: int, points: Sequence[Fraction]) -> str:
    """The TW_GENERATED block of the source for F(m, r) with ``points``: sizes and 1-D transforms."""
    at, _, bt = winograd_matrices_exact(m, r, points)
    n = tile_size(m, r)
    lines = [f"constexpr int M = {m}, R = {r}, N = {n};",
             f"// points: {', '.join(str(p) for p in points)} (and infinity)",
             "// o = B^T d (one column or row of a tile)",
             "inline void bt_1d(const VF* d, VF* o) {"]
    lines += [f"  o[{i}] = {_linear_form(bt[i], 'd')};" for i in range(n)]
    lines += ["}", "// o = A^T d", "inline void at_1d(const VF* d, VF* o) {"]
    lines += [f"  o[{u}] = {_linear_form(at[u], 'd')};" for u in range(m)]
    lines += ["}"]
    return "\n".join(lines)


def source(m: int, r: int, points: Sequence[Fraction]) -> str:
    """The complete C++ source for one F(m, r) point set."""
    text = SOURCE.read_text()
    return text.replace("@@GENERATED@@", generated_header(m, r, points))


# --------------------------------------------------------------------------------------------
# building and loading
# --------------------------------------------------------------------------------------------
def build_dir() -> Path:
    """Where compiled libraries are cached (module docstring)."""
    env = os.environ.get(ENV_BUILD_DIR)
    if env:
        return Path(env).expanduser()
    ext = os.environ.get("TORCH_EXTENSIONS_DIR")
    if ext:
        return Path(ext).expanduser() / "tritonwino"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tritonwino" / "cpu-kernels"


def _compiler() -> str | None:
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx) or (cxx if os.path.exists(cxx) else None)
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's feature flags (and model)."""
    out = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features", "model name"):
                    out.append(line.strip())
                if len(out) >= 5:
                    break
    except OSError:
        pass
    return "\n".join(out)


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _compile(cxx: str, src_path: Path, out_path: Path) -> tuple[list[str], str]:
    """Try the flag sets in order; return the flags that worked and the last error text."""
    err = ""
    for flags in _FLAG_SETS:
        cmd = [cxx, *flags, *_COMMON_FLAGS, str(src_path), "-o", str(out_path)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            err = f"{' '.join(cmd)}: {e}"
            continue
        if res.returncode == 0:
            return flags, ""
        err = f"{' '.join(cmd)}\n{res.stderr[-2000:]}"
    raise RuntimeError(f"compiling the tritonwino CPU kernel failed:\n{err}")


def library_path(m: int, r: int, points: Sequence[Fraction]) -> Path:
    """Build (or find in the cache) the library for F(m, r) with ``points``; returns its path."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set $CXX, or install g++ or clang++)")
    text = source(m, r, points)
    key = hashlib.sha256("\n".join([text, cxx, _compiler_version(cxx), repr(_FLAG_SETS), repr(_COMMON_FLAGS),
                                    _cpu_identity()]).encode()).hexdigest()[:20]
    out_dir = build_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"tritonwino_cpu_F{m}x{r}_{key}.so"
    if lib.exists():
        return lib
    with _file_lock(out_dir / f"{lib.name}.lock"):
        if lib.exists():  # another process built it while we waited
            return lib
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            src = Path(tmp) / f"{lib.stem}.cpp"
            src.write_text(text)
            tmp_lib = Path(tmp) / lib.name
            _compile(cxx, src, tmp_lib)
            os.replace(tmp_lib, lib)  # atomic: readers see the whole file or none
    return lib


class _file_lock:
    """An exclusive lock file across processes (no-op where fcntl does not exist)."""

    def __init__(self, path: Path):
        self.path, self.fh = path, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fh = open(self.path, "a")  # noqa: SIM115 (held until __exit__)
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
        return False


_ARGTYPES = ([ctypes.c_void_p] + [ctypes.c_int64] * 10 + [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2
             + [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p] + [ctypes.c_int64] * 6 + [ctypes.c_int])


def _kernel(m: int, r: int, points: tuple[Fraction, ...]):
    """The ctypes entry point for one config (built once per process; a failure is remembered)."""
    key = (m, r, points)
    hit = _libraries.get(key)  # the steady state: no lock
    if hit is not None and not isinstance(hit, Exception):
        return hit
    with _lock:
        hit = _libraries.get(key)
        if hit is None:
            try:
                dll = ctypes.CDLL(str(library_path(m, r, points)))
                fn = dll.tw_conv_f32
                fn.argtypes = _ARGTYPES
                fn.restype = ctypes.c_int
                if (dll.tw_tile_m(), dll.tw_tile_r()) != (m, r):
                    raise RuntimeError("the cached CPU kernel library does not match its name")
                hit = fn
            except Exception as e:  # noqa: BLE001 (remembered and re-raised with context below)
                hit = e
            _libraries[key] = hit
    if isinstance(hit, Exception):
        raise RuntimeError(f"the tritonwino CPU kernel for F({m},{r}) is unavailable: {hit}") from hit
    return hit


def unavailable_reason() -> str | None:
    """Why the ``"cpu"`` backend cannot run here (None when it can). The first call builds the
    default F(4,3) library (seconds; cached on disk for later processes)."""
    if _availability:  # settled: a plain read (no lock), which torch.compile can trace
        return _availability[0]
    reason = None
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "off", "no"):
        reason = f"turned off by {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    elif _compiler() is None:
        reason = "no C++ compiler found (set $CXX, or install g++ or clang++)"
    else:
        try:
            _kernel(4, 3, normalize_points(4, 3))
        except RuntimeError as e:
            reason = str(e)
    with _lock:
        if not _availability:
            _availability.append(reason)
            if reason is not None and not reason.startswith("turned off"):
                warnings.warn(f"tritonwino: the fast CPU kernels are unavailable ({reason}); CPU tensors run the "
                              "slower pure-torch path", RuntimeWarning, stacklevel=3)
        return _availability[0]


def available() -> bool:
    """True when the ``"cpu"`` backend can run (see :func:`unavailable_reason`)."""
    return unavailable_reason() is None


def runs(x: torch.Tensor) -> bool:
    """Whether ``backend="auto"`` should run ``x`` here: a float32 CPU tensor, and the kernels build.

    While torch.compile traces, nothing is built (the op builds when it first runs, and falls back
    to the torch path itself if that fails): only an already failed probe says no."""
    if x.device.type != "cpu" or x.dtype not in CPU_DTYPES:
        return False
    if torch.compiler.is_compiling():
        return not (_availability and _availability[0] is not None)
    return available()


def eager_direct(x: torch.Tensor) -> bool:
    """Whether a call with input ``x`` may skip the ``tritonwino::`` op and run the kernel directly:
    eager (not traced by torch.compile), a plain tensor, no profiler running, and no
    ``__torch_function__`` / ``__torch_dispatch__`` mode that should see the op node."""
    if torch.compiler.is_compiling() or type(x) is not torch.Tensor:
        return False
    profiling = getattr(torch.autograd, "_profiler_enabled", None)
    if profiling is None or profiling():
        return False
    if torch.overrides.has_torch_function((x,)):
        return False
    in_mode = getattr(_python_dispatch, "is_in_torch_dispatch_mode", None)
    return in_mode is not None and not in_mode()


def check_cpu_dtype(dtype: torch.dtype) -> None:
    if dtype not in CPU_DTYPES:
        raise TypeError(f"backend='cpu' supports float32 inputs, got {dtype}; use backend='torch' (or 'auto') "
                        "for float64, float16 and bfloat16")


# --------------------------------------------------------------------------------------------
# the calls
# --------------------------------------------------------------------------------------------
def _check_call(x: torch.Tensor, *tensors: torch.Tensor | None) -> None:
    if x.device.type != "cpu" or any(t is not None and t.device.type != "cpu" for t in tensors):
        raise ValueError("backend='cpu' runs CPU tensors only")
    check_cpu_dtype(x.dtype)


def _run(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, k: int, gk: int,
         dense: bool, bias: torch.Tensor | None, padding: tuple[int, int], m: int, r: int,
         points: tuple[Fraction, ...], relu: bool) -> torch.Tensor:
    fn = _kernel(m, r, points)
    nb, c, h, w = x.shape
    ho, wo = _checks.output_size(h, w, r, padding)
    y = _checks.empty_output(x, k, ho, wo)
    if y.numel() == 0:
        return y
    b = None if bias is None else bias.to(torch.float32).contiguous()
    rc = fn(x.data_ptr(), nb, c, h, w, *x.stride(), padding[0], padding[1], values.data_ptr(),
            indices.data_ptr(), offsets.data_ptr(), k, gk, int(dense), None if b is None else b.data_ptr(),
            int(relu), y.data_ptr(), *y.stride(), ho, wo, torch.get_num_threads())
    if rc == 1:
        raise MemoryError("the tritonwino CPU kernel could not allocate its scratch memory")
    if rc != 0:
        raise RuntimeError(f"the tritonwino CPU kernel refused the call (code {rc}; group size {gk})")
    return y


def sparse_winograd_conv2d(x: torch.Tensor, packed: PackedWinogradWeight, bias: torch.Tensor | None,
                           padding: tuple[int, int], relu: bool = False) -> torch.Tensor:
    """Sparse Winograd convolution with a validated ``PackedWinogradWeight`` (fp32 CPU tensors)."""
    _check_call(x, packed.values, bias)
    if not available():  # only reachable from a graph traced before the first build (see runs())
        return reference.sparse_winograd_conv2d(x, packed, bias, padding, relu)
    if packed.group_k not in KERNEL_GROUP_K:
        raise ValueError(f"backend='cpu' runs group sizes {KERNEL_GROUP_K}, got {packed.group_k}")
    values = packed.values_as(torch.float32).contiguous()
    indices = _int32_indices(packed)
    offsets = packed.offsets.contiguous()
    return _run(x, values, indices, offsets, packed.K, packed.group_k, False, bias, padding, packed.m, packed.r,
                _fractions(packed.points), relu)


def winograd_conv2d(x: torch.Tensor, q_pck: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int],
                    m: int, r: int, points: Sequence[object] | None = None, relu: bool = False) -> torch.Tensor:
    """Dense Winograd convolution from the position-major weight ``q_pck`` (P, C, K) (fp32 CPU tensors)."""
    _check_call(x, q_pck, bias)
    pts = normalize_points(m, r, points)
    if not available():  # only reachable from a graph traced before the first build (see runs())
        return reference.winograd_conv2d_pck(x, q_pck, bias, padding, m, r, pts, relu)
    values, offsets, k = _dense_slabs(q_pck)
    return _run(x, values, offsets, offsets, k, DENSE_GROUP_K, True, bias, padding, m, r, pts, relu)


@functools.lru_cache(maxsize=256)
def _fractions(points: tuple[str, ...]) -> tuple[Fraction, ...]:
    return tuple(Fraction(p) for p in points)


# Per-tensor caches, checked by identity and version counter (as packing's registry), so a freed
# tensor whose id is reused, or an in-place edit, never hits a stale entry.
_DERIVED: dict[tuple[str, int], tuple] = {}


def _cached(kind: str, t: torch.Tensor, build):
    key = (kind, id(t))
    entry = _DERIVED.get(key)
    if entry is not None and entry[0]() is t and entry[1] == t._version:
        return entry[2]
    value = build()
    ref = weakref.ref(t, lambda _r, key=key, reg=_DERIVED: reg.pop(key, None))
    _DERIVED[key] = (ref, t._version, value)
    return value


def _int32_indices(packed: PackedWinogradWeight) -> torch.Tensor:
    idx = packed.indices
    if idx.dtype == torch.int32 and idx.is_contiguous():
        return idx
    return _cached("idx32", idx, lambda: idx.to(torch.int32).contiguous())


@torch.inference_mode(False)
def _dense_slabs_build(q_pck: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    p, c, k = q_pck.shape
    gk = DENSE_GROUP_K
    g = -(-k // gk)
    qp = torch.zeros(p, c, g * gk, dtype=torch.float32)
    qp[:, :, :k] = q_pck.to(torch.float32)
    values = qp.reshape(p, c, g, gk).permute(0, 2, 1, 3).contiguous().reshape(p * g * c, gk)
    offsets = (torch.arange(p * g + 1, dtype=torch.int64) * c).to(torch.int32)
    return values, offsets, k


def _dense_slabs(q_pck: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The dense weight as the kernel's group slabs: values (P·G·C, 16), every channel kept."""
    if q_pck.dim() != 3:
        raise ValueError(f"q_pck must be (P, C, K), got shape {tuple(q_pck.shape)}")
    p, c, k = q_pck.shape
    if p * (-(-k // DENSE_GROUP_K)) * c >= 2**31:
        raise ValueError("backend='cpu': the dense weight has 2^31 or more slots; split the layer")
    return _cached("dense", q_pck, lambda: _dense_slabs_build(q_pck))
