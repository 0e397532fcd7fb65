"""tritonwino: sparse Winograd convolution for pruned CNNs (Triton kernels + the Python layer
around them). The public API is ``tritonwino.sparse_conv``; see the README."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("tritonwino")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.2.0.dev0"

__all__ = ["__version__"]
