"""From K-prompt logits to what the app serves: the task label map, or the prompt-uncertainty map."""

from __future__ import annotations

import dataclasses
import math

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import KeepLargestConnectedComponent, MapTransform

from apps.slpt.active.uncertainty import ensemble, scan_uncertainty
from apps.slpt.config import SLPTConfig
from apps.slpt.labels import LIVER, TUMOUR
from apps.slpt.model.prompts import PromptedSegmenter, model_device

# The liver is one organ. Liver or tumour voxels outside its largest connected piece (liver and tumour
# together) are partial-volume edges of other organs or of the body wall, never a lesion of this liver.
_ONE_LIVER = KeepLargestConnectedComponent(applied_labels=[LIVER, TUMOUR], independent=False)


def task_label(probs: torch.Tensor) -> torch.Tensor:
    """``[C, *S]`` class probabilities -> ``[*S]`` long label map: the argmax, then only the largest
    connected region of liver and tumour (background elsewhere)."""
    label = channel_argmax(probs)[None]
    return torch.as_tensor(_ONE_LIVER(label))[0].long()


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


def sliding_window(roi_size, overlap: float = 0.25, batch_voxels: int = 1) -> SlidingWindowInferer:
    """MONAI's sliding window, with as many windows per forward pass as fit in ``batch_voxels`` (at least
    one). On a CPU, eight 32³ windows together cost about half as much per window as one at a time (the
    per-call overhead of a small conv is shared), while 64³ windows run fastest one at a time; GroupNorm
    never mixes samples, so the stitched output is the same either way."""
    return SlidingWindowInferer(roi_size=roi_size, sw_batch_size=max(1, batch_voxels // math.prod(roi_size)),
                                overlap=overlap)


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


@torch.no_grad()
def stitched_logits(model: PromptedSegmenter, inputs: torch.Tensor,
                    inferer: Inferer) -> tuple[torch.Tensor, torch.Tensor]:
    """``inputs [1, 1, *S]`` -> ``(task logits [1, K * 3, *S], organ logits [1, out, *S])`` of the whole scan.

    The windows blend the model's :meth:`~PromptedSegmenter.window_outputs` (organ logits and tumour
    log-odds), and the task logits are composed once from the blend: fewer channels to stitch, one
    log-softmax per voxel instead of one per window. Where windows do not overlap this equals stitching
    the task logits themselves; on their overlaps it averages logits before the softmax, as MONAI's
    stitching of any network's logits does.
    """
    model.eval()
    return model.compose(torch.as_tensor(inferer(inputs.to(model_device(model)), model.window_outputs)))


def predict(model: PromptedSegmenter, image: torch.Tensor, inferer: Inferer) -> tuple[torch.Tensor, torch.Tensor]:
    """``image [1, *S]`` -> ``(ensemble probabilities [C, *S], PU map [*S])``."""
    logits, _ = stitched_logits(model, image[None], inferer)
    probs, pu = ensemble(logits, model.num_prompts)
    return probs[0].cpu(), pu[0].cpu()
