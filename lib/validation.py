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
* **Labels:** three dimensions with exactly the image's shape, and the image's geometry: every voxel of the
  label must lie within a tenth of a voxel of the image's same voxel in world coordinates (both affines as
  MONAI's loaders give them, RAS). A label in a mirrored frame (LPS data under an RAS image's grid) or with
  another spacing is refused, naming what differs, rather than resampled: a voxel grid that disagrees with
  its scan says the label was drawn on something else. OHIF's and Slicer's labels (NRRD in LPS) describe
  the image's own grid and pass. Task labels (``final``, the ones training reads) must hold integers in
  ``{0, 1, 2}`` (LiTS: background, liver, tumour).
* **Size:** an upload larger than ``--conf slpt_max_upload_mb`` is refused before it is read.
* **Ids and tags** become file and folder names, so they are restricted to letters, digits, ``_``, ``-``
  and ``.``; they start with a letter or digit, contain no ``..`` and are at most 128 characters.
  MONAI Label's own ids (``phantom_000123``, ``liver_001``, DICOM UIDs ``1.2.840...``) all fit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np

TASK_LABEL_VALUES = (0, 1, 2)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
UPLOAD_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd")
MAX_ID_LENGTH = 128
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_LISTED = 8  # offending values named in a message
MB = 1024 * 1024
# How far (in voxels of the image's finest spacing) a label voxel may lie from the image's same voxel.
GEOMETRY_TOLERANCE = 0.1


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


class Geometry(NamedTuple):
    """A volume's voxel grid: ``shape`` and the 4x4 voxel-to-world ``affine`` (RAS, millimetres)."""

    shape: tuple[int, ...]
    affine: np.ndarray


def check_upload_size(size: int, limit_mb: float, what: str = "file") -> None:
    """Refuse an upload of ``size`` bytes above ``limit_mb`` megabytes (``--conf slpt_max_upload_mb``)."""
    if size > limit_mb * MB:
        raise InvalidUpload(f"{what} is {size / MB:.1f} MB, over the server's limit of {limit_mb:g} MB "
                            "(--conf slpt_max_upload_mb)")


def volume_geometry(path: str | Path, what: str = "image") -> Geometry:
    """Voxel grid and affine, from the header alone for NIfTI (no voxel data is read)."""
    if upload_suffix(path, what) in NIFTI_SUFFIXES:
        try:
            header = nib.load(str(path))
            return Geometry(tuple(int(n) for n in header.shape), np.asarray(header.affine, float))
        except Exception as e:  # nibabel raises several types for a damaged header
            raise InvalidUpload(f"{what} is not a readable NIfTI file: {_first_line(e, path)}") from e
    data, affine = load_volume(path, what)
    return Geometry(data.shape, affine)


def volume_shape(path: str | Path, what: str = "image") -> tuple[int, ...]:
    """Voxel-grid shape, from the header alone for NIfTI (no voxel data is read)."""
    return volume_geometry(path, what).shape


def read_volume(path: str | Path, what: str = "image") -> np.ndarray:
    """The voxel array as training's loader sees it, ``[*spatial]`` (plus any extra dimensions).

    Raises:
        InvalidUpload: unsupported type, empty file, or a file the loader cannot read.
    """
    return load_volume(path, what)[0]


def load_volume(path: str | Path, what: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """The voxel array, ``[*spatial]``, and its 4x4 RAS affine, as MONAI's loaders see them.

    Raises:
        InvalidUpload: unsupported type, empty file, or a file the loader cannot read.
    """
    suffix = upload_suffix(path, what)
    if os.path.getsize(path) == 0:
        raise InvalidUpload(f"{what} file is empty (0 bytes)")
    kind = "NIfTI" if suffix in NIFTI_SUFFIXES else "NRRD"
    try:
        if suffix in NIFTI_SUFFIXES:
            image = nib.load(str(path))
            return np.asanyarray(image.dataobj), np.asarray(image.affine, float)
        from monai.transforms import LoadImage  # only NRRD needs it; keeps the common path light

        # NRRD from Slicer and OHIF is in LPS; MONAI's reader turns its affine into RAS, as nibabel's is.
        volume = LoadImage(image_only=True)(str(path))
        return np.asarray(volume), np.asarray(volume.affine, float)
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
    path: str | Path, image: Geometry | tuple[int, ...], values: Collection[int] | None = TASK_LABEL_VALUES
) -> None:
    """Check an uploaded label against its image.

    Args:
        path: the uploaded label file.
        image: the stored image's :class:`Geometry` (:func:`volume_geometry`); a bare shape checks the grid
            only.
        values: allowed label values; ``None`` checks readability, shape and geometry only (model outputs,
            drafts).

    Raises:
        InvalidUpload: unreadable, not 3D, a shape or geometry other than the image's, non-integer values or
            values outside ``values`` (the offending ones are named).
    """
    data, affine = load_volume(path, "label")
    _check_3d(data.shape, "label")
    image_shape = image.shape if isinstance(image, Geometry) else image
    if tuple(data.shape) != tuple(image_shape):
        raise InvalidUpload(f"label shape {tuple(data.shape)} differs from its image's shape {tuple(image_shape)}")
    if isinstance(image, Geometry):
        check_same_geometry(affine, image.affine, image.shape)
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


def check_same_geometry(affine: np.ndarray, image_affine: np.ndarray, shape: tuple[int, ...]) -> None:
    """Refuse a label whose voxels lie elsewhere in the world than its image's same voxels.

    Compares where the eight corners of the voxel grid land under both 4x4 affines: a mirrored axis, another
    spacing or a shifted origin moves some corner by a voxel or more, while the float rounding of NIfTI and
    NRRD headers (and of a DICOM series' geometry) moves it by far less than :data:`GEOMETRY_TOLERANCE`.

    Raises:
        InvalidUpload: naming what differs (orientation, spacing, origin) and by how much.
    """
    corners = np.array(np.meshgrid(*[(0, max(n - 1, 0)) for n in shape[:3]], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    moved = float(np.max(np.linalg.norm((affine @ corners - image_affine @ corners)[:3], axis=0)))
    spacing, image_spacing = (np.linalg.norm(a[:3, :3], axis=0) for a in (affine, image_affine))
    allowed = GEOMETRY_TOLERANCE * float(image_spacing.min())
    if moved <= allowed:
        return
    differs = []
    orientation, image_orientation = ("".join(nib.aff2axcodes(a)) for a in (affine, image_affine))
    if orientation != image_orientation:
        differs.append(f"orientation {orientation} vs the image's {image_orientation}")
    if not np.allclose(spacing, image_spacing, rtol=1e-3):
        differs.append(f"spacing {_mm(spacing)} vs {_mm(image_spacing)}")
    if not np.allclose(affine[:3, 3], image_affine[:3, 3], atol=allowed):
        differs.append(f"origin {_mm(affine[:3, 3])} vs {_mm(image_affine[:3, 3])}")
    if not differs:
        differs.append("axis directions")
    raise InvalidUpload(
        f"label geometry differs from its image's ({'; '.join(differs)}): a label voxel lies up to {moved:.1f} mm "
        f"from the image's same voxel (allowed {allowed:.2g} mm); save the label on the image's own grid and "
        "affine (as OHIF and Slicer do), not resampled or reoriented"
    )


def _mm(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ") mm"


def _check_3d(shape: tuple[int, ...], what: str) -> None:
    if len(shape) == 3:
        if 0 in shape:
            raise InvalidUpload(f"{what} has no voxels: shape {tuple(shape)}")
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
