"""Seeded RNGs for every test; kernel fixtures (torch imported only when a test asks).

NOTE: TRITON_INTERPRET must be set before triton is first imported, so it is set here, at
collection: kernels run in Triton's interpreter on the CPU unless TRITON_INTERPRET=0 (a GPU run).
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed_python_random():
    random.seed(1234)


@pytest.fixture
def device() -> str:
    return "cpu" if os.environ["TRITON_INTERPRET"] not in ("", "0") else "cuda"


@pytest.fixture
def gen():
    """A seeded torch generator; every test draws fresh inputs from it."""
    import torch

    return torch.Generator().manual_seed(20261123)
