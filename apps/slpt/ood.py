"""Is a scan an abdominal CT at all? Organ-layout plausibility from the backbone's organ probabilities.

The backbone labels every voxel of any volume with one of its organs, so a head, a block of noise or a
constant volume gets a "liver" too (16% of a CT head was labelled liver), and SLPT then finds tumours
in it. What the backbone says about the *whole* scan tells such inputs apart from abdominal CTs, with no
extra pass: its organ probabilities are computed anyway (``/infer/backbone`` and ``/infer/slpt`` stitch
them, TESLA scoring runs the backbone once per scan). Four signs, each of which an abdominal CT shows:

* **confidence**: the mean top-class probability over the body (the non-background voxels) is high;
  noise and constant volumes leave the backbone unsure everywhere;
* **one liver**: the largest connected piece of the liver label holds most of it; in noise it is confetti;
* **companions**: at least two of spleen, left and right kidney, and aorta are found beside the liver
  (each with a small share of the liver's voxels); a head has none of them;
* **bone**: the spine and ribs of an abdominal field of view are a sizeable share of the liver's volume;
  a CT head's brain (the skull stripped) has almost none.

Organs are read by name (:func:`~apps.slpt.model.backbone.label_channels`), so a backbone that splits one
into several structures is read the same way: a ``wholeBody_ct_segmentation`` backbone's bone is its
vertebrae, ribs, sternum, sacrum and hips together. A sign is only read when the backbone has the labels it
needs. The limits were picked on the default backbone with synthetic phantoms against generated
non-abdominal volumes and a CT head atlas, with real abdominal CTs in view but never used to pick
(``python -m tools.ood_calibration``, ``docs/results/ood/result.md``).

Both infer tasks and TESLA read these signs from the frozen backbone's own organ probabilities, never from a
prompted pass, so no training changes a verdict.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage
from torch import nn

from apps.slpt.inference import channel_max
from apps.slpt.model.backbone import label_channels

COMPANIONS = ("spleen", "kidney_left", "kidney_right", "aorta")


@dataclass(frozen=True)
class LayoutLimits:
    """Where an abdominal CT's organ layout ends (defaults: picked on phantoms, see the module docstring).

    Args:
        min_confidence: lowest mean top-class probability over the body.
        min_liver_connected: lowest share of liver voxels in its largest connected piece.
        companion_ratio: a companion organ counts as found with at least this many voxels per liver voxel.
        min_companions: fewest companions (:data:`COMPANIONS`, of those the backbone has) found.
        min_bone_ratio: fewest bone voxels per liver voxel.
        min_liver_share: fewest liver voxels per body voxel; below it there is no liver to segment.
    """

    # Just above the most confident volume that this sign alone catches (constant water, in windows: 0.72 on
    # the torso-trained backbone), rather than just under the abdominal phantoms: real abdominal CTs leave the
    # backbone less sure than phantoms do (docs/results/ood, `tools.ood_calibration` prints the rule's pick).
    min_confidence: float = 0.73
    min_liver_connected: float = 0.60
    companion_ratio: float = 0.002
    min_companions: int = 2
    min_bone_ratio: float = 0.04
    min_liver_share: float = 0.01

    def __post_init__(self):
        for name in ("min_confidence", "min_liver_connected", "min_liver_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.companion_ratio < 0 or self.min_bone_ratio < 0 or self.min_companions < 0:
            raise ValueError("companion_ratio, min_bone_ratio and min_companions must be >= 0")


@dataclass(frozen=True)
class LayoutCheck:
    """The verdict on one scan: ``flagged`` with the ``reasons`` (empty when plausible) and the ``features``
    they were read from."""

    flagged: bool
    reasons: tuple[str, ...]
    features: dict[str, float]

    def to_dict(self) -> dict:
        return {"flagged": self.flagged, "reasons": list(self.reasons), "features": dict(self.features)}


def layout_features(probs: torch.Tensor | np.ndarray, labels: dict[str, int]) -> dict[str, float]:
    """Whole-scan organ statistics from the backbone's probabilities.

    Args:
        probs: ``[C, *S]`` class probabilities (softmax over the backbone's outputs), one scan; not modified.
        labels: the backbone's label names to channels; ``background`` is 0 unless named otherwise.

    Returns:
        ``body_voxels``, ``confidence`` (mean top probability over the body), ``liver_share`` (liver per
        body voxel), ``liver_connected`` (share of the liver in its largest piece) and, for each of
        :data:`COMPANIONS` and ``bone`` that the backbone has (under that name or as a group of its structures,
        :func:`~apps.slpt.model.backbone.label_channels`), ``<organ>_per_liver`` (voxels per liver voxel).
    """
    p = torch.as_tensor(probs).float()
    if p.ndim < 2:
        raise ValueError(f"probs must be [C, *S], got shape {tuple(p.shape)}")
    if "liver" not in labels:
        raise ValueError(f"the backbone has no 'liver' label; it has {sorted(labels)}")
    top, label = channel_max(p)
    label = label.cpu().numpy()
    body = label != labels.get("background", 0)
    body_voxels = int(body.sum())
    liver = label == labels["liver"]
    liver_voxels = int(liver.sum())
    pieces, count = ndimage.label(liver)
    largest = int(np.bincount(pieces.ravel())[1:].max()) if count else 0
    features = {
        "body_voxels": float(body_voxels),
        "confidence": float(top.cpu().numpy()[body].mean()) if body_voxels else 0.0,
        "liver_share": liver_voxels / max(body_voxels, 1),
        "liver_connected": largest / max(liver_voxels, 1),
    }
    for organ in (*COMPANIONS, "bone"):
        if channels := label_channels(labels, organ):
            features[f"{organ}_per_liver"] = int(np.isin(label, channels).sum()) / max(liver_voxels, 1)
    return {k: round(v, 5) for k, v in features.items()}


def check_layout(features: dict[str, float], limits: LayoutLimits = LayoutLimits()) -> LayoutCheck:
    """Whether ``features`` (:func:`layout_features`) are an abdominal CT's, and if not, why."""
    reasons = []
    if features["liver_share"] < limits.min_liver_share:
        reasons.append(f"no liver: {features['liver_share']:.1%} of the body is liver "
                       f"(at least {limits.min_liver_share:.0%} expected)")
    else:
        if features["liver_connected"] < limits.min_liver_connected:
            reasons.append(f"the liver is in pieces: its largest part holds {features['liver_connected']:.0%} "
                           f"(at least {limits.min_liver_connected:.0%} expected)")
        present = [o for o in COMPANIONS if f"{o}_per_liver" in features]
        found = [o for o in present if features[f"{o}_per_liver"] >= limits.companion_ratio]
        if present and len(found) < min(limits.min_companions, len(present)):
            reasons.append(f"no abdominal organs beside the liver: found {found or 'none'} of {present} "
                           f"(at least {limits.min_companions} expected)")
        if "bone_per_liver" in features and features["bone_per_liver"] < limits.min_bone_ratio:
            reasons.append(f"almost no bone: {features['bone_per_liver']:.3f} bone voxels per liver voxel "
                           f"(at least {limits.min_bone_ratio} expected of an abdominal field of view)")
    if features["confidence"] < limits.min_confidence:
        reasons.append(f"the backbone is unsure: mean top-class probability {features['confidence']:.2f} "
                       f"(at least {limits.min_confidence} expected)")
    return LayoutCheck(bool(reasons), tuple(reasons), dict(features))


def check_scan(probs: torch.Tensor | np.ndarray, labels: dict[str, int],
               limits: LayoutLimits = LayoutLimits()) -> LayoutCheck:
    """:func:`check_layout` of :func:`layout_features`: ``[C, *S]`` probabilities -> the verdict."""
    return check_layout(layout_features(probs, labels), limits)


def background_only(scores: torch.Tensor, classes: int) -> torch.Tensor:
    """``[G * classes, *S]`` probabilities or logits -> the same shape and meta data with background (the
    first channel of each group of ``classes``) certain everywhere: argmax 0, and no disagreement between
    groups (prompt sets). The input is not modified."""
    if scores.shape[0] % classes:
        raise ValueError(f"{scores.shape[0]} channels are not groups of {classes}")
    empty = torch.zeros_like(scores)
    empty[0::classes] = 1.0
    return empty


class OutOfDistributiond(MapTransform):
    """Blanks ``d[key]`` (background certain everywhere, :func:`background_only`) when the scan's organ
    layout is not an abdominal CT's (:func:`check_scan` of the organ probabilities), and leaves it unchanged
    otherwise; the verdict goes to ``d[result_key]["out_of_distribution"]`` either way.

    Args:
        labels: the backbone's label names to channels.
        limits: see :class:`LayoutLimits`.
        probs_key: where the ``[C, *S]`` organ probabilities are (default: ``key`` itself holds them).
        classes: ``d[key]`` holds groups of this many channels (default: all its channels are one group).
    """

    def __init__(self, keys, labels: dict[str, int], limits: LayoutLimits = LayoutLimits(),
                 probs_key: str | None = None, classes: int | None = None, result_key: str = "result"):
        super().__init__(keys)
        self.labels, self.limits, self.result_key = labels, limits, result_key
        self.probs_key, self.classes = probs_key, classes

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            verdict = check_scan(d[self.probs_key or key], self.labels, self.limits)
            d.setdefault(self.result_key, {})["out_of_distribution"] = verdict.to_dict()
            if verdict.flagged:
                d[key] = background_only(d[key], self.classes or d[key].shape[0])
        return d


@contextmanager
def captured_output(module: nn.Module) -> Iterator[dict]:
    """``with captured_output(network) as seen:`` -> ``seen["output"]`` holds the module's last output
    (for a backbone, ``[B, C, *S]`` organ logits) after a forward pass in the block; the hook is removed on
    leaving it, whatever happens."""
    seen: dict = {}
    handle = module.register_forward_hook(lambda m, i, o: seen.__setitem__("output", o))
    try:
        yield seen
    finally:
        handle.remove()
