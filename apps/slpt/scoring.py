"""Per-scan quantities TESLA ranks by: a frozen-backbone embedding and the prompt-based uncertainty.

Scoring is made cheaper than a full-resolution K-prompt pass in two ways:

* the **embedding** (and the organ's bounding box) comes from one prompt-free backbone pass, computed
  once per image content and cached: it never changes when the prompts do;
* the **prompt-based uncertainty** is computed by the K-prompt model on the organ's bounding box only
  (plus a margin), at full resolution, once per prompt-checkpoint version. Lesions live in the liver,
  so the crop keeps everything the score looks at (``uncertainty.scan_uncertainty`` aggregates over the
  liver and the predicted tumour) and drops most of the volume.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from torch import nn

from .postprocess import task_label
from .prompts import model_device, resolve_stages
from .uncertainty import ensemble, scan_uncertainty


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
    max_voxels: int = 160**3,
    multiple: int = 16,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One prompt-free pass of the frozen backbone over the whole scan.

    Args:
        network: the frozen backbone (not prompted).
        image: ``[1, *S]`` in backbone space.
        stage: module whose output is pooled (the bottleneck).
        organ_channel: output channel of the organ of interest (liver), or ``None`` for none.
        max_voxels: larger scans are downsampled to this many voxels first (bounded memory and time).

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
    handle = resolve_stages(network, [stage])[stage].register_forward_hook(
        lambda m, i, o: captured.__setitem__("feature", o))
    try:
        network.eval()
        logits = network(x)
    finally:
        handle.remove()
    logits = logits[(..., *[slice(0, s) for s in spatial])]
    feature = captured["feature"][0]  # [C, *s]
    organ = None
    weights = torch.ones(feature.shape[1:], device=feature.device)
    if organ_channel is not None:
        organ_small = logits[0].argmax(0) == organ_channel
        if organ_small.any():
            weights = F.adaptive_avg_pool3d(organ_small[None, None].float(), feature.shape[1:])[0, 0]
            organ = F.interpolate(organ_small[None, None].float(), size=image.shape[1:], mode="nearest")[0, 0] > 0
            organ = organ.cpu().numpy()
    w = weights / weights.sum().clamp_min(1e-6)
    mean_in = (feature * w).flatten(1).sum(1)
    std_in = ((feature - mean_in[:, None, None, None]) ** 2 * w).flatten(1).sum(1).sqrt()
    return torch.cat([mean_in, std_in, feature.flatten(1).mean(1)]).cpu().numpy(), organ


def organ_box(organ: np.ndarray | None, shape, margin: int = 8) -> tuple[slice, ...]:
    """Bounding box of ``organ`` grown by ``margin`` voxels; the whole volume when there is no organ."""
    if organ is None or not organ.any():
        return tuple(slice(0, s) for s in shape)
    idx = np.argwhere(organ)
    lo, hi = np.maximum(idx.min(0) - margin, 0), np.minimum(idx.max(0) + margin + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


@torch.no_grad()
def prompt_uncertainty(
    model: nn.Module, image: torch.Tensor, box: tuple[slice, ...], inferer: Inferer, margin: int = 2,
    top_fraction: float = 0.01,
) -> float:
    """Per-scan prompt-based uncertainty of ``image [1, *S]`` computed on ``box`` only."""
    model.eval()
    crop = image[(slice(None), *box)].to(model_device(model))
    logits = inferer(crop[None], model)
    probs, pu = ensemble(torch.as_tensor(logits), model.num_prompts)
    label = task_label(probs[0].cpu()).numpy()
    return scan_uncertainty(pu[0].cpu().numpy(), label, margin=margin, top_fraction=top_fraction)
