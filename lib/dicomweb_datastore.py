"""MONAI Label's DICOMweb datastore (Orthanc or any DICOMweb PACS), made safe for SLPT's label loop.

What MONAI Label 0.8.5's ``DICOMWebDatastore`` does, and what this subclass changes:

* It converts a final label to DICOM SEG with dcmqi's ``itkimage2segimage``, and downloads dcmqi from
  GitHub at start-up when it is missing; offline, start-up fails. Here pydicom-seg writes the SEG (the
  converter MONAI Label itself ships, ``use_itk=False``), so nothing is downloaded or needed on PATH.
* It names segments by their position in ``label_info``, so a label without liver calls its tumour
  "liver". Here every segment is named and coloured from its own voxel value (``{liver: 1, tumor: 2}``).
* It counts *any* SEG in the PACS as a final label, so a radiologist's unrelated SEG (or a draft exported
  from another tool) silently removes a scan from the queue. Here only SEGs this app wrote, marked by
  their SeriesDescription, are labels; the newest one per scan wins.
* It caches the image and label lists for ``MONAI_LABEL_DICOMWEB_CACHE_EXPIRY`` (2 h by default), so a saved
  label is not seen until then. Here the label list is refreshed right after every save.
* Its ``get_label_uri`` wants the SEG's series UID, but trainers ask by image id; here both work.
* It joins any requested id into a cache path (``../../x`` reaches outside the cache); here an id that is
  not a listed series, or a final label's SEG, resolves to nothing.
* Its ``get_image_uri`` lets several callers (scoring, a training process, a Next Sample request) fetch
  the same uncached series at once: a second caller converts a half-downloaded folder, or answers before
  the image is registered, without the StudyInstanceUID OHIF's Next Sample opens. Here one caller per
  series fetches it while the others wait, and an image whose cached info lost its DICOM identifiers
  (MONAI Label's file-watcher can re-add an image with bare info) gets them back from the PACS.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import threading

import numpy as np
import pydicom
import pydicom_seg
import SimpleITK
from cachetools import TTLCache
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from fastapi import HTTPException
from filelock import FileLock
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import nifti_to_dicom_seg
from monailabel.datastore.utils.dicom import dicom_web_download_series, dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from lib.validation import InvalidUpload, check_label, read_volume, volume_geometry

logger = logging.getLogger(__name__)

# SeriesDescription of every SEG this app stores; SEGs without it are not labels of this app.
LABEL_SERIES_DESCRIPTION = "SLPT final label"
# Display colours (RGB) shared with OHIF's MONAI Label panel palette for these names.
SEGMENT_COLORS = {"liver": (221, 130, 101), "tumor": (144, 238, 144)}  # OHIF's "liver", "liver tumor"


class SLPTDicomWebDatastore(DICOMWebDatastore):
    """DICOMweb studies; final labels are SEGs written by this app (pydicom-seg, no dcmqi)."""

    def __init__(self, client: DICOMwebClient, labels: dict[str, int], **kwargs):
        super().__init__(client, **kwargs)
        self._labels = dict(labels)
        self._seg_cache = TTLCache(maxsize=1, ttl=settings.MONAI_LABEL_DICOMWEB_CACHE_EXPIRY)
        self._seg_lock = threading.Lock()
        self._seg_refs: dict[str, tuple[str | None, str]] = {}  # SEG series UID -> (image series UID, saved at)

    # --- which scans are labelled -------------------------------------------------------------------

    def final_segs(self) -> dict[str, str]:
        """``{image series UID: newest SEG series UID}`` over the SEGs this app wrote."""
        with self._seg_lock:
            if "segs" not in self._seg_cache:
                self._seg_cache["segs"] = self._query_final_segs()
            return dict(self._seg_cache["segs"])

    def _query_final_segs(self) -> dict[str, str]:
        images = set(self.list_images())
        found: dict[str, tuple[str, str]] = {}
        for meta in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            seg = Dataset.from_json(meta)
            if str(seg.get("SeriesDescription", "")) != LABEL_SERIES_DESCRIPTION:
                continue
            uid = str(seg.SeriesInstanceUID)
            if uid not in self._seg_refs:  # a SEG never changes what it refers to: read its header once
                header = Dataset.from_json(self._client.retrieve_series_metadata(str(seg.StudyInstanceUID), uid)[0])
                refs = header.get("ReferencedSeriesSequence")
                self._seg_refs[uid] = (str(refs[0].SeriesInstanceUID) if refs else None,
                                       f"{header.get('SeriesDate', '')}{header.get('SeriesTime', '')}")
            image, stamp = self._seg_refs[uid]
            if image in images and (image not in found or stamp >= found[image][0]):
                found[image] = (stamp, uid)
        return {image: seg for image, (_, seg) in found.items()}

    def get_labeled_images(self, label_tag=None, labels=None) -> list[str]:
        return sorted(self.final_segs())

    def get_unlabeled_images(self, label_tag=None, labels=None) -> list[str]:
        labelled = set(self.final_segs())
        return sorted(set(self.list_images()) - labelled)

    # --- reading an image ---------------------------------------------------------------------------

    def get_image_uri(self, image_id: str) -> str:
        # MONAI Label joins the id into a cache path and serves whatever lies there, so an id such as
        # "../../x" would reach files outside the cache: only a series the PACS lists is an image.
        if image_id not in self.list_images():
            return ""  # as MONAI Label's local datastore answers an unknown id
        # A file lock, not a threading one: MONAI Label trains in a separate process on the same cache.
        name = hashlib.sha1(image_id.encode()).hexdigest()
        with FileLock(os.path.join(self._datastore.image_path(), f".fetch-{name}.lock")):
            path = super().get_image_uri(image_id)
        cached = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz"))
        if path != cached and os.path.isfile(path) and os.path.isfile(cached):
            # MONAI Label answers the first call with its temporary conversion, which it already copied
            # into the cache and never deletes.
            os.unlink(path)
            path = cached
        return path

    def get_image_info(self, image_id: str) -> dict:
        info = super().get_image_info(image_id)
        if info and "StudyInstanceUID" not in info:
            try:
                ids = self._dicom_info(image_id)
            except IndexError:  # the series has left the PACS: nothing to restore
                return info
            self.update_image_info(image_id, ids)
            info.update(ids)
        return info

    # --- reading a label ------------------------------------------------------------------------------

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """The final label of an image as NIfTI; ``label_id`` may be the image id or the SEG's series UID."""
        if label_tag != DefaultLabelTag.FINAL:
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        segs = self.final_segs()
        seg_uid = segs.get(label_id) or segs.get(image_id) or (label_id if label_id in segs.values() else None)
        if seg_uid is None:  # the id becomes a cache path below: only a known image or SEG may get there
            return ""
        folder = os.path.realpath(os.path.join(self._datastore.label_path(label_tag), seg_uid))
        nifti = f"{folder}.nii.gz"  # keyed by SEG: a newer save is a new file, never a stale cache hit
        if not os.path.exists(nifti):
            if not os.path.isdir(folder) or not os.listdir(folder):
                dicom_web_download_series(None, seg_uid, folder, self._client, self._fetch_by_frame)
            seg = pydicom.dcmread(os.path.join(folder, min(os.listdir(folder))))
            # MultiClassReader gives each voxel its segment number, which is the label value we wrote.
            SimpleITK.WriteImage(pydicom_seg.MultiClassReader().read(seg).image, nifti)
        return nifti

    # --- saving a label -------------------------------------------------------------------------------

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict,
                   label_id: str = "") -> str:
        """A final label becomes a SEG in the PACS; other tags (drafts) stay in the local cache only."""
        if image_id not in self.list_images():
            raise HTTPException(404, f"no image {image_id!r} in the DICOMweb store")
        image_nifti = self.get_image_uri(image_id)
        try:
            check_label(label_filename, volume_geometry(image_nifti), values=tuple(sorted({0, *self._labels.values()})))
        except InvalidUpload as e:
            raise HTTPException(422, str(e)) from e
        if label_tag != DefaultLabelTag.FINAL:
            return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)

        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        seg_file = nifti_to_dicom_seg(image_dir, label_filename, self.segment_info(label_filename), use_itk=False)
        if not seg_file:
            raise HTTPException(422, "label is empty: draw at least one voxel of liver or tumour before saving")
        _stamp_now(seg_file)
        try:
            seg_uid = dicom_web_upload_dcm(seg_file, self._client)
        finally:
            os.unlink(seg_file)
        with self._seg_lock:
            self._seg_cache.clear()  # the next question "is it labelled?" asks the PACS again
        info = {**(label_info or {}), "SeriesInstanceUID": seg_uid}
        local_id = LocalDatastore.save_label(self, image_id, label_filename, label_tag, info)
        logger.info("Saved final label of %s as SEG %s", image_id, seg_uid)
        return local_id

    def segment_info(self, label_filename: str) -> list[dict]:
        """One entry per label value present in the file, in value order, as ``nifti_to_dicom_seg`` pairs
        its ``i``-th entry with the ``i``-th present value."""
        names = {value: name for name, value in self._labels.items()}
        present = sorted(int(v) for v in _unique_values(label_filename) if v)
        return [{"name": names[v], "description": names[v], "color": list(SEGMENT_COLORS.get(names[v], (255, 0, 0))),
                 "model_name": LABEL_SERIES_DESCRIPTION} for v in present]

    def datalist(self, full_path=True):
        return [{"image": self.get_image_uri(i), "label": self.get_label_uri(i, DefaultLabelTag.FINAL)}
                for i in self.get_labeled_images()]


def _unique_values(path: str) -> np.ndarray:
    return np.unique(read_volume(path, "label"))


def _stamp_now(seg_file: str) -> None:
    """pydicom-seg copies the CT's SeriesDate/Time into the SEG; the save time is what orders re-saves."""
    ds = pydicom.dcmread(seg_file)
    now = datetime.datetime.now()
    ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    ds.save_as(seg_file)


def dicomweb_datastore(url: str, labels: dict[str, int]) -> SLPTDicomWebDatastore:
    """The datastore for ``--studies http(s)://.../dicom-web``, configured from MONAI Label's settings
    (``MONAI_LABEL_DICOMWEB_*``), without MONAI Label's dcmqi download."""
    session = None
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                settings.MONAI_LABEL_DICOMWEB_PASSWORD)
    client = DICOMwebClientX(url=url.rstrip("/"), session=session,
                             qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                             wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                             stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
    return SLPTDicomWebDatastore(
        client, labels,
        search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
        cache_path=(settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None,
        fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
        convert_to_nifti=True,  # SLPT reads NIfTI
    )
