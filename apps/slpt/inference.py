"""From K-prompt logits to what the app serves: the task label map, or the prompt-uncertainty map."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import KeepLargestConnectedComponent, MapTransform
from monai.transforms.utils import generate_spatial_bounding_box, get_largest_connected_component_mask
from torch import nn

from apps.slpt.active.uncertainty import ensemble, scan_uncertainty
from apps.slpt.config import SLPTConfig
from apps.slpt.labels import LIVER, TUMOUR
from apps.slpt.model.precision import autocast
from apps.slpt.model.prompts import TUMOUR_PRIOR, PromptedSegmenter, liver_margin, model_device, task_logits
from apps.slpt.windows import sliding_window

# The liver is one organ: a tumour outside its largest connected piece (liver and tumour together) lies in a
# partial-volume edge of another organ or of the body wall, never in this liver.
_ONE_LIVER = KeepLargestConnectedComponent(applied_labels=[LIVER, TUMOUR], independent=False)
# Voxels of context around the liver for the prompted pass: its windows see the liver's surroundings, as the
# training patches did, rather than zero padding at the box's edge.
LIVER_BOX_MARGIN = 4
KNOWN_LIVER_MARGIN = 20.0  # a given liver mask as logits: liver (or tumour) inside for certain, background outside


def task_label(probs: torch.Tensor) -> torch.Tensor:
    """``[C, *S]`` class probabilities -> ``[*S]`` long label map, organ first: liver or tumour where the two
    together outweigh background (for :func:`~apps.slpt.model.prompts.task_logits`, exactly where the backbone
    labels liver), tumour within it where tumour outweighs liver, and only in the largest connected region of
    liver and tumour (liver elsewhere: the organ stays what the backbone says it is)."""
    organ = probs[LIVER] + probs[TUMOUR] > probs[0]
    label = torch.where(organ, torch.where(probs[TUMOUR] > probs[LIVER], TUMOUR, LIVER), 0)
    outside = torch.as_tensor(_ONE_LIVER(label[None].clone()))[0] == 0
    label[outside & (label == TUMOUR)] = LIVER
    return label.long()


def channel_argmax(probs: torch.Tensor) -> torch.Tensor:
    """``probs.argmax(0)``: see :func:`channel_max`."""
    return channel_max(probs)[1]


def channel_max(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs.max(0)`` over a few channels (values, and indices with ties to the first, as there), in one
    pass per channel: on a CPU a reduction over the leading axis reads memory with a channel-sized stride,
    0.35 s on a 9x137x137x100 volume where this takes 0.04 s."""
    best, label = probs[0].clone(), torch.zeros(probs.shape[1:], dtype=torch.long, device=probs.device)
    for c in range(1, probs.shape[0]):
        higher = probs[c] > best
        label[higher] = c
        best = torch.maximum(best, probs[c])
    return best, label


class PromptEnsembled(MapTransform):
    """``d[key]`` ``[K * C, *S]`` logits -> ensemble label map ``[1, *S]`` (or the PU map, on request).

    Also writes ``d[result_key]["prompt_uncertainty"]``: the per-scan PU over the lesion-relevant region.
    The output keeps the input's meta data (affine), so ``Invertd`` can bring it back to image space.

    Args:
        num_prompts: K.
        output: ``"label"`` (:func:`~apps.slpt.inference.task_label` of the mean softmax, uint8) or
            ``"uncertainty"`` (voxel PU, float32).
        margin, top_fraction: see :func:`apps.slpt.active.uncertainty.scan_uncertainty`.
    """

    OUTPUTS = ("label", "uncertainty")

    def __init__(self, keys, num_prompts: int, output: str = "label", margin: int = 2, top_fraction: float = 0.01,
                 result_key: str = "result"):
        super().__init__(keys)
        if output not in self.OUTPUTS:
            raise ValueError(f"output must be one of {self.OUTPUTS}, got {output!r}")
        self.num_prompts, self.output = num_prompts, output
        self.margin, self.top_fraction, self.result_key = margin, top_fraction, result_key

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            logits = d[key]
            plain = logits.as_tensor() if isinstance(logits, MetaTensor) else torch.as_tensor(logits)
            probs, pu = ensemble(plain[None], self.num_prompts)
            label = task_label(probs[0])[None]
            score = scan_uncertainty(pu[0].cpu().numpy(), label[0].cpu().numpy(), margin=self.margin,
                                     top_fraction=self.top_fraction)
            out = label.to(torch.uint8) if self.output == "label" else pu.float()
            d[key] = MetaTensor(out, affine=logits.affine, meta=logits.meta) if isinstance(logits, MetaTensor) else out
            d.setdefault(self.result_key, {})["prompt_uncertainty"] = round(score, 6)
        return d


def task_inferer(cfg: SLPTConfig) -> SlidingWindowInferer:
    """Sliding windows of the training patch size, for every model trained by :func:`fit`.

    The backbone's GroupNorm normalises each window over its whole extent, so a stage feature depends on
    the window it was computed in. Prompts, deltas and head learnt on ``patch_size``-cubed patches read
    features like those only in windows of that size (SLPT v1's window probe on validation phantoms: the
    training size found the most tumours, ``docs/results/explore``).
    """
    return sliding_window((cfg.patch_size,) * 3, cfg.sw_overlap, cfg.sw_batch_voxels)


def checkpoint_inferer(payload: dict, cfg: SLPTConfig) -> SlidingWindowInferer:
    """:func:`task_inferer` in windows of the patch size the checkpoint was trained with."""
    saved = payload["metadata"].get("config", {})
    return task_inferer(dataclasses.replace(cfg, patch_size=int(saved.get("patch_size", cfg.patch_size))))


def organ_inferer(roi_size, cfg: SLPTConfig) -> SlidingWindowInferer:
    """The frozen backbone's windows: its bundle's ``roi_size``, at the app's overlap. ``/infer/backbone`` and
    the organ evidence of ``/infer/slpt`` both run in them, so both serve the same organs."""
    return sliding_window(roi_size, cfg.sw_overlap, cfg.sw_batch_voxels)


@torch.no_grad()
def organ_logits(network: nn.Module, inputs: torch.Tensor, inferer: Inferer, precision: str = "fp32") -> torch.Tensor:
    """``inputs [1, 1, *S]`` -> the frozen network's stitched organ logits ``[1, out, *S]``, fp32: the one
    definition ``/infer/backbone``, ``/infer/slpt`` and training share."""
    network.eval()
    with autocast(precision, inputs.device):
        return torch.as_tensor(inferer(inputs, network)).float()


def backbone_liver_margin(model: PromptedSegmenter, image: torch.Tensor) -> torch.Tensor:
    """``image [1, *S]`` -> the frozen backbone's :func:`~apps.slpt.model.prompts.liver_margin` ``[1, *S]`` on
    the CPU, from its organ logits in its own windows: what a training patch is cut from, so that the
    prompts learn against the very organ evidence they are served with."""
    organ = organ_logits(model.organ_network, image[None].to(model_device(model)), model.organ_inferer,
                         model.precision)
    return liver_margin(organ, model.organ_channel)[0].cpu()


@torch.no_grad()
def stitched_logits(model: PromptedSegmenter, inputs: torch.Tensor, inferer: Inferer,
                    liver: np.ndarray | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``inputs [1, 1, *S]`` -> ``(task logits [1, K * 3, *S], organ logits [1, out, *S])`` of the whole scan.

    Two passes, each in the windows it was trained in:

    * the frozen backbone's organ logits, in its own windows (:func:`organ_logits`): the organs, the
      out-of-distribution signs and the liver are the backbone's, whatever the prompts learnt;
    * the prompted model's tumour log-odds, in ``inferer``'s windows (the training patch size), over the
      box around the liver (:func:`liver_box`) only: tumour is carved out of the liver, and kept in its
      largest piece (:func:`task_label`). Elsewhere the log-odds are
      :data:`~apps.slpt.model.prompts.TUMOUR_PRIOR` for every set (no tumour, no disagreement). The box is
      a fraction of an abdominal scan: this pass costs a fraction of the first.

    ``liver``: a ``[*S]`` liver mask known already (TESLA's, from its whole-scan pass): the organ pass is
    skipped, the liver is the mask (a sure margin of :data:`KNOWN_LIVER_MARGIN` either way), and no organ
    logits are returned.
    """
    model.eval()
    x = inputs.to(model_device(model))
    organ = None
    if liver is None:
        organ = organ_logits(model.organ_network, x, model.organ_inferer, model.precision)
        margin = liver_margin(organ, model.organ_channel)
    else:
        known = torch.as_tensor(np.asarray(liver, dtype=bool), device=x.device)[None, None]
        margin = (known.float() * 2 - 1) * KNOWN_LIVER_MARGIN
    tau = torch.full((1, model.num_prompts, *x.shape[2:]), TUMOUR_PRIOR, device=x.device)
    box = liver_box(margin[0] > 0)
    if box is not None:
        tau[(..., *box)] = torch.as_tensor(inferer(x[(..., *box)], model.tumour_log_odds)).float()
    return task_logits(margin, tau), organ


def liver_box(liver: torch.Tensor, margin: int = LIVER_BOX_MARGIN) -> tuple[slice, ...] | None:
    """``[1, *S]`` liver mask -> the slices of its largest connected piece's bounding box, ``margin`` voxels
    wider on every side (within the scan), or ``None`` without a liver."""
    if not liver.any():
        return None
    largest = get_largest_connected_component_mask(liver)
    start, end = generate_spatial_bounding_box(largest, margin=margin, allow_smaller=True)
    return tuple(slice(a, b) for a, b in zip(start, end))


def predict(model: PromptedSegmenter, image: torch.Tensor, inferer: Inferer) -> tuple[torch.Tensor, torch.Tensor]:
    """``image [1, *S]`` -> ``(ensemble probabilities [C, *S], PU map [*S])``, as ``/infer/slpt`` computes them."""
    logits, _ = stitched_logits(model, image[None], inferer)
    probs, pu = ensemble(logits, model.num_prompts)
    return probs[0].cpu(), pu[0].cpu()
