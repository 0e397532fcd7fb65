"""Ahead-of-time compile gate: compile every kernel config for sm_80 and sm_90 without a GPU.

For every ``CompileSpec`` in ``tritonwino.kernels.registry`` (a kernel with one launch config) and
every architecture, the kernel is compiled with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", 80|90, 32))``; the resulting PTX is assembled by the ptxas shipped in the
triton wheel (``ptxas`` for sm_80, ``ptxas-blackwell`` for sm_90a) with ``-v``, and each
:class:`Row` records registers per thread, spill bytes, shared memory, whether tensor-core
instructions (mma.sync / wgmma) appear in the PTX, and the compile time. The command line is
``tritonwino compile-check`` (``tritonwino.cli.compile_check``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .tables import markdown_table

ARCHS: dict[str, int] = {"sm_80": 80, "sm_90": 90}
_TC_RE = re.compile(r"\b(wgmma|mma)\.")
_REGS_RE = re.compile(r"Used (\d+) registers")
_SPILL_RE = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_STACK_RE = re.compile(r"(\d+) bytes stack frame")

COLUMNS = ("kernel", "config", "arch", "regs", "spill_bytes", "stack", "smem", "warps_per_sm", "occupancy_limit",
           "tensor_cores", "status", "seconds")


@dataclass(frozen=True)
class SmLimits:
    """Per-SM resources that bound how many warps of a kernel are resident (CUDA occupancy rules)."""

    gpu: str
    regs: int = 65536            # 32-bit registers per SM
    max_warps: int = 64          # resident warps per SM
    max_blocks: int = 32         # resident thread blocks per SM
    smem: int = 0                # shared memory per SM usable by blocks (bytes)
    smem_reserved: int = 1024    # reserved by the system per block (sm_80 and later)
    reg_unit: int = 256          # registers are allocated per warp in units of 256


# A100 (sm_80): 164 KB of shared memory per SM; H100 (sm_90): 228 KB. CUDA C Programming Guide,
# "Technical Specifications per Compute Capability".
SM_LIMITS = {"sm_80": SmLimits("A100", smem=164 * 1024), "sm_90": SmLimits("H100", smem=228 * 1024)}


def occupancy(regs: int, smem: int, num_warps: int, limits: SmLimits) -> tuple[int, str]:
    """(resident warps per SM, what limits it: regs | smem | warps | blocks) of a kernel using
    ``regs`` registers per thread and ``smem`` bytes of shared memory per block of ``num_warps``."""
    per_warp = -(-max(regs, 1) * 32 // limits.reg_unit) * limits.reg_unit
    by = {
        "regs": (limits.regs // per_warp) // num_warps,
        "warps": limits.max_warps // num_warps,
        "blocks": limits.max_blocks,
    }
    if smem:
        by["smem"] = limits.smem // (smem + limits.smem_reserved)
    limit = min(by, key=by.__getitem__)
    return by[limit] * num_warps, limit


@dataclass
class Row:
    """The result of compiling one spec for one architecture."""

    kernel: str
    config: str
    arch: str
    regs: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None    # bytes of local-memory stack frame per thread
    smem: int | None = None
    warps_per_sm: int | None = None      # resident warps per SM (occupancy) on SM_LIMITS[arch]
    occupancy_limit: str | None = None   # the resource that bounds it
    tensor_cores: bool | None = None
    expects_mma: bool = False
    num_warps: int = 4
    num_stages: int = 2
    status: str = "ok"          # ok | FAIL | SPILL | NO-MMA
    error: str = ""
    seconds: float = 0.0

    @property
    def spill_bytes(self) -> int | None:
        if self.spill_stores is None:
            return None
        return self.spill_stores + (self.spill_loads or 0)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spill_bytes"] = self.spill_bytes
        return d


def ptxas_path(cc: int) -> str:
    """The ptxas triton itself uses for compute capability ``cc`` (bundled in the wheel)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return str(get_ptxas(cc).path)
    except Exception:  # noqa: BLE001 - fall back to the wheel's bin folder
        import triton

        bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
        return str(bin_dir / ("ptxas" if cc < 90 else "ptxas-blackwell"))


def _sm_name(cc: int) -> str:
    try:
        from triton.backends.nvidia.compiler import sm_arch_from_capability

        return str(sm_arch_from_capability(cc))
    except Exception:  # noqa: BLE001
        return f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


def parse_ptxas_log(log: str) -> tuple[int | None, int | None, int | None]:
    """(registers, spill store bytes, spill load bytes) from ``ptxas -v`` output (max over the
    entry functions found)."""
    regs = [int(x) for x in _REGS_RE.findall(log)]
    spills = [(int(a), int(b)) for a, b in _SPILL_RE.findall(log)]
    return (max(regs) if regs else None,
            max(s for s, _ in spills) if spills else None,
            max(lo for _, lo in spills) if spills else None)


def has_tensor_core_instructions(ptx: str) -> bool:
    """Whether the PTX contains ``mma.sync`` / ``mma.*`` (sm_80) or ``wgmma.*`` (sm_90)."""
    return _TC_RE.search(ptx) is not None


def short_error(e: BaseException) -> str:
    """One line: the error type, its first line and its last line (Triton's CompilationError puts
    the source excerpt in between and the cause last)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = type(e).__name__
    if lines:
        text += f": {lines[0]}"
    if len(lines) > 1:
        text += f" ... {lines[-1]}"
    cause = e.__cause__
    if cause is not None and str(cause) not in text:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text[:500]


def compile_one(spec: Any, arch: str, save_dir: Path | None = None) -> Row:
    """Compile one spec for one arch (``"sm_80"``/``"sm_90"``) and run ptxas -v on its PTX."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cc = ARCHS[arch]
    row = Row(kernel=spec.kernel, config=spec.label or "-", arch=arch, expects_mma=spec.expects_mma,
              num_warps=spec.num_warps, num_stages=spec.num_stages)
    t0 = time.perf_counter()
    try:
        src = ASTSource(fn=spec.fn, signature=dict(spec.signature), constexprs=dict(spec.constexprs))
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                                  options={"num_warps": spec.num_warps, "num_stages": spec.num_stages,
                                           **({"maxnreg": spec.maxnreg} if spec.maxnreg else {})})
        ptx = compiled.asm["ptx"]
        row.smem = int(getattr(compiled.metadata, "shared", 0) or 0)
        row.tensor_cores = has_tensor_core_instructions(ptx)
        with tempfile.TemporaryDirectory(prefix="tritonwino-ptxas-") as d:
            ptx_file = Path(d) / "kernel.ptx"
            ptx_file.write_text(ptx)
            # the same flags triton's own make_cubin passes (with FP fusion on)
            proc = subprocess.run([ptxas_path(cc), "-lineinfo", "-v", "--regAllocOptLevel=2",
                                   f"--gpu-name={_sm_name(cc)}", str(ptx_file),
                                   "-o", str(Path(d) / "kernel.cubin")],
                                  capture_output=True, text=True, timeout=300)
        log = proc.stdout + proc.stderr
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            stem = _slug(f"{spec.kernel}-{row.config}-{arch}")
            (save_dir / f"{stem}.ptx").write_text(ptx)
            (save_dir / f"{stem}.ptxas.log").write_text(log)
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas exited {proc.returncode}: {log.strip()}")
        row.regs, row.spill_stores, row.spill_loads = parse_ptxas_log(log)
        stacks = [int(x) for x in _STACK_RE.findall(log)]
        row.stack = max(stacks) if stacks else None
        if row.regs is None:
            raise RuntimeError(f"could not parse ptxas -v output: {log.strip()[:200]}")
        row.warps_per_sm, row.occupancy_limit = occupancy(row.regs, row.smem or 0, spec.num_warps, SM_LIMITS[arch])
    except Exception as e:  # noqa: BLE001 - every failure becomes a FAIL row
        row.status = "FAIL"
        row.error = short_error(e)
    else:
        if row.spill_bytes:
            row.status = "SPILL"
        elif spec.expects_mma and not row.tensor_cores:
            row.status = "NO-MMA"
    row.seconds = round(time.perf_counter() - t0, 3)
    return row


# Specs for forked workers (JIT functions are not picklable; forked children inherit this list).
_FORK_SPECS: list[Any] = []


def _fork_worker(job: tuple[int, str, str | None]) -> Row:
    i, arch, save = job
    return compile_one(_FORK_SPECS[i], arch, Path(save) if save else None)


def check_specs(specs: Sequence[Any], archs: Iterable[str] = ("sm_80", "sm_90"), *, jobs: int = 1,
                progress: bool = False, save_dir: str | os.PathLike | None = None) -> list[Row]:
    """Compile every spec for every arch; one :class:`Row` per (spec, arch), in spec order.

    ``jobs > 1`` compiles in forked worker processes. ``save_dir`` keeps each PTX and ptxas log.
    """
    archs = list(archs)
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        raise ValueError(f"unknown arch {unknown}; choose from {sorted(ARCHS)}")
    jobs_list = [(i, a, str(save_dir) if save_dir else None) for i in range(len(specs)) for a in archs]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs_list), desc="compile-check", unit="compile", file=sys.stderr)
    rows: list[Row] = []
    try:
        if jobs > 1 and len(jobs_list) > 1 and sys.platform != "win32":
            import multiprocessing as mp

            _FORK_SPECS[:] = list(specs)
            try:
                with mp.get_context("fork").Pool(jobs) as pool:
                    for row in pool.imap(_fork_worker, jobs_list):
                        rows.append(row)
                        if bar is not None:
                            bar.update(1)
            finally:
                _FORK_SPECS.clear()
        else:
            for i, arch, save in jobs_list:
                rows.append(compile_one(specs[i], arch, Path(save) if save else None))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A markdown table with one line per row (columns: :data:`COLUMNS`)."""
    def cell(r: Row, c: str) -> object:
        v = {"spill_bytes": r.spill_bytes,
             "tensor_cores": None if r.tensor_cores is None else ("yes" if r.tensor_cores else "no"),
             "seconds": f"{r.seconds:.2f}"}.get(c, getattr(r, c, None))
        return "-" if v is None else v

    return markdown_table([{c: cell(r, c) for c in COLUMNS} for r in rows], COLUMNS)


def select_specs(specs: Sequence[Any], kernels: Sequence[str] | None = None,
                 limit: int | None = None) -> list[Any]:
    """Filter by kernel name and keep the first ``limit`` specs of each kernel."""
    out, seen = [], {}
    for s in specs:
        if kernels and s.kernel not in kernels:
            continue
        seen[s.kernel] = seen.get(s.kernel, 0) + 1
        if limit is None or seen[s.kernel] <= limit:
            out.append(s)
    return out
