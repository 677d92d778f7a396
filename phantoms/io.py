"""Phantoms into files (MONAI Label's local datastore layout) and straight into backbone-ready tensors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from apps.slpt.training.data import as_pair, pair_transforms, to_meta_tensor
from phantoms.phantom import Phantom, PhantomSpec, make_phantom


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


def load_phantom_pair(ph: Phantom, preprocessing: Sequence, target: str = "organs"):
    """A generated phantom straight into backbone space (no file round trip)."""
    labels = ph.organs if target == "organs" else ph.label
    data = {"image": to_meta_tensor(ph.image, ph.affine), "label": to_meta_tensor(labels, ph.affine)}
    return as_pair(pair_transforms(preprocessing, load=False, check_labels=target == "task")(data))
