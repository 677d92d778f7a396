"""Volumes that are not abdominal CTs, for the out-of-distribution check (``apps/slpt/ood.py``).

Each is ``(hu [X, Y, Z] float32, affine [4, 4])`` in RAS+ millimetres, like a phantom, and fully determined
by ``seed``.
"""

from __future__ import annotations

import numpy as np


def _grid(shape, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * spacing for n in shape]
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * spacing for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij")), affine


def head(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoidal head: skull shell (bone), brain (soft tissue) with ventricles, air around."""
    rng = np.random.default_rng(seed)
    (x, y, z), affine = _grid((100, 110, 90), 2.0)
    r = np.sqrt((x / 75) ** 2 + (y / 95) ** 2 + (z / 80) ** 2)
    hu = np.full(r.shape, -1000.0, np.float32)
    hu[r < 1.0] = 1200.0
    hu[r < 0.93] = 35.0
    hu[(np.abs(x) < 12) & (np.abs(y) < 30) & (np.abs(z) < 15)] = 8.0  # ventricles
    return hu + rng.normal(0, 15, r.shape).astype(np.float32), affine


def chest(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A chest without abdomen: body wall, two lungs, heart, vertebral body."""
    rng = np.random.default_rng(seed)
    (x, y, z), affine = _grid((140, 100, 80), 2.5)
    hu = np.full(x.shape, -1000.0, np.float32)
    body = np.sqrt((x / 165) ** 2 + (y / 115) ** 2)
    hu[body < 1.0] = -80.0
    hu[body < 0.9] = 40.0
    for side in (-1, 1):
        hu[((x - side * 70) / 55) ** 2 + ((y + 5) / 70) ** 2 + (z / 140) ** 2 < 1] = -850.0
    hu[((x + 15) / 50) ** 2 + ((y - 30) / 45) ** 2 + ((z + 20) / 55) ** 2 < 1] = 45.0
    hu[x ** 2 + ((y + 78) / 0.85) ** 2 < 400] = 700.0
    return hu + rng.normal(0, 15, x.shape).astype(np.float32), affine


def noise(seed: int = 0, low: float = -1000.0, high: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform noise over the CT range."""
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, (100, 100, 80)).astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])


def soft_tissue_noise(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise around soft-tissue values (the liver's window)."""
    rng = np.random.default_rng(seed)
    return rng.normal(50, 60, (100, 100, 80)).astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])


def constant(seed: int = 0, value: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """A near-constant volume (a water phantom, a blank series) with a little noise."""
    rng = np.random.default_rng(seed)
    return (value + rng.normal(0, 3, (100, 100, 80))).astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])


VOLUMES = {
    "head": head,
    "chest": chest,
    "noise": noise,
    "soft_tissue_noise": soft_tissue_noise,
    "constant_water": constant,
    "constant_air": lambda seed=0: constant(seed, -1000.0),
}
