"""Sliding windows: MONAI's inferer sized for a CPU, and one that computes only the windows a mask touches."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer


def sliding_window(roi_size, overlap: float = 0.25, batch_voxels: int = 1) -> SlidingWindowInferer:
    """MONAI's sliding window, with as many windows per forward pass as fit in ``batch_voxels`` (at least
    one). On a CPU, eight 32³ windows together cost about half as much per window as one at a time (the
    per-call overhead of a small conv is shared), while 64³ windows run fastest one at a time; GroupNorm
    never mixes samples, so the stitched output is the same either way."""
    return SlidingWindowInferer(roi_size=roi_size, sw_batch_size=max(1, batch_voxels // math.prod(roi_size)),
                                overlap=overlap)


class OrganWindows:
    """Sliding-window inference that runs the network only on windows touching ``organ``.

    MONAI's :class:`~monai.inferers.SlidingWindowInferer` cuts a ``condition`` tensor into the same windows
    as the input; the organ mask rides along as that condition, and a window without organ voxels is
    answered with zero logits instead of a forward pass. A voxel is covered only by windows that contain
    it, so organ voxels are stitched from computed windows alone and equal the full pass exactly.

    Args:
        inferer: the sliding-window inferer whose grid is kept (the app's ``task_inferer``).
        organ: boolean ``[*S]`` mask of the input's spatial size, or ``None`` to compute every window.
        batch_size: windows per forward pass (default: ``inferer``'s ``sw_batch_size``). An inferer that
            hands over several batches' worth at a time lets the windows that touch the organ fill whole
            batches, which run faster per window than ragged ones.
    """

    def __init__(self, inferer: SlidingWindowInferer, organ: np.ndarray | torch.Tensor | None,
                 batch_size: int | None = None):
        self.inferer = inferer
        self.organ = None if organ is None else torch.as_tensor(np.asarray(organ, dtype=bool))
        self.batch_size = batch_size or inferer.sw_batch_size
        self.computed = self.skipped = 0

    def __call__(self, inputs: torch.Tensor, network) -> torch.Tensor:
        """``inputs [1, C, *S]`` -> the network's stitched output, computed in organ windows only."""
        self.computed = self.skipped = 0
        if self.organ is None:
            return self.inferer(inputs, network)
        if self.organ.shape != inputs.shape[2:]:
            raise ValueError(f"organ mask {tuple(self.organ.shape)} does not match the input {tuple(inputs.shape[2:])}")
        channels = None

        def predictor(windows: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
            """``windows [N, C, *w]`` (the inferer's ``sw_batch_size`` of them): only those with organ voxels
            run; the very first window always runs, since it tells the output's channels."""
            nonlocal channels
            touches = condition.flatten(1).any(1)
            if channels is None:
                touches[0] = True
            self.computed += int(touches.sum())
            self.skipped += int((~touches).sum())
            rows = touches.nonzero()[:, 0]
            computed = [network(windows[rows[i:i + self.batch_size]]) for i in range(0, len(rows), self.batch_size)]
            if computed:
                channels = computed[0].shape[1]
            out = windows.new_zeros((windows.shape[0], channels, *windows.shape[2:]))
            if computed:
                out[rows] = torch.cat(computed).to(out.dtype)
            return out

        condition = self.organ.to(inputs.device, inputs.dtype).expand_as(inputs)  # MONAI wants the input's shape
        return self.inferer(inputs, predictor, condition=condition)

    def count(self, inputs: torch.Tensor) -> tuple[int, int]:
        """``(computed, total)`` windows for ``inputs``, found without running a network."""
        self(inputs, lambda window: window[:, :1] * 0)
        return self.computed, self.computed + self.skipped
