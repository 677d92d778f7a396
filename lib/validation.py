"""Checks on what a client uploads, run before anything is stored.

Pure functions, no server code: ``lib/datastore.py`` calls them and turns :class:`InvalidUpload` into an
HTTP 4xx whose detail is the exception's message, so every message names the problem in a client's terms.

What is accepted (and why):

* **Files:** NIfTI (``.nii.gz``, ``.nii``) or NRRD (``.nrrd``, what 3D Slicer saves), non-empty and readable
  by the loader training uses (nibabel for NIfTI, MONAI's ``LoadImage`` otherwise).
* **Images:** exactly three dimensions, real numbers, every voxel finite, not constant. A trailing
  singleton 4th dimension (``[X, Y, Z, 1]``) is refused too rather than squeezed: stored files are kept
  byte for byte as uploaded, and a 4D file reaches MONAI's loaders as a channel-last volume in some code
  paths and as 4D in others. The message says which dimension to drop.
* **Labels:** three dimensions with exactly the image's shape (voxel grid; the affine is not compared, so a
  label written in LPS for an RAS image of the same grid passes, as MONAI Label itself allows). Task labels
  (``final``, the ones training reads) must hold integers in ``{0, 1, 2}`` (LiTS: background, liver, tumour).
* **Ids and tags** become file and folder names, so they are restricted to letters, digits, ``_``, ``-``
  and ``.``; they start with a letter or digit, contain no ``..`` and are at most 128 characters.
  MONAI Label's own ids (``phantom_000123``, ``liver_001``, DICOM UIDs ``1.2.840...``) all fit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path

import nibabel as nib
import numpy as np

TASK_LABEL_VALUES = (0, 1, 2)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
UPLOAD_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd")
MAX_ID_LENGTH = 128
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_LISTED = 8  # offending values named in a message


class InvalidUpload(ValueError):
    """An upload or id that cannot be stored; the message names the problem."""


def check_safe_id(value: object, what: str = "image id") -> str:
    """``value`` if it is safe as a file or folder name, else :class:`InvalidUpload`.

    Args:
        value: an image id or label tag from a request.
        what: how the message calls it (``"image id"``, ``"label tag"``).
    """
    if not isinstance(value, str) or not value:
        raise InvalidUpload(f"{what} is empty")
    if len(value) > MAX_ID_LENGTH or ".." in value or not _SAFE_ID.fullmatch(value):
        raise InvalidUpload(
            f"{what} {value!r} is not allowed: use letters, digits, '_', '-' and '.', starting with a letter or "
            f"digit, no '..' and at most {MAX_ID_LENGTH} characters (ids and tags become file and folder names)"
        )
    return value


def upload_suffix(path: str | Path, what: str = "file") -> str:
    """The file's supported suffix (``.nii.gz``, ``.nii``, ``.nrrd``), else :class:`InvalidUpload`."""
    name = Path(path).name.lower()
    for suffix in UPLOAD_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    found = "".join(Path(name).suffixes) or "no extension"
    raise InvalidUpload(f"{what} type {found!r} is not supported: upload NIfTI (.nii.gz, .nii) or NRRD (.nrrd)")


def volume_shape(path: str | Path, what: str = "image") -> tuple[int, ...]:
    """Voxel-grid shape, from the header alone for NIfTI (no voxel data is read)."""
    if upload_suffix(path, what) in NIFTI_SUFFIXES:
        try:
            return tuple(int(n) for n in nib.load(str(path)).shape)
        except Exception as e:  # nibabel raises several types for a damaged header
            raise InvalidUpload(f"{what} is not a readable NIfTI file: {_first_line(e, path)}") from e
    return read_volume(path, what).shape


def read_volume(path: str | Path, what: str = "image") -> np.ndarray:
    """The voxel array as training's loader sees it, ``[*spatial]`` (plus any extra dimensions).

    Raises:
        InvalidUpload: unsupported type, empty file, or a file the loader cannot read.
    """
    suffix = upload_suffix(path, what)
    if os.path.getsize(path) == 0:
        raise InvalidUpload(f"{what} file is empty (0 bytes)")
    kind = "NIfTI" if suffix in NIFTI_SUFFIXES else "NRRD"
    try:
        if suffix in NIFTI_SUFFIXES:
            return np.asanyarray(nib.load(str(path)).dataobj)
        from monai.transforms import LoadImage  # only NRRD needs it; keeps the common path light

        return np.asarray(LoadImage(image_only=True)(str(path)))
    except Exception as e:  # truncated gzip, foreign bytes, bad header: all "not readable"
        raise InvalidUpload(f"{what} is not a readable {kind} image: {_first_line(e, path)}") from e


def check_image(path: str | Path) -> tuple[int, int, int]:
    """Check an uploaded scan; returns its shape.

    Raises:
        InvalidUpload: not a readable 3D volume of finite, non-constant real numbers.
    """
    data = read_volume(path, "image")
    _check_3d(data.shape, "image")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise InvalidUpload(f"image voxels have type {data.dtype}; expected real numbers (e.g. CT in HU)")
    finite = np.isfinite(data)
    if not finite.any():
        raise InvalidUpload("image is all NaN or infinite")
    if not finite.all():
        raise InvalidUpload(f"image has {int((~finite).sum())} NaN or infinite voxels of {data.size}")
    low, high = data.min(), data.max()
    if low == high:
        raise InvalidUpload(f"image is constant (every voxel is {low.item()!r}): nothing to segment")
    return data.shape


def check_label(
    path: str | Path, image_shape: tuple[int, ...], values: Collection[int] | None = TASK_LABEL_VALUES
) -> None:
    """Check an uploaded label against its image.

    Args:
        path: the uploaded label file.
        image_shape: the stored image's voxel grid, e.g. from :func:`volume_shape`.
        values: allowed label values; ``None`` checks readability and shape only (model outputs, drafts).

    Raises:
        InvalidUpload: unreadable, not 3D, a shape other than the image's, non-integer values or values
            outside ``values`` (the offending ones are named).
    """
    data = read_volume(path, "label")
    _check_3d(data.shape, "label")
    if tuple(data.shape) != tuple(image_shape):
        raise InvalidUpload(f"label shape {tuple(data.shape)} differs from its image's shape {tuple(image_shape)}")
    if values is None:
        return
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise InvalidUpload(f"label voxels have type {data.dtype}; expected integers {_set(values)}")
    found = np.unique(data)
    fractional = found[~np.isfinite(found) | (np.round(found) != found)] if found.dtype.kind == "f" else found[:0]
    if fractional.size:
        raise InvalidUpload(f"label has non-integer values, e.g. {_list(fractional)}; expected {_set(values)}")
    outside = found[~np.isin(found, list(values))]
    if outside.size:
        raise InvalidUpload(f"label has values {_list(outside)} outside {_set(values)} "
                            "(0 background, 1 liver, 2 tumour)")


def _check_3d(shape: tuple[int, ...], what: str) -> None:
    if len(shape) == 3:
        return
    hint = ""
    if len(shape) > 3 and all(n == 1 for n in shape[3:]):
        hint = "; drop the trailing singleton dimension(s)"
    raise InvalidUpload(f"{what} must be a 3D volume; got {len(shape)} dimension(s), shape {tuple(shape)}{hint}")


def _list(values: np.ndarray) -> str:
    shown = [v.item() if hasattr(v, "item") else v for v in values[:_LISTED]]
    shown = [int(v) if isinstance(v, float) and v.is_integer() else v for v in shown]
    more = len(values) - _LISTED
    return f"{shown}{f' and {more} more' if more > 0 else ''}"


def _set(values: Collection[int]) -> str:
    return "{" + ", ".join(str(v) for v in sorted(values)) + "}"


def _first_line(error: Exception, path: str | Path) -> str:
    """The reader's reason, without the server-side temporary path it usually quotes."""
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__).replace(str(path), "<upload>")
