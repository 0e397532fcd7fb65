"""Persistent autotune cache for the Triton kernels.

One JSON file per (device name, Triton version) holds the winning launch config of every
kernel for every tuning key, with the timings of all configs tried::

    $TRITONWINO_CACHE_DIR/tune-<device slug>-triton<version>.json
    (default directory: $XDG_CACHE_HOME/tritonwino, else ~/.cache/tritonwino)

The file content records the schema version, device name and Triton/torch versions; a file whose
content does not match (bad JSON, other schema, other device or Triton version) is ignored with a
warning and rebuilt on the next write. Writes are atomic (temporary file in the same directory +
``os.replace``) and every read-modify-write holds an exclusive ``fcntl.flock`` on a lock file
next to the cache and re-reads the file under the lock, so concurrent processes merge their
entries instead of losing them.

The cache is an optimisation, never a reason to fail: a path that is not a directory, a directory
that cannot be traversed, a FIFO or other non-regular file at the cache path, JSON nested too deep,
a file over ``MAX_FILE_BYTES``, a lock held for more than ``LOCK_TIMEOUT_S`` — each is ignored with
a ``RuntimeWarning`` (results are then kept in memory for this process). Nothing here blocks on a
FIFO: files are opened non-blocking and must be regular files. Temporary files left by a writer
that was killed between creating and renaming its temporary file are removed by the next writer.

Keys are strings built by :func:`make_key` from a (shape bucket, dtype, tile, block, sparsity
signature) description; :func:`shape_bucket` rounds sizes such as the batch size or the tile
count up to a power of two, so nearby shapes share one tuning result.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import env

try:  # POSIX only; elsewhere writes are still atomic but not serialized across processes.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 1
ENV_VAR = "TRITONWINO_CACHE_DIR"
# A tuning file holds a few hundred entries (~100 kB); anything far larger is not ours.
MAX_FILE_BYTES = 64 * 2**20
# Longest wait for another process's lock (a put takes milliseconds; a hung holder must not hang us).
LOCK_TIMEOUT_S = 10.0

__all__ = [
    "ENV_VAR",
    "SCHEMA_VERSION",
    "TuningCache",
    "cache_dir",
    "cache_path",
    "config_label",
    "device_name",
    "get_cache",
    "jsonable_config",
    "make_key",
    "norm_key",
    "shape_bucket",
]


# --------------------------------------------------------------------------------------------
# device, versions, paths
# --------------------------------------------------------------------------------------------

def device_name() -> str:
    """The name tuning results are keyed by.

    ``torch.cuda.get_device_name()`` when a GPU is visible, else ``"cpu-interpreter"`` when
    the Triton interpreter is on (kernels run under it) or ``"cpu"``.
    """
    if env.cuda_available():
        return torch.cuda.get_device_name()
    return "cpu-interpreter" if env.interpreting() else "cpu"


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", text.strip()).strip("-").lower()
    return slug or "unknown"


def cache_dir() -> Path:
    """Directory of the cache files: ``$TRITONWINO_CACHE_DIR`` if set, else
    ``$XDG_CACHE_HOME/tritonwino``, else ``~/.cache/tritonwino``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tritonwino"


def cache_path(device: str | None = None) -> Path:
    """Path of the cache file for ``device`` (default :func:`device_name`) and the installed
    Triton version, e.g. ``~/.cache/tritonwino/tune-nvidia-h100-80gb-hbm3-triton3.9.0.json``."""
    dev = device if device is not None else device_name()
    return cache_dir() / f"tune-{_slug(dev)}-triton{_slug(env.package_version('triton'))}.json"


# --------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------

def shape_bucket(n: int) -> int:
    """Round ``n`` up to the next power of two (1 for ``n <= 1``), so e.g. batch sizes 5..8 and
    tile counts 33..64 share one tuning result."""
    n = int(n)
    if n <= 1:
        return 1
    return 1 << (n - 1).bit_length()


def _key_value(v: Any) -> str:
    if isinstance(v, str):
        text = v
    elif isinstance(v, bool) or v is None:
        text = str(v).lower()
    elif isinstance(v, (tuple, list)):
        text = "x".join(_key_value(x) for x in v)
    elif isinstance(v, float):
        text = format(v, ".6g")
    elif type(v).__module__ == "torch" and type(v).__name__ == "dtype":
        text = str(v).removeprefix("torch.")
    else:
        text = str(v)
    # '|' and '=' structure the key; keep them out of values.
    return text.replace("|", "/").replace("=", ":")


def make_key(**parts: Any) -> str:
    """A stable string key from named parts, sorted by name, e.g.
    ``make_key(shape=(8, 64, 64), dtype=torch.float16, tile=(4, 3), block=(16, 1), sig="ab12")``
    -> ``"block=16x1|dtype=float16|shape=8x64x64|sig=ab12|tile=4x3"``.

    Sequences are joined with ``x``, torch dtypes lose their ``torch.`` prefix, floats use 6
    significant digits. Pass sizes through :func:`shape_bucket` before building the key.
    """
    if not parts:
        raise ValueError("make_key needs at least one named part")
    return "|".join(f"{name}={_key_value(parts[name])}" for name in sorted(parts))


def norm_key(key: tuple | str | dict) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, dict):
        return make_key(**key)
    if isinstance(key, (tuple, list)):
        return "|".join(_key_value(x) for x in key)
    raise TypeError(f"tuning key must be a str, tuple or dict, not {type(key).__name__}")


def config_label(config: dict) -> str:
    """Short stable label of a config dict, e.g. ``"BLOCK_C=32,BLOCK_T=64,num_warps=4"``."""
    return ",".join(f"{k}={config[k]}" for k in sorted(config))


def jsonable_config(config: dict) -> dict:
    if not isinstance(config, dict):
        raise TypeError(f"a config must be a dict, not {type(config).__name__}")
    out = json.loads(json.dumps(config))  # raises TypeError on non-JSON values
    return out


# --------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------

class TuningCache:
    """The tuning results of one device and Triton version, backed by one JSON file.

    Reads go to the file (re-parsed only when it changed), so results written by other processes
    are seen. ``put`` and ``clear`` lock, re-read, modify and atomically replace the file.
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str | None = None) -> None:
        self.device = device if device is not None else device_name()
        self.path = Path(path) if path is not None else cache_path(self.device)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.triton_version = env.package_version("triton")
        self._parsed: tuple[tuple[int, int, int], dict] | None = None  # ((ino, mtime, size), entries)
        self._warned: set[tuple[int, int, int]] = set()
        self._memory: dict[str, dict[str, dict]] = {}  # entries whose write to disk failed
        self._thread_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TuningCache(path={str(self.path)!r}, device={self.device!r})"

    # ---- reading ---------------------------------------------------------------------------
    def _validate(self, data: Any) -> str | None:
        """Why ``data`` is not a usable cache for this device/Triton version (None if it is)."""
        if not isinstance(data, dict):
            return "top level is not a JSON object"
        if data.get("schema") != SCHEMA_VERSION:
            return f"schema {data.get('schema')!r}, expected {SCHEMA_VERSION}"
        if data.get("triton") != self.triton_version:
            return f"written by triton {data.get('triton')!r}, this is triton {self.triton_version}"
        if data.get("device") != self.device:
            return f"written for device {data.get('device')!r}, this is {self.device!r}"
        entries = data.get("entries")
        if not isinstance(entries, dict) or not all(
            isinstance(v, dict) and all(_entry_ok(e) for e in v.values()) for v in entries.values()
        ):
            return "'entries' is malformed"
        return None

    def _warn_once(self, sig: tuple, problem: str) -> None:
        if sig not in self._warned:
            self._warned.add(sig)
            warnings.warn(
                f"tritonwino: ignoring tuning cache {self.path}: {problem}. "
                "It will be rebuilt on the next write.",
                RuntimeWarning,
                stacklevel=4,
            )

    def _read_text(self) -> str:
        """The file's text, opened without blocking (a FIFO at the path must not hang us) and only
        if it is a regular file of sane size (OSError otherwise)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if st.st_size > MAX_FILE_BYTES:
                raise OSError(errno.EFBIG, f"{st.st_size} bytes, more than {MAX_FILE_BYTES}")
            with os.fdopen(fd, "rb") as f:
                fd = -1
                return f.read(MAX_FILE_BYTES + 1).decode("utf-8")
        finally:
            if fd >= 0:
                os.close(fd)

    def _read(self) -> dict[str, dict[str, dict]]:
        """The entries in the file; {} (with a warning, once per file version) if the file is
        missing, unreadable, not a regular file, corrupt or foreign."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        except OSError as e:  # NotADirectoryError, PermissionError, ELOOP, name too long ...
            self._parsed = None
            self._warn_once(("stat", e.errno, str(self.path)), f"cannot be read ({e})")
            return {}
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._parsed is not None and self._parsed[0] == sig:
            return self._parsed[1]
        problem = None
        entries: dict = {}
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        else:
            try:
                data = json.loads(self._read_text())
            except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
                problem = f"not valid JSON ({e})"
            except RecursionError:
                problem = "not valid JSON (nested too deeply)"
            else:
                problem = self._validate(data)
                if problem is None:
                    entries = data["entries"]
        if problem is not None:
            self._warn_once(sig, problem)
        self._parsed = (sig, entries)
        return entries

    def _merged(self) -> dict[str, dict[str, dict]]:
        entries = {k: dict(v) for k, v in self._read().items()}
        for kernel, per_key in self._memory.items():
            entries.setdefault(kernel, {}).update(per_key)
        return entries

    def get_entry(self, kernel: str, key: tuple | str | dict) -> dict | None:
        """The full stored entry ``{"config", "timings", "errors", "time"}`` or None."""
        return self._merged().get(kernel, {}).get(norm_key(key))

    def get(self, kernel: str, key: tuple | str | dict) -> dict | None:
        """The cached winning config of ``kernel`` for ``key``, or None."""
        entry = self.get_entry(kernel, key)
        return dict(entry["config"]) if entry is not None else None

    def entries(self) -> dict[str, dict[str, dict]]:
        """All entries: ``{kernel: {key: {"config": ..., "timings": ..., ...}}}``."""
        return self._merged()

    def summary(self) -> dict[str, int]:
        """Number of cached keys per kernel."""
        return {kernel: len(per_key) for kernel, per_key in sorted(self._merged().items())}

    def __len__(self) -> int:
        return sum(self.summary().values())

    # ---- writing ---------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if fcntl is None:  # pragma: no cover
                self._parsed = None
                yield
                return
            # O_RDWR | O_NONBLOCK: opening a FIFO planted at the lock path must not block either.
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, f"lock file {self.lock_path} is not a regular file")
                deadline = time.monotonic() + LOCK_TIMEOUT_S
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise OSError(errno.ETIMEDOUT, f"lock {self.lock_path} held by another process "
                                          f"for more than {LOCK_TIMEOUT_S:g} s") from None
                        time.sleep(0.01)
                self._parsed = None  # always re-read under the lock
                try:
                    self._remove_orphans()
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _temp_prefix(self) -> str:
        return f".{self.path.name}."

    def _remove_orphans(self) -> None:
        """Delete temporary files of writers killed before their rename. Called under the lock, and
        writers only create temporaries under it, so every one found here is an orphan."""
        prefix = self._temp_prefix()
        try:
            names = os.listdir(self.path.parent)
        except OSError:
            return
        for name in names:
            if name.startswith(prefix) and name.endswith(".tmp"):
                try:
                    os.unlink(self.path.parent / name)
                except OSError:
                    pass

    def _write(self, entries: dict[str, dict[str, dict]]) -> None:
        data = {
            "schema": SCHEMA_VERSION,
            "device": self.device,
            "triton": self.triton_version,
            "torch": torch.__version__,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "entries": entries,
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self._temp_prefix(), suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self._parsed = None

    def put(self, kernel: str, key: tuple | str | dict, config: dict,
            timings: dict | None = None, *, errors: dict | None = None) -> None:
        """Store ``config`` as the winner of ``kernel`` for ``key`` (with the timings in ms of
        every config tried, and the error of every config that failed), merging with whatever
        other processes wrote meanwhile. If the file cannot be written, warn and keep the entry
        for this process only."""
        entry = {
            "config": jsonable_config(config),
            "timings": {str(k): v for k, v in (timings or {}).items()},
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if errors:
            entry["errors"] = {str(k): str(v) for k, v in errors.items()}
        nkey = norm_key(key)
        try:
            with self._locked():
                entries = {k: dict(v) for k, v in self._read().items()}
                entries.setdefault(kernel, {})[nkey] = entry
                self._write(entries)
        except (OSError, RecursionError) as e:
            warnings.warn(f"tritonwino: could not write tuning cache {self.path}: {e}; "
                          "keeping the result in memory for this process only.", RuntimeWarning,
                          stacklevel=2)
            self._memory.setdefault(kernel, {})[nkey] = entry
        else:
            self._memory.get(kernel, {}).pop(nkey, None)

    def clear(self, kernel: str | None = None) -> None:
        """Remove every entry (or only those of ``kernel``)."""
        if kernel is None:
            self._memory.clear()
        else:
            self._memory.pop(kernel, None)
        try:
            if not os.path.lexists(self.path) and not os.path.isdir(self.path.parent):
                return
            with self._locked():
                entries = {k: dict(v) for k, v in self._read().items()}
                if kernel is None:
                    entries = {}
                else:
                    entries.pop(kernel, None)
                self._write(entries)
        except OSError as e:
            warnings.warn(f"tritonwino: could not clear tuning cache {self.path}: {e}", RuntimeWarning,
                          stacklevel=2)


def _entry_ok(e: object) -> bool:
    if not isinstance(e, dict) or not isinstance(e.get("config"), dict):
        return False
    timings = e.get("timings", {})
    return isinstance(timings, dict) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in timings.values())


_CACHES: dict[Path, TuningCache] = {}


def get_cache() -> TuningCache:
    """The process-wide cache for this device and Triton version (re-resolved on every call, so
    a changed ``$TRITONWINO_CACHE_DIR`` takes effect)."""
    try:
        path = cache_path()
    except (RuntimeError, KeyError, OSError) as e:  # no home directory to be found
        path = Path(tempfile.gettempdir()) / "tritonwino" / "tune-unknown.json"
        warnings.warn(f"tritonwino: no tuning cache directory ({e}); using {path}", RuntimeWarning, stacklevel=2)
    cache = _CACHES.get(path)
    if cache is None:
        cache = _CACHES[path] = TuningCache(path)
    return cache
