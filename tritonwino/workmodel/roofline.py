"""Roofline model over counted work: modeled GPU time of a launch, and the dense direct-convolution
bound it is compared with. A model, not a measurement: it ranks designs, it does not time them.

Per launch: ``time = max(DRAM bytes / bandwidth, tensor-core MACs / TC peak, SIMT flops / FP32 peak)
+ launch cost``, where DRAM bytes are the launch's compulsory bytes (distinct addresses read plus
distinct addresses written). A path's time is the sum over its launches. The direct convolution gets
the same treatment with its own minimum work (X + W + Y bytes, every MAC on tensor cores, one launch),
so the comparison is bound against bound and flatters the dense convolution, never us.

Peaks are the vendors' published dense (non-2:4-sparse) figures for the SXM parts; a MAC is 2 flops.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .counter import LaunchCount

__all__ = ["GPUS", "GpuPeaks", "LAUNCH_US", "direct_conv_bound_us", "launch_time_us", "path_time_us"]

# Cost of one kernel launch between dependent kernels on a stream (gpu-performance.md §1). CUDA
# graphs shrink it; the model keeps it fixed so that fewer launches is visibly better.
LAUNCH_US = 2.5


@dataclass(frozen=True)
class GpuPeaks:
    """Published peak rates of one GPU (dense, no 2:4 sparsity)."""

    name: str
    dram_tb_s: float        # HBM bandwidth, TB/s
    fp16_tflops: float      # fp16/bf16 tensor-core, fp32 accumulate, TFLOP/s (2 flops per MAC)
    tf32_tflops: float      # tf32 tensor-core TFLOP/s
    fp32_tflops: float      # fp32 on CUDA cores (FMA = 2 flops), TFLOP/s
    source: str
    launch_us: float = LAUNCH_US

    def as_row(self) -> dict:
        return {f"peak_{k}": v for k, v in asdict(self).items() if k != "name"}

    def tc_macs_per_s(self, operand: str) -> float:
        tflops = self.tf32_tflops if operand.startswith("fp32") else self.fp16_tflops
        return tflops * 1e12 / 2


GPUS: dict[str, GpuPeaks] = {
    "A100": GpuPeaks("A100-SXM4-80GB", 2.039, 312.0, 156.0, 19.5,
                     "NVIDIA A100 datasheet (SXM4 80GB): 2,039 GB/s, FP16 TC 312 TF, TF32 156 TF, FP32 19.5 TF"),
    "H100": GpuPeaks("H100-SXM5-80GB", 3.35, 989.4, 494.7, 66.9,
                     "NVIDIA H100 datasheet (SXM): 3.35 TB/s, FP16 TC 989.4 TF, TF32 494.7 TF, FP32 66.9 TF"),
    "H200": GpuPeaks("H200-SXM-141GB", 4.8, 989.4, 494.7, 66.9,
                     "NVIDIA H200 datasheet (SXM): 4.8 TB/s, FP16 TC 989 TF, TF32 494 TF, FP32 67 TF"),
}


def launch_time_us(lc: LaunchCount, gpu: GpuPeaks) -> dict[str, float]:
    """The three roofline terms of one launch (µs), its bound (the largest) and its modeled time."""
    dram = lc.compulsory_bytes / (gpu.dram_tb_s * 1e12) * 1e6
    tc = sum(macs / gpu.tc_macs_per_s(op) for op, macs in lc.tc_macs.items()) * 1e6
    simt = lc.simt_flops / (gpu.fp32_tflops * 1e12) * 1e6
    terms = {"dram_us": dram, "tc_us": tc, "simt_us": simt}
    bound = max(terms, key=terms.__getitem__)
    return {**terms, "bound": bound.removesuffix("_us"), "time_us": terms[bound] + gpu.launch_us}


def path_time_us(launches: list[LaunchCount], gpu: GpuPeaks) -> float:
    """Modeled time of a sequence of launches (they run one after another)."""
    return sum(launch_time_us(lc, gpu)["time_us"] for lc in launches)


def direct_conv_bound_us(n: int, c: int, k: int, h: int, w: int, r: int, pad: int, elsize: int,
                         gpu: GpuPeaks) -> dict[str, float]:
    """The dense direct convolution's bound: X + W + Y bytes once, every MAC on tensor cores, one launch."""
    ho, wo = h + 2 * pad - r + 1, w + 2 * pad - r + 1
    nbytes = elsize * (n * c * h * w + k * c * r * r + n * k * ho * wo)
    macs = n * k * c * r * r * ho * wo
    dram = nbytes / (gpu.dram_tb_s * 1e12) * 1e6
    op = "fp32/tf32" if elsize == 4 else "fp16"
    tc = macs / gpu.tc_macs_per_s(op) * 1e6
    return {"bytes": nbytes, "macs": macs, "dram_us": dram, "tc_us": tc,
            "time_us": max(dram, tc) + gpu.launch_us}
