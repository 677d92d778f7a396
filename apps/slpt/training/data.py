"""Labelled scans into backbone-ready tensors: loading, checking task labels, resampling labels onto images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged, MapTransform, ResampleToMatchd

from apps.slpt.labels import CLASSES


def to_meta_tensor(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    """``[X, Y, Z]`` array + affine -> ``[1, X, Y, Z]`` float MetaTensor, as ``LoadImaged`` +
    ``EnsureChannelFirstd`` would produce from the saved NIfTI."""
    t = MetaTensor(torch.as_tensor(array.astype(np.float32))[None], affine=torch.as_tensor(affine))
    t.meta["original_affine"] = torch.as_tensor(affine)
    t.meta["original_channel_dim"] = 0
    return t


class CheckTaskLabeld(MapTransform):
    """Refuse a task label whose shape differs from its image's or whose values are not 0, 1, 2."""

    def __init__(self, image_key: str = "image", label_key: str = "label", values=tuple(CLASSES.values())):
        super().__init__([label_key])
        self.image_key, self.label_key, self.values = image_key, label_key, set(values)

    def __call__(self, data):
        image, label = data[self.image_key], data[self.label_key]
        source = getattr(label, "meta", {}).get("filename_or_obj", self.label_key)
        if tuple(label.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(f"label {source} has shape {tuple(label.shape[1:])}, image has {tuple(image.shape[1:])}")
        found = set(torch.unique(torch.as_tensor(label)).tolist())
        if not found <= self.values:
            raise ValueError(f"label {source} has values {sorted(found)}; expected only {sorted(self.values)}")
        return data


def pair_transforms(preprocessing: Sequence, load: bool = True, check_labels: bool = True) -> Compose:
    """Image + label into backbone space: the backbone's own image preprocessing, then the label
    resampled (nearest neighbour) onto the processed image's grid.

    Resampling the label to the *processed* image works for any bundle's preprocessing without knowing
    which spatial transforms it contains. With ``load`` the dict holds file paths, else channel-first
    MetaTensors (from :func:`to_meta_tensor`).
    """
    steps = [LoadImaged(keys=["image", "label"], image_only=True, ensure_channel_first=True)] if load else []
    if check_labels:
        steps.append(CheckTaskLabeld())
    steps += [t for t in preprocessing if not _is_channel_first(t)]
    steps.append(ResampleToMatchd(keys="label", key_dst="image", mode="nearest"))
    return Compose(steps)


def as_pair(data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``{"image", "label"}`` in backbone space -> ``([1, *S] float image, [1, *S] long label)``."""
    return torch.as_tensor(data["image"]).float(), torch.as_tensor(data["label"]).round().long()


def _is_channel_first(transform) -> bool:
    # Our tensors already carry a channel; the bundle's EnsureChannelFirstd would be a no-op at best.
    return type(transform).__name__ in {"EnsureChannelFirstd", "AddChanneld"}
