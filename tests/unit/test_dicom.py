from __future__ import annotations

import numpy as np
import pydicom
import pytest
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation

from phantoms.dicom import RESCALE_INTERCEPT, write_ct_series
from phantoms.io import save_nifti
from phantoms.phantom import make_phantom, phantom_header


def _load_ras(path, reader):
    return Compose([LoadImage(reader=reader, image_only=True), EnsureChannelFirst(), Orientation("RAS")])(str(path))


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_dicom_series_round_trips_through_monai_with_the_same_geometry(tmp_path, orientation):
    seed = next(s for s in range(100) if phantom_header(s)["orientation"] == orientation)
    ph = make_phantom(seed)
    save_nifti(ph.image, ph.affine, tmp_path / "ct.nii.gz")
    series = write_ct_series(ph.image, ph.affine, tmp_path / "dicom", patient_id="p1")

    assert len(series["files"]) == ph.image.shape[2]  # one file per slice
    ds = pydicom.dcmread(series["files"][0])
    assert ds.Modality == "CT" and ds.RescaleType == "HU" and float(ds.RescaleIntercept) == RESCALE_INTERCEPT
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert ds.SeriesInstanceUID == pydicom.dcmread(series["files"][-1]).SeriesInstanceUID

    nifti = _load_ras(tmp_path / "ct.nii.gz", "NibabelReader")
    dicom = _load_ras(tmp_path / "dicom", "ITKReader")
    assert dicom.shape == nifti.shape
    np.testing.assert_allclose(dicom.affine.numpy(), nifti.affine.numpy(), atol=1e-3)
    np.testing.assert_array_equal(dicom.numpy(), nifti.numpy())  # HU after rescale, voxel for voxel


def test_uids_are_deterministic_per_patient(tmp_path):
    ph = make_phantom(1)
    a = write_ct_series(ph.image[:, :, :2], ph.affine, tmp_path / "a", patient_id="p1")
    b = write_ct_series(ph.image[:, :, :2], ph.affine, tmp_path / "b", patient_id="p1")
    c = write_ct_series(ph.image[:, :, :2], ph.affine, tmp_path / "c", patient_id="p2")
    assert a["series_uid"] == b["series_uid"] != c["series_uid"]
