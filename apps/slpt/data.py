"""Turning phantoms into files (MONAI Label datastore layout) and into backbone-ready tensors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged, MapTransform, ResampleToMatchd

from .phantom import Phantom, PhantomSpec, make_phantom


def image_id(seed: int) -> str:
    return f"phantom_{seed:06d}"


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path) -> None:
    """Write with both qform and sform set, so every reader (nibabel, ITK) agrees on the geometry."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_studies(
    studies: str | Path,
    seeds: Iterable[int],
    *,
    spec: PhantomSpec | None = None,
    with_labels: bool = False,
    ground_truth: str | Path | None = None,
) -> list[dict]:
    """Write phantoms in MONAI Label's local datastore layout.

    Images go to ``studies/<id>.nii.gz``. With ``with_labels`` the task labels also go to
    ``studies/labels/final/<id>.nii.gz`` (a demo pool stays unlabelled). ``ground_truth`` receives
    labels, organ maps and a ``manifest.json`` for benchmarks, out of the annotators' sight.

    Returns:
        the ``info`` dict of every phantom, with its ``id``.
    """
    studies = Path(studies)
    studies.mkdir(parents=True, exist_ok=True)
    if with_labels:
        (studies / "labels" / "final").mkdir(parents=True, exist_ok=True)
    if ground_truth is not None:
        ground_truth = Path(ground_truth)
        (ground_truth / "organs").mkdir(parents=True, exist_ok=True)

    manifest = []
    for seed in seeds:
        ph = make_phantom(seed, spec)
        name = image_id(seed)
        save_nifti(ph.image, ph.affine, studies / f"{name}.nii.gz")
        if with_labels:
            save_nifti(ph.label, ph.affine, studies / "labels" / "final" / f"{name}.nii.gz")
        if ground_truth is not None:
            save_nifti(ph.label, ph.affine, ground_truth / f"{name}.nii.gz")
            save_nifti(ph.organs, ph.affine, ground_truth / "organs" / f"{name}.nii.gz")
        manifest.append({"id": name, **ph.info})
    if ground_truth is not None:
        (ground_truth / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def to_meta_tensor(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    """``[X, Y, Z]`` array + affine -> ``[1, X, Y, Z]`` float MetaTensor, as ``LoadImaged`` +
    ``EnsureChannelFirstd`` would produce from the saved NIfTI."""
    t = MetaTensor(torch.as_tensor(array.astype(np.float32))[None], affine=torch.as_tensor(affine))
    t.meta["original_affine"] = torch.as_tensor(affine)
    t.meta["original_channel_dim"] = 0
    return t


class CheckTaskLabeld(MapTransform):
    """Refuse a task label whose shape differs from its image's or whose values are not 0, 1, 2."""

    def __init__(self, image_key: str = "image", label_key: str = "label", values=(0, 1, 2)):
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


def load_phantom_pair(ph: Phantom, preprocessing: Sequence, target: str = "organs"):
    """A generated phantom straight into backbone space (no file round trip)."""
    labels = ph.organs if target == "organs" else ph.label
    data = {"image": to_meta_tensor(ph.image, ph.affine), "label": to_meta_tensor(labels, ph.affine)}
    return as_pair(pair_transforms(preprocessing, load=False, check_labels=target == "task")(data))


def _is_channel_first(transform) -> bool:
    # Our tensors already carry a channel; the bundle's EnsureChannelFirstd would be a no-op at best.
    return type(transform).__name__ in {"EnsureChannelFirstd", "AddChanneld"}
