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
* Its client (dicomweb-client) waits without a timeout and retries every failed request five times over
  30 s, so a save to a stopped PACS answered a 500 after 39 s. Here a request that cannot reach the PACS
  fails within seconds as a 503 naming it (:class:`PACSUnreachable`), before anything is stored; the lists
  of scans and labels are answered from the last ones the PACS gave, so what is cached keeps working. Those
  lists are kept in the cache folder too, so that a process started during an outage (MONAI Label scores
  and trains in subprocesses) has them: scoring then scores the cached scans and records the others as
  not fetched, which ``/info/`` shows.
* It answers a save without saying that the scan had a label already; here the answer names the SEG it
  replaces, with its version (the count of this app's SEGs for the scan), time, user and client, and the
  label versions API lists a scan's SEGs and restores one (as a new SEG), as for a local studies folder.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import threading
import time
from contextlib import contextmanager

import numpy as np
import pydicom
import pydicom_seg
import requests
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
from requests.adapters import HTTPAdapter

from apps.slpt.model.checkpoints import atomic_write_json
from lib.label_versions import now_iso, version_to_restore
from lib.validation import InvalidUpload, check_label, read_volume, volume_geometry

logger = logging.getLogger(__name__)

# SeriesDescription of every SEG this app stores; SEGs without it are not labels of this app.
LABEL_SERIES_DESCRIPTION = "SLPT final label"
# Display colours (RGB) shared with OHIF's MONAI Label panel palette for these names.
SEGMENT_COLORS = {"liver": (221, 130, 101), "tumor": (144, 238, 144)}  # OHIF's "liver", "liver tumor"
# A PACS that takes longer than this to accept a connection is reported unreachable; once connected, a
# series or a SEG may take minutes to pass on a slow link.
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 3.0, 300.0
UNAVAILABLE = (502, 503, 504)  # what a proxy in front of a stopped PACS answers
# Within this long of a failed request, listings answer from the last lists without asking the PACS again:
# one /info/ lists several times, and each try at a PACS that drops packets costs the connect timeout.
RECHECK_AFTER_S = 10.0
LAST_LISTS = "pacs_last_lists.json"  # in the cache folder: the lists a later process answers from in an outage


class PACSUnreachable(HTTPException):
    """503: a request could not reach the PACS. Raised before anything is stored, so the client may retry
    the same request once the PACS is back."""

    def __init__(self, url: str, reason: str):
        super().__init__(503, f"the PACS at {url} is unreachable ({reason}); nothing was saved or changed: "
                              "retry when it is back")


class PACSClient(DICOMwebClientX):
    """MONAI Label's DICOMweb client with timeouts, one quick retry instead of five over 30 s, and every
    failure to reach the PACS raised as :class:`PACSUnreachable`; ``outage`` holds the last one until a
    request gets through again."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_http_retry_params(max_attempts=2, wait_exponential_multiplier=250)  # one retry, 0.5 s later
        adapter = _TimeoutAdapter()
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self.outage: dict | None = None
        self._failed_at = 0.0  # time.monotonic() of the last failed request

    def recently_down(self) -> bool:
        return self.outage is not None and time.monotonic() - self._failed_at < RECHECK_AFTER_S

    @contextmanager
    def _reaching(self):
        try:
            yield
        except requests.HTTPError as e:
            if e.response is None or e.response.status_code not in UNAVAILABLE:
                raise
            raise self._down(f"it answered {e.response.status_code}") from e
        except requests.Timeout as e:
            connecting = isinstance(e, requests.ConnectTimeout)
            raise self._down(f"no {'connection' if connecting else 'answer'} within "
                             f"{CONNECT_TIMEOUT_S if connecting else READ_TIMEOUT_S:g} s") from e
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
            raise self._down("connection refused" if "refused" in str(e).lower() else "connection lost") from e
        self.outage = None

    def _down(self, reason: str) -> PACSUnreachable:
        self._failed_at = time.monotonic()
        if self.outage is None or self.outage["reason"] != reason:
            self.outage = {"reason": reason, "since": now_iso()}
        logger.warning("PACS %s unreachable: %s", self.base_url, reason)
        return PACSUnreachable(self.base_url, reason)

    def _http_get(self, *args, **kwargs):
        with self._reaching():
            return super()._http_get(*args, **kwargs)

    def _http_post(self, *args, **kwargs):
        with self._reaching():
            return super()._http_post(*args, **kwargs)

    def _http_delete(self, *args, **kwargs):
        with self._reaching():
            return super()._http_delete(*args, **kwargs)


class _TimeoutAdapter(HTTPAdapter):
    def send(self, request, timeout=None, **kwargs):
        return super().send(request, timeout=timeout or (CONNECT_TIMEOUT_S, READ_TIMEOUT_S), **kwargs)


class SLPTDicomWebDatastore(DICOMWebDatastore):
    """DICOMweb studies; final labels are SEGs written by this app (pydicom-seg, no dcmqi)."""

    def __init__(self, client: DICOMwebClient, labels: dict[str, int], **kwargs):
        super().__init__(client, **kwargs)
        self._labels = dict(labels)
        self._seg_cache = TTLCache(maxsize=1, ttl=settings.MONAI_LABEL_DICOMWEB_CACHE_EXPIRY)
        self._seg_lock = threading.Lock()
        self._seg_refs: dict[str, tuple[str | None, str]] = {}  # SEG series UID -> (image series UID, saved at)
        self._seg_counts: dict[str, int] = {}  # image series UID -> how many of this app's SEGs refer to it
        # The last lists the PACS gave, answered while it is unreachable, by this process or a later one
        self._known_images, self._known_segs = self._read_last_lists()

    # --- the PACS's reachability ---------------------------------------------------------------------

    def check_pacs(self) -> None:
        """Raise :class:`PACSUnreachable` unless the PACS answers a one-study query now (for requests that
        hand out work which needs it: Next Sample opens the study in the viewer, training reads labels)."""
        self._client.search_for_studies(limit=1)

    def pacs_status(self) -> dict:
        """For ``/info/``: whether the PACS answers now, and if not, why and since when."""
        try:
            self.check_pacs()
        except PACSUnreachable as e:
            outage = getattr(self._client, "outage", None) or {}
            return {"url": self._client.base_url, "reachable": False, "error": e.detail, "since": outage.get("since"),
                    "answering_from": "the last lists of scans and labels the PACS gave"}
        return {"url": self._client.base_url, "reachable": True}

    def _skip_if_recently_down(self) -> None:
        """Raise :class:`PACSUnreachable` without asking when a request failed in the last seconds."""
        if getattr(self._client, "recently_down", lambda: False)():
            raise PACSUnreachable(self._client.base_url, self._client.outage["reason"])

    @property
    def _last_lists_path(self) -> str:
        return os.path.join(self._datastore_path, LAST_LISTS)  # the cache folder of this PACS's URL

    def _read_last_lists(self) -> tuple[list[str] | None, dict[str, str] | None]:
        try:
            with open(self._last_lists_path) as f:
                saved = json.load(f)
            return list(saved["images"]), dict(saved["segs"]) if saved.get("segs") is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            return None, None

    def _keep_last_lists(self) -> None:
        try:
            atomic_write_json(self._last_lists_path, {"images": self._known_images, "segs": self._known_segs})
        except OSError as e:  # only a fallback for later processes: the listing itself succeeded
            logger.warning("could not keep the PACS's last lists in %s: %s", self._last_lists_path, e)

    def list_images(self) -> list[str]:
        try:
            if self._known_images is not None:
                self._skip_if_recently_down()
            listed = super().list_images()  # MONAI Label keeps it for its cache expiry
            if listed != self._known_images:
                self._known_images = listed
                self._keep_last_lists()
        except PACSUnreachable:
            if self._known_images is None:
                raise
            logger.warning("PACS unreachable: listing the %d series it listed last", len(self._known_images))
        return self._known_images

    # --- which scans are labelled -------------------------------------------------------------------

    def final_segs(self) -> dict[str, str]:
        """``{image series UID: newest SEG series UID}`` over the SEGs this app wrote."""
        with self._seg_lock:
            if "segs" not in self._seg_cache:
                try:
                    if self._known_segs is not None:
                        self._skip_if_recently_down()
                    self._seg_cache["segs"] = self._query_final_segs()
                except PACSUnreachable:
                    if self._known_segs is None:
                        raise
                    logger.warning("PACS unreachable: answering from the %d labels it listed last",
                                   len(self._known_segs))
                    return dict(self._known_segs)
                if self._seg_cache["segs"] != self._known_segs:
                    self._known_segs = dict(self._seg_cache["segs"])
                    self._keep_last_lists()
            return dict(self._seg_cache["segs"])

    def _query_final_segs(self) -> dict[str, str]:
        images = set(self.list_images())
        found: dict[str, tuple[str, str]] = {}
        counts: dict[str, int] = {}
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
            counts[image] = counts.get(image, 0) + 1
            if image in images and (image not in found or stamp >= found[image][0]):
                found[image] = (stamp, uid)
        self._seg_counts = counts
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
        return self._seg_nifti(seg_uid)

    def _seg_nifti(self, seg_uid: str) -> str:
        """A SEG of this app (a listed final label or an earlier version) as a cached NIfTI label."""
        folder = os.path.realpath(os.path.join(self._datastore.label_path(DefaultLabelTag.FINAL), seg_uid))
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

        previous = self.final_segs().get(image_id)  # before the upload: the label this save replaces
        version = max(self._seg_counts.get(image_id, 0), 1) + 1 if previous else 1
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        seg_file = nifti_to_dicom_seg(image_dir, label_filename, self.segment_info(label_filename), use_itk=False)
        if not seg_file:
            raise HTTPException(422, "label is empty: draw at least one voxel of liver or tumour before saving")
        _stamp_now(seg_file)
        try:  # a PACS that cannot be reached raises PACSUnreachable (503) here, before anything is stored
            seg_uid = dicom_web_upload_dcm(seg_file, self._client)
        finally:
            os.unlink(seg_file)
        with self._seg_lock:
            self._seg_cache.clear()  # the next question "is it labelled?" asks the PACS again
            if self._known_segs is not None:
                self._known_segs[image_id] = seg_uid
            self._seg_counts[image_id] = version
        info = {**(label_info or {}), "SeriesInstanceUID": seg_uid, "version": version,
                "replaces": self._replaced(image_id, previous, version - 1)}
        local_id = LocalDatastore.save_label(self, image_id, label_filename, label_tag, info)
        logger.info("Saved final label of %s as SEG %s", image_id, seg_uid)
        return local_id

    def _replaced(self, image_id: str, seg_uid: str | None, version: int) -> dict | None:
        """What the answer to a save says of the SEG it replaces: its version, time, and who saved it where
        this server did (the local copy's info)."""
        if seg_uid is None:
            return None
        saved_at = _saved_at(self._seg_refs.get(seg_uid, (None, ""))[1])
        local = LocalDatastore.get_label_info(self, image_id, DefaultLabelTag.FINAL) or {}
        mine = local.get("SeriesInstanceUID") == seg_uid
        return {"version": version, "seg": seg_uid, "saved_at": saved_at,
                **{k: local.get(k) if mine else None for k in ("user", "client_id")}}

    # --- label versions: every SEG this app saved stays in the PACS, the newest counts ---------------

    def list_label_versions(self, image_id: str) -> list[dict]:
        """This app's SEGs of ``image_id``, oldest first: version ``n`` is the ``n``-th saved, as a save's
        answer numbers it; the newest is the final label. Who saved a version is known for the one this
        server saved last (its local copy's info)."""
        if image_id not in self.list_images():
            raise HTTPException(404, f"no image {image_id!r} in the DICOMweb store")
        current = self.final_segs().get(image_id)  # also reads the header of every SEG not seen before
        segs = sorted((stamp, uid) for uid, (image, stamp) in self._seg_refs.items() if image == image_id)
        local = LocalDatastore.get_label_info(self, image_id, DefaultLabelTag.FINAL) or {}
        return [{"version": n, "seg": uid, "saved_at": _saved_at(stamp), "current": uid == current, "available": True,
                 **{k: local.get(k) if local.get("SeriesInstanceUID") == uid else None for k in ("user", "client_id")}}
                for n, (stamp, uid) in enumerate(segs, 1)]

    def restore_label_version(self, image_id: str, version: int, label_info: dict) -> str:
        """Save an earlier SEG's label again, as a new SEG (the newest counts; nothing is overwritten)."""
        record = version_to_restore(self.list_label_versions(image_id), image_id, version)
        return self.save_label(image_id, self._seg_nifti(record["seg"]), DefaultLabelTag.FINAL,
                               {**label_info, "restored_from": version})

    def scans_with_several_label_versions(self) -> int | None:
        """Scans with more than one SEG of this app; ``None`` while the PACS cannot be asked."""
        try:
            self.final_segs()
        except PACSUnreachable:
            return None
        return sum(n > 1 for n in self._seg_counts.values())

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


def _saved_at(stamp: str) -> str | None:
    """A SEG's SeriesDate + SeriesTime as the local datastore's ``saved_at``."""
    try:
        return now_iso(datetime.datetime.strptime(stamp[:14], "%Y%m%d%H%M%S").timestamp())
    except ValueError:
        return stamp or None


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
    client = PACSClient(url=url.rstrip("/"), session=session,
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
