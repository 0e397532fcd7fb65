"""Tuning, one room: the persistent cache (``cache``), config selection (``select``) and the one
timer (``timer``). See docs/tuning.md."""

from .cache import (
    ENV_VAR,
    SCHEMA_VERSION,
    TuningCache,
    cache_dir,
    cache_path,
    config_label,
    device_name,
    get_cache,
    make_key,
    shape_bucket,
)
from .select import autotune, clear_memo, dense_config, sparse_config, sparse_path
from .timer import Timing, do_bench_ms, time_interleaved, time_ms

__all__ = [
    "ENV_VAR",
    "SCHEMA_VERSION",
    "Timing",
    "TuningCache",
    "autotune",
    "cache_dir",
    "cache_path",
    "clear_memo",
    "config_label",
    "dense_config",
    "device_name",
    "do_bench_ms",
    "get_cache",
    "make_key",
    "shape_bucket",
    "sparse_config",
    "sparse_path",
    "time_interleaved",
    "time_ms",
]
