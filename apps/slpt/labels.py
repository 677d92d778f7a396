"""The task's label map (the LiTS convention), defined once for the method, the app and the phantoms.

A tumour is carved out of the liver: every tumour voxel is also liver tissue, so "liver" in an
evaluation means ``label >= LIVER`` (the organ), and tumour means ``label == TUMOUR``.
"""

from __future__ import annotations

import numpy as np
import torch

BACKGROUND, LIVER, TUMOUR = 0, 1, 2
# Class names as MONAI Label serves them (``/info/`` and every label a viewer saves): "tumor", as LiTS spells it.
CLASSES: dict[str, int] = {"background": BACKGROUND, "liver": LIVER, "tumor": TUMOUR}
FOREGROUND: dict[str, int] = {name: value for name, value in CLASSES.items() if value != BACKGROUND}
NUM_CLASSES = len(CLASSES)


def organ(label: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Liver tissue, tumour included: ``[*S]`` label -> ``[*S]`` bool."""
    return label >= LIVER


def tumour(label: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """``[*S]`` label -> ``[*S]`` bool."""
    return label == TUMOUR
