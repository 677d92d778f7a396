"""Per-scan quantities TESLA ranks by: a frozen-backbone embedding and the prompt-based uncertainty.

Scoring is made cheaper than a full K-prompt pass in two ways:

* the **embedding** and the organ mask come from one prompt-free backbone pass over the whole scan (no
  sliding window), which never depends on the prompts;
* the **prompt-based uncertainty** is computed by the K-prompt model only in the sliding windows that touch
  the organ (:class:`OrganWindows`), on the very window grid that ``/infer/slpt`` uses. Lesions live in
  the liver and ``uncertainty.scan_uncertainty`` only looks at the predicted liver and tumour, so the
  skipped windows hold nothing it reads. Because the grid is the same, every organ voxel gets exactly the
  logits a full pass would give it: the backbone's GroupNorm normalises each window over its own extent,
  so a crop on another grid (a bounding-box crop, say) changes the predictions and
  with them the ranking.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from torch import nn

from apps.slpt.active.uncertainty import ensemble, scan_uncertainty
from apps.slpt.inference import channel_argmax, stitched_logits, task_label
from apps.slpt.model.precision import autocast
from apps.slpt.model.prompts import model_device


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    spatial = x.shape[2:]
    pad = [(-s) % multiple for s in spatial]
    # F.pad wants (last_lo, last_hi, ..., first_lo, first_hi)
    return F.pad(x, [v for p in reversed(pad) for v in (0, p)]), tuple(spatial)


@torch.no_grad()
def embed_scan(
    network: nn.Module,
    image: torch.Tensor,
    stage: str = "down_layers.3",
    organ_channel: int | None = 1,
    max_voxels: int = 96**3,
    multiple: int = 16,
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray | None]:
    """One prompt-free pass of the frozen backbone over the whole scan.

    Args:
        network: the frozen backbone (not prompted).
        image: ``[1, *S]`` in backbone space.
        stage: module whose output is pooled (the bottleneck).
        organ_channel: output channel of the organ of interest (liver), or ``None`` for none.
        max_voxels: larger scans are downsampled to this many voxels first (bounded memory and time). The
            embedding and the liver mask only steer which scans and windows are looked at, so a coarse pass
            will do; at full size it would cost most of an SLPT inference on a large CT.
        precision: ``auto``, ``bf16`` or ``fp32`` (:mod:`apps.slpt.model.precision`), as inference runs.

    Returns:
        ``(embedding [3 * C], organ mask [*S] bool or None)``: the bottleneck's mean and standard deviation
        inside the organ, and its mean over the whole scan.
    """
    x = image[None].float().to(model_device(network))
    factor = max(1.0, (x[0, 0].numel() / max_voxels) ** (1 / 3))
    if factor > 1.0:
        x = F.interpolate(x, scale_factor=1 / factor, mode="trilinear", align_corners=False)
    x, spatial = _pad_to_multiple(x, multiple)
    captured = {}
    modules = dict(network.named_modules())
    if stage not in modules or not stage:
        raise ValueError(f"unknown backbone stage {stage!r} for the scan embedding (e.g. 'down_layers.3')")
    handle = modules[stage].register_forward_hook(
        lambda m, i, o: captured.__setitem__("feature", o))
    try:
        network.eval()
        with autocast(precision, x.device):
            logits = network(x).float()
    finally:
        handle.remove()
    logits = logits[(..., *[slice(0, s) for s in spatial])]
    feature = captured["feature"][0].float()  # [C, *s]
    organ = None
    weights = torch.ones(feature.shape[1:], device=feature.device)
    if organ_channel is not None:
        organ_small = channel_argmax(logits[0]) == organ_channel
        if organ_small.any():
            weights = F.adaptive_avg_pool3d(organ_small[None, None].float(), feature.shape[1:])[0, 0]
            organ = F.interpolate(organ_small[None, None].float(), size=image.shape[1:], mode="nearest")[0, 0] > 0
            organ = organ.cpu().numpy()
    w = weights / weights.sum().clamp_min(1e-6)
    mean_in = (feature * w).flatten(1).sum(1)
    std_in = ((feature - mean_in[:, None, None, None]) ** 2 * w).flatten(1).sum(1).sqrt()
    return torch.cat([mean_in, std_in, feature.flatten(1).mean(1)]).cpu().numpy(), organ


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
            hands over several batches' worth at a time (:func:`scoring_windows`) lets the windows that
            touch the organ fill whole batches, which run faster per window than ragged ones.
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


def scoring_windows(inferer: SlidingWindowInferer, gather: int = 4) -> SlidingWindowInferer:
    """``inferer``'s windows, tiling the scan without overlap, handed over ``gather`` batches at a time (for
    :class:`OrganWindows` to fill whole batches). A scan's score needs each voxel seen once, in a window of
    the size the model was trained on; overlap only blends the seams of a label map, and at 0.25 it runs
    about twice as many windows."""
    return SlidingWindowInferer(roi_size=inferer.roi_size, sw_batch_size=inferer.sw_batch_size * gather, overlap=0.0)


@torch.no_grad()
def prompt_uncertainty(
    model: nn.Module, image: torch.Tensor, organ: np.ndarray | None, inferer: SlidingWindowInferer,
    margin: int = 2, top_fraction: float = 0.01,
) -> float:
    """Per-scan prompt-based uncertainty of ``image [1, *S]``, from the :func:`scoring_windows` of
    ``inferer`` that touch ``organ [*S]``."""
    windows = OrganWindows(scoring_windows(inferer), organ, batch_size=inferer.sw_batch_size)
    logits, _ = stitched_logits(model, image[None], windows)
    probs, pu = ensemble(logits, model.num_prompts)
    label = task_label(probs[0].cpu()).numpy()
    return scan_uncertainty(pu[0].cpu().numpy(), label, margin=margin, top_fraction=top_fraction)
