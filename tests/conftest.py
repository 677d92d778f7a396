"""Shared test set-up: the repository root on sys.path, quiet and single-threaded torch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
