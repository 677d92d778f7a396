"""Per-scan quantities TESLA ranks by: a frozen-backbone embedding and the prompt-based uncertainty.

Scoring is made cheaper than an SLPT inference:

* the **embedding** and the liver mask come from one prompt-free backbone pass over the whole scan (no
  sliding window, downsampled when large), which never depends on the prompts;
* the **prompt-based uncertainty** takes that liver as given (no organ pass) and runs the K-prompt model
  as ``/infer/slpt`` does (:func:`~apps.slpt.inference.stitched_logits`), in windows of the training patch
  size over the box around the liver. Lesions live in the liver and ``uncertainty.scan_uncertainty`` only
  looks at the liver and its tumours, so nothing outside the box is read.
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


@torch.no_grad()
def prompt_uncertainty(
    model: nn.Module, image: torch.Tensor, organ: np.ndarray | None, inferer: SlidingWindowInferer,
    margin: int = 2, top_fraction: float = 0.01,
) -> float:
    """Per-scan prompt-based uncertainty of ``image [1, *S]``, as ``/infer/slpt`` computes it in ``inferer``'s
    windows, in the liver ``organ [*S]`` (TESLA's, from :func:`embed_scan`; ``None``: the backbone's organ pass
    finds it)."""
    logits, _ = stitched_logits(model, image[None], inferer, liver=organ)
    probs, pu = ensemble(logits, model.num_prompts)
    label = task_label(probs[0].cpu()).numpy()
    return scan_uncertainty(pu[0].cpu().numpy(), label, margin=margin, top_fraction=top_fraction)
