"""Kernel tests need the kernels extra (torch, triton).

In CI a missing extra fails the run; elsewhere these tests are skipped with that reason.
"""

import os

import pytest

if os.environ.get("CI"):
    import torch  # noqa: F401
    import triton  # noqa: F401
else:
    pytest.importorskip("torch", reason="needs the 'kernels' extra")
    pytest.importorskip("triton", reason="needs the 'kernels' extra")
