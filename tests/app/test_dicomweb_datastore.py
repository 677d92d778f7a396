"""SLPT's DICOMweb datastore against a real Orthanc (``tools/orthanc.py``): final labels become DICOM SEGs
written with pydicom-seg, only the app's own SEGs count, the newest one wins, and a save is seen at once.

Runs without the app server: the datastore is the part under test, and the browser test drives it
through the server. Every test starts from a PACS without SEGs and a store with an empty cache, so each runs
alone or in any order. Skips (or fails, with ``SLPT_REQUIRE_BROWSER=1``) where Orthanc isn't installed.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from fastapi import HTTPException

from apps.slpt.labels import FOREGROUND, TUMOUR
from phantoms.dicom import RAS_TO_LPS, to_lps_order
from phantoms.io import image_id
from phantoms.phantom import make_phantom
from tests.app.helpers import require_orthanc
from tools.ohif_chain import write_demo_dicom
from tools.orthanc import start_orthanc, stop_orthanc, upload_series
from tools.server import free_port

pytestmark = pytest.mark.orthanc

SEEDS = (9, 16)  # small phantoms; 9 has metastases, 16 no tumour
LABELS = FOREGROUND


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    require_orthanc()
    workdir = tmp_path_factory.mktemp("pacs")
    series = write_demo_dicom(workdir / "dicom", SEEDS)
    orthanc = start_orthanc(workdir / "orthanc", free_port())
    upload_series(orthanc.dicomweb, [workdir / "dicom" / name for name in series])
    yield orthanc, {name: info["series_uid"] for name, info in series.items()}, workdir
    stop_orthanc(orthanc)


def open_store(orthanc, cache):
    from monailabel.datastore.dicom import DICOMwebClientX

    from lib.dicomweb_datastore import SLPTDicomWebDatastore

    return SLPTDicomWebDatastore(DICOMwebClientX(url=orthanc.dicomweb), LABELS, search_filter={"Modality": "CT"},
                                 cache_path=str(cache))


@pytest.fixture
def store(pacs, tmp_path):
    """A store with an empty cache on the PACS without any SEG (the phantoms' CT series only)."""
    orthanc = pacs[0]
    found = requests.post(f"{orthanc.url}/tools/find", json={"Level": "Series", "Query": {"Modality": "SEG"}},
                          timeout=10)
    for orthanc_id in found.json():
        assert requests.delete(f"{orthanc.url}/series/{orthanc_id}", timeout=10).status_code == 200
    return open_store(orthanc, tmp_path / "store-cache")


def label_file(seed: int, path, tumour_only=False):
    """The phantom's label in its DICOM series' voxel order (see ``phantoms/dicom.py``)."""
    ph = make_phantom(seed)
    label, lps = to_lps_order(ph.label, ph.affine)
    label = np.where(label == TUMOUR, TUMOUR, 0) if tumour_only else label
    nib.save(nib.Nifti1Image(label.astype(np.uint8), RAS_TO_LPS @ lps), path)
    return path, label


def seg_headers(orthanc) -> list[pydicom.Dataset]:
    client = DICOMwebClient(url=orthanc.dicomweb)
    out = []
    for meta in client.search_for_series(search_filters={"Modality": "SEG"}):
        ds = pydicom.Dataset.from_json(meta)
        out.append(pydicom.Dataset.from_json(client.retrieve_series_metadata(ds.StudyInstanceUID,
                                                                              ds.SeriesInstanceUID)[0]))
    return out


def test_a_saved_label_is_a_seg_counted_at_once_and_read_back_exactly(pacs, store, tmp_path):
    orthanc, series, _ = pacs
    image = series[image_id(SEEDS[0])]
    assert store.get_labeled_images() == [] and len(store.get_unlabeled_images()) == 2
    path, label = label_file(SEEDS[0], tmp_path / "label.nii.gz")

    store.save_label(image, str(path), "final", {})

    assert store.get_labeled_images() == [image]  # no waiting for MONAI Label's 2-hour list cache
    [seg] = seg_headers(orthanc)
    assert seg.SeriesDescription == "SLPT final label"
    assert [(s.SegmentNumber, s.SegmentLabel, list(s.RecommendedDisplayCIELabValue) != []) for s in
            seg.SegmentSequence] == [(1, "liver", True), (2, "tumor", True)]
    back = np.asarray(nib.load(store.get_label_uri(image, "final")).dataobj)
    np.testing.assert_array_equal(back, label)


def test_segments_are_named_by_value_when_liver_is_absent(pacs, store, tmp_path):
    """MONAI Label pairs segment names with positions, which would call a tumour-only label's one segment
    'liver'; the app names each segment by its value."""
    orthanc, series, _ = pacs
    image = series[image_id(SEEDS[0])]
    path, label = label_file(SEEDS[0], tmp_path / "tumour.nii.gz", tumour_only=True)
    if not (label == TUMOUR).any():
        pytest.skip("phantom without tumour")
    store.save_label(image, str(path), "final", {})
    newest = max(seg_headers(orthanc), key=lambda s: f"{s.SeriesDate}{s.SeriesTime}")
    assert [(s.SegmentNumber, s.SegmentLabel) for s in newest.SegmentSequence] == [(2, "tumor")]
    # the newest SEG of a scan is its label
    np.testing.assert_array_equal(np.asarray(nib.load(store.get_label_uri(image, "final")).dataobj), label)


def test_a_seg_the_app_did_not_write_is_not_a_label(pacs, store, tmp_path):
    orthanc, series, _ = pacs
    other = series[image_id(SEEDS[1])]
    path, _ = label_file(SEEDS[1], tmp_path / "other.nii.gz")
    store.save_label(other, str(path), "final", {})
    client = DICOMwebClient(url=orthanc.dicomweb)
    [mine] = [s for s in seg_headers(orthanc) if s.ReferencedSeriesSequence[0].SeriesInstanceUID == other]
    seg = client.retrieve_series(mine.StudyInstanceUID, mine.SeriesInstanceUID)[0]
    delete_series(orthanc, mine.SeriesInstanceUID)
    seg.SeriesDescription, seg.SeriesInstanceUID = "Reader 2 draft", pydicom.uid.generate_uid()
    seg.SOPInstanceUID = pydicom.uid.generate_uid()
    client.store_instances([seg])  # the same SEG, but from someone else
    store._seg_cache.clear()  # what the next request after MONAI_LABEL_DICOMWEB_CACHE_EXPIRY sees
    assert other not in store.get_labeled_images() and other in store.get_unlabeled_images()


def delete_series(orthanc, series_uid: str) -> None:
    """Through Orthanc's REST API: its DICOMweb plugin has no DELETE."""
    found = requests.post(f"{orthanc.url}/tools/lookup", data=series_uid, timeout=10).json()
    [orthanc_id] = [r["ID"] for r in found if r["Type"] == "Series"]
    assert requests.delete(f"{orthanc.url}/series/{orthanc_id}", timeout=10).status_code == 200


@pytest.mark.parametrize("case, status", [("values", 422), ("shape", 422), ("image", 404), ("empty", 422)])
def test_bad_labels_are_refused_and_nothing_is_stored(pacs, store, tmp_path, case, status):
    orthanc, series, _ = pacs
    image = series[image_id(SEEDS[1])]
    path, label = label_file(SEEDS[1], tmp_path / "good.nii.gz")
    affine = nib.load(path).affine
    bad = {"values": np.full(label.shape, 7, np.uint8), "shape": label[:-1].astype(np.uint8),
           "image": label.astype(np.uint8), "empty": np.zeros(label.shape, np.uint8)}[case]
    nib.save(nib.Nifti1Image(bad, affine), tmp_path / "bad.nii.gz")
    before = len(seg_headers(orthanc))
    with pytest.raises(HTTPException) as e:
        store.save_label("not-a-series" if case == "image" else image, str(tmp_path / "bad.nii.gz"), "final", {})
    assert e.value.status_code == status
    assert len(seg_headers(orthanc)) == before


def test_a_series_asked_for_by_several_callers_at_once_is_fetched_whole_and_keeps_its_dicom_ids(pacs, tmp_path):
    """Scoring, training and a Next Sample request may all ask for a series that isn't cached yet. Each
    gets the whole volume, and its info keeps the StudyInstanceUID that OHIF's Next Sample opens."""
    orthanc, series, _ = pacs
    image = series[image_id(SEEDS[0])]
    store = open_store(orthanc, tmp_path / "cache")  # nothing cached yet
    start = threading.Barrier(4)

    def ask():
        start.wait()
        path = store.get_image_uri(image)
        return path, nib.load(path).shape, store.get_image_info(image).get("StudyInstanceUID")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: ask(), range(4)))
    whole = make_phantom(SEEDS[0]).image.shape
    assert answers == [(store.get_image_uri(image), whole, study_of(orthanc, image))] * 4, answers


def test_an_image_whose_cached_info_lost_its_dicom_ids_gets_them_back(pacs, store):
    """MONAI Label's file-watcher re-adds an image it finds on disk but not in its index with bare info
    (a race between its reconcile and another thread's add); OHIF's Next Sample needs the study UID."""
    orthanc, series, _ = pacs
    image = series[image_id(SEEDS[1])]
    store.get_image_uri(image)
    store._datastore.objects.pop(image)
    store.refresh()  # what the file-watcher does on the next file event
    assert "StudyInstanceUID" not in store._datastore.objects[image].image.info

    assert store.get_image_info(image)["StudyInstanceUID"] == study_of(orthanc, image)
    assert store._datastore.objects[image].image.info["StudyInstanceUID"] == study_of(orthanc, image)  # kept


def study_of(orthanc, series_uid: str) -> str:
    found = DICOMwebClient(url=orthanc.dicomweb).search_for_series(search_filters={"SeriesInstanceUID": series_uid})
    return found[0]["0020000D"]["Value"][0]
