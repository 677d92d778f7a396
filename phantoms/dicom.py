"""Write a HU volume as a CT DICOM series (one file per slice), for Orthanc and OHIF.

Geometry follows DICOM's LPS patient coordinates. Axis-aligned volumes are first flipped to
L/P/S-increasing voxel order, so that ``ImageOrientationPatient`` is the canonical
``[1, 0, 0, 0, 1, 0]`` that every viewer handles; oblique affines are written as they are.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Stored value = HU - intercept. A non-zero intercept makes readers that ignore rescale tags fail loudly.
RESCALE_INTERCEPT = -1024.0


def to_lps_order(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip in-plane axes so voxel indices grow towards L and P; returns ``(volume, lps_affine)``."""
    lps = RAS_TO_LPS @ affine
    for axis in (0, 1, 2):
        if lps[axis, axis] < 0 and np.allclose(np.delete(lps[:3, axis], axis), 0):
            volume = np.flip(volume, axis)
            lps = lps.copy()
            lps[:3, 3] += lps[:3, axis] * (volume.shape[axis] - 1)
            lps[:3, axis] *= -1
    return np.ascontiguousarray(volume), lps


def write_ct_series(
    volume_hu: np.ndarray,
    affine: np.ndarray,
    out_dir: str | Path,
    *,
    patient_id: str,
    series_description: str = "SLPT phantom CT",
    uid_seed: str | None = None,
) -> dict:
    """Write ``[X, Y, Z]`` HU with a voxel-to-RAS ``affine`` as ``out_dir/slice_0000.dcm`` ...

    Args:
        uid_seed: makes Study/Series/SOP UIDs deterministic (same phantom, same UIDs).

    Returns:
        ``{"study_uid", "series_uid", "files"}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    volume, lps = to_lps_order(np.asarray(volume_hu), np.asarray(affine, dtype=float))
    step_col, step_row, step_slice = (lps[:3, i] for i in range(3))  # per index i (x), j (y), k (z)
    spacing = [float(np.linalg.norm(v)) for v in (step_col, step_row, step_slice)]
    orientation = list(step_col / spacing[0]) + list(step_row / spacing[1])

    seed = uid_seed or patient_id
    uid = lambda *parts: generate_uid(entropy_srcs=[seed, *parts]) if seed else generate_uid()  # noqa: E731
    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    stored = np.clip(np.round(volume - RESCALE_INTERCEPT), -32768, 32767).astype(np.int16)
    now = datetime.datetime(2026, 1, 1)  # fixed, so files are byte-reproducible

    files = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid("sop", str(k))
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.Manufacturer = "CT", "SLPT synthetic phantom"
        ds.PatientName, ds.PatientID = f"Phantom^{patient_id}", patient_id
        ds.PatientBirthDate, ds.PatientSex, ds.PatientPosition = "", "O", "HFS"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.StudyDescription, ds.SeriesDescription = "SLPT synthetic abdomen", series_description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in orientation]
        ds.ImagePositionPatient = [round(float(v), 4) for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
        ds.PixelSpacing = [round(spacing[1], 6), round(spacing[0], 6)]  # [between rows, between columns]
        ds.SliceThickness = round(spacing[2], 6)
        ds.SpacingBetweenSlices = round(spacing[2], 6)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = RESCALE_INTERCEPT, 1.0, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = stored[:, :, k].T.tobytes()  # rows follow j (y), columns follow i (x)
        path = out_dir / f"slice_{k:04d}.dcm"
        ds.save_as(path, write_like_original=False)
        files.append(path)
    return {"study_uid": study_uid, "series_uid": series_uid, "files": files}

