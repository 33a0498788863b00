"""Seeded RNGs for every test."""

from __future__ import annotations

import random

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed_python_random():
    random.seed(1234)
