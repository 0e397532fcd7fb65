"""Test set-up: run Triton kernels under the interpreter when there is no GPU.

TRITON_INTERPRET must be set before any @triton.jit function is defined, i.e. before
tritonwino.kernels is imported, which is why this happens at conftest import time.
"""

import os
import tempfile

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tritonwino-test-triton-cache"))
# Tests must never touch the user's real tuning cache.
os.environ.setdefault("TRITONWINO_CACHE_DIR", tempfile.mkdtemp(prefix="tritonwino-test-cache-"))
# The compiled CPU kernels (content-addressed, so sharing them across runs and workers is safe).
os.environ.setdefault("TRITONWINO_CPU_BUILD_DIR", os.path.join(tempfile.gettempdir(), "tritonwino-test-cpu-kernels"))

import pytest  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRETING:
    # The interpreter truncates fp32 -> bf16 where a GPU rounds to nearest even: verify what the GPU computes.
    from tritonwino.testing import interpreter_rounds_bf16_like_gpu  # noqa: E402

    interpreter_rounds_bf16_like_gpu()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_thread():
    # The suite runs on 2 xdist workers on 2 cores: more torch threads per worker only oversubscribe
    # (50x stalls measured on the shared machine).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def device():
    return DEVICE


def pytest_collection_modifyitems(config, items):
    # `cuda` tests need a GPU (bench/gpu_check.sh runs them); without one they are skipped, visibly.
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run by bench/gpu_check.sh)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
