"""Calibration tests run the kernels in Triton's interpreter on the CPU (TRITON_INTERPRET=1).

NOTE: TRITON_INTERPRET must be set before triton is imported, hence at collection time here.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

if os.environ.get("CI"):
    import torch  # noqa: E402,F401  (in CI a missing kernels extra must fail, not skip)
    import triton  # noqa: E402,F401
else:
    torch = pytest.importorskip("torch", reason="kernels need the 'kernels' extra")
    pytest.importorskip("triton", reason="kernels need the 'kernels' extra")


@pytest.fixture
def device() -> str:
    return "cpu" if os.environ["TRITON_INTERPRET"] not in ("", "0") else "cuda"


@pytest.fixture
def gen():
    """A seeded generator; every test draws fresh inputs from it."""
    return torch.Generator().manual_seed(20261123)
