"""MONAI Label's local datastore, with uploads checked before anything is written.

MONAI Label stores whatever a client sends: a label that is not an image, or of the wrong shape or
geometry, is copied into ``labels/final`` and breaks the next training round, and an id or tag is joined into a path
unchecked (``tag=../../x`` writes outside the studies folder). This subclass runs ``lib.validation``
first and answers a 4xx with a message; on a refusal nothing under the studies folder changes.

MONAI Label also rewrites ``datastore_v2.json`` in place: it truncates the file, then serialises the whole
datastore into it. A process killed in between (the scoring subprocess writes the file after every scan)
leaves it empty or torn, and the next start fails on it. Here the file is replaced atomically instead.

MONAI Label copies a label over the previous one in place: a full disk left a truncated label that counted
as saved, and a second save of a scan erased the first annotator's work. Here a label is written whole or
not at all (a 507 naming the disk when there is no room), and every final label stays restorable, with who
saved it and when (``lib/label_versions.py``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from apps.slpt.model.checkpoints import atomic_write_bytes
from lib.label_versions import (
    MANIFEST,
    NO_SPACE,
    LabelVersions,
    LabelWrite,
    leftovers,
    manifest_bytes,
    now_iso,
    sha256_file,
    version_to_restore,
)
from lib.validation import (
    TASK_LABEL_VALUES,
    InvalidUpload,
    check_image,
    check_label,
    check_safe_id,
    volume_geometry,
)

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
# Who saved a version, as the label's info holds it: MONAI Label's user (``admin`` without auth; the app's
# save endpoint records it) and the client id OHIF or Slicer send.
WHO = ("user", "client_id")


class ValidatingDatastore(LocalDatastore):
    """Local studies folder: 404 for an unknown image, 409 for a taken id, 422 for a bad id, tag or file;
    labels and ``datastore_v2.json`` written atomically; every final label kept as a version."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self, "_handler", None) is not None:  # auto-reload: a rename is how other processes write
            self._handler.on_moved = self._on_replaced
        with FileLock(self._lock_file):  # held by every save: none is half-way while this runs
            self.interrupted_saves = self._undo_interrupted_saves()
        for sentence in self.interrupted_saves:
            logger.warning("start-up: %s", sentence)

    def add_image(self, image_id, image_filename, image_info):
        image_id = image_id or self._to_id(os.path.basename(image_filename))[0]
        _check(check_safe_id, image_id, "image id")
        if self.get_image_uri(image_id):
            raise HTTPException(409, f"image {image_id!r} already exists; remove it first (DELETE /datastore/image) "
                                     "to replace it, so its labels are not silently orphaned")
        _check(check_image, image_filename)
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id, label_filename, label_tag, label_info, restored_from: int | None = None):
        image = self.get_image_uri(image_id)
        if not image:
            raise HTTPException(404, f"no image {image_id!r} in the datastore to save a label for")
        _check(check_safe_id, label_tag, "label tag")
        try:
            geometry = volume_geometry(image)
        except InvalidUpload as e:  # the stored scan, not the upload, is the problem
            raise HTTPException(409, f"the stored image {image_id!r} cannot be read, so no label can be "
                                     f"checked against it: {e}") from e
        # Task values are enforced where training reads them; other tags also hold model outputs, e.g. the
        # backbone's organ map that batch inference saves as "original".
        values = TASK_LABEL_VALUES if label_tag == DefaultLabelTag.FINAL.value else None
        _check(check_label, label_filename, geometry, values)
        return self._store_label(image_id, label_filename, label_tag, label_info, restored_from)

    @property
    def label_versions(self) -> LabelVersions:
        return LabelVersions(self._datastore.label_path(FINAL))

    def list_label_versions(self, image_id: str) -> list[dict]:
        """Every kept version of ``image_id``'s final label, oldest first (``lib.label_versions``)."""
        self._require(image_id)
        current = self.get_label_uri(image_id, FINAL)
        return self.label_versions.listing(image_id, Path(current) if current else None)

    def restore_label_version(self, image_id: str, version: int, label_info: dict) -> str:
        """Make an earlier version the final label again, as a new version (nothing is overwritten)."""
        record = version_to_restore(self.list_label_versions(image_id), image_id, version)
        source = self.label_versions.file(image_id, record)
        if not record["available"]:
            raise HTTPException(410, f"the file of version {version} of {image_id!r} is gone from {source.parent}")
        return self.save_label(image_id, str(source), FINAL, label_info, restored_from=version)

    def remove_label(self, label_id, label_tag):
        """MONAI Label's removal; a final label is kept as a version first, and a record says it was removed
        (``GET /datastore/label/versions`` lists both; the label can be restored)."""
        self._require(label_id)
        current = self.get_label_uri(label_id, label_tag)
        if label_tag != FINAL or not current or not os.path.isfile(current):
            return super().remove_label(label_id, label_tag)
        obj, path = self._datastore.objects[label_id], Path(current)
        info = {"ts": int(time.time())}
        try:
            with FileLock(self._lock_file), LabelWrite() as write:
                kept = self._record_version(write, label_id, path, None, None, info, None)
                write.remove(path, kept)
                old = obj.labels.pop(FINAL)
                write.on_undo(lambda: obj.labels.__setitem__(FINAL, old))
                self._update_datastore_file(lock=False)
        except OSError as e:
            raise storage_error(e, path.parent, f"the removal of the final label of {label_id!r}") from e

    def scans_with_several_label_versions(self) -> int:
        return self.label_versions.scans_with_several()

    def status(self):
        return {**super().status(), "scans_with_several_label_versions": self.scans_with_several_label_versions()}

    def _store_label(self, image_id, label_filename, tag, label_info, restored_from=None) -> str:
        """MONAI Label's ``save_label``, written whole or not at all; a final label being replaced is kept as
        a version, and the new label's info says which version it is and which one it replaces."""
        obj = self._datastore.objects[image_id]
        _, ext = self._to_id(os.path.basename(label_filename))
        folder = Path(self._datastore.label_path(tag))
        dest = folder / self._filename(image_id, ext)
        info = {k: v for k, v in (label_info or {}).items() if k not in ("version", "replaces", "restored_from")}
        info.update(ts=int(time.time()), name=dest.name)
        try:
            data = Path(label_filename).read_bytes()
            with FileLock(self._lock_file), LabelWrite() as write:
                write.makedirs(folder)
                old = obj.labels.get(tag)
                previous = folder / self._filename(image_id, old.ext) if old else None
                previous = previous if previous is not None and previous.is_file() else None
                tmp = write.temp(folder, dest.name, data)  # the big write first: a full disk stops it here
                if tag == FINAL:
                    kept = self._record_version(write, image_id, previous, data, ext, info, restored_from)
                else:
                    kept = write.backup(previous) if previous is not None else None
                if previous is not None and previous != dest:  # another format (.nrrd after .nii.gz)
                    write.put(tmp, dest, None)
                    write.remove(previous, kept)
                else:
                    write.put(tmp, dest, kept)
                obj.labels[tag] = DataModel(info=info, ext=ext)
                write.on_undo(lambda: obj.labels.__setitem__(tag, old) if old else obj.labels.pop(tag, None))
                self._update_datastore_file(lock=False)
        except OSError as e:
            raise storage_error(e, folder, f"the {tag} label of {image_id!r}") from e
        return image_id

    def _record_version(self, write: LabelWrite, image_id, previous: Path | None, data: bytes | None,
                        ext: str | None, info: dict, restored_from: int | None) -> Path | None:
        """Keep the final label being replaced (``previous``) and add the new one's record to the scan's
        version history (``data`` ``None``: a record of the label's removal); returns the kept copy of
        ``previous``. Sets ``version`` and ``replaces`` in ``info``."""
        versions = self.label_versions
        history = versions.history(image_id)
        if previous is not None:
            sha = sha256_file(previous)
            if not history or history[-1].get("sha256") != sha:
                # Saved before versions were kept, or written into the folder from outside the app.
                old_info = self._datastore.label(image_id, FINAL).info
                history.append({"version": (history[-1]["version"] + 1) if history else 1,
                                "ext": previous.name[len(image_id):], "sha256": sha,
                                "saved_at": now_iso(old_info.get("ts") or previous.stat().st_mtime),
                                **{k: old_info.get(k) for k in WHO}, "note": "not saved through this app's "
                                "versioned save (an older app version, or a file copied into the folder)"})
        replaced = history[-1] if previous is not None else None
        record = {"version": (history[-1]["version"] + 1) if history else 1, "saved_at": now_iso(info["ts"]),
                  **{k: info.get(k) for k in WHO}}
        record.update({"removed": True} if data is None else {"ext": ext, "sha256": hashlib.sha256(data).hexdigest()})
        if restored_from is not None:
            record["restored_from"] = info["restored_from"] = restored_from
        history.append(record)
        folder = versions.dir(image_id)
        write.makedirs(folder)
        kept = None
        if replaced is not None:
            kept = versions.file(image_id, replaced)
            if not kept.exists():
                write.keep(previous, kept)
        manifest = folder / MANIFEST
        tmp = write.temp(folder, MANIFEST, manifest_bytes(image_id, history))
        write.put(tmp, manifest, write.backup(manifest))
        info["version"] = record["version"]
        if replaced is not None:
            info["replaces"] = {k: replaced.get(k) for k in ("version", *WHO, "saved_at")}
        return kept

    # MONAI Label raises ImageNotFoundException for these, which its server answers with a 500.
    def remove_image(self, image_id):
        self._require(image_id)
        return super().remove_image(image_id)

    def update_image_info(self, image_id, info):
        self._require(image_id)
        return super().update_image_info(image_id, info)

    def _undo_interrupted_saves(self) -> list[str]:
        """What saves killed half-way left, undone (:meth:`lib.label_versions.LabelVersions.recover`), and
        the temporary files of other interrupted writes (labels of other tags, ``datastore_v2.json``)
        removed; one sentence per thing undone."""
        undone = self.label_versions.recover(lambda i: Path(u) if (u := self.get_label_uri(i, FINAL)) else None)
        labels = Path(self._datastore.label_path(FINAL)).parent
        config = Path(self._datastore_config_path)
        stray = [p for p in leftovers(config.parent) if p.name.startswith(f".{config.name}.")]  # only ours there
        for folder in (p for p in labels.iterdir() if p.is_dir()) if labels.is_dir() else ():
            stray += leftovers(folder)
        for path in stray:
            path.unlink()
            undone.append(f"removed {path.name}, a file left by an interrupted write in {path.parent}")
        return undone

    def _update_datastore_file(self, lock=True):
        """MONAI Label's writer, as a write to a temporary file renamed over ``datastore_v2.json``."""

        def write():
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_bytes(self._datastore_config_path, text.encode())
            self._config_ts = os.stat(self._datastore_config_path).st_mtime  # our own rename: no reload

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()  # the caller holds the lock

    def _on_replaced(self, event):
        if os.fsdecode(event.dest_path) == self._datastore_config_path:
            self._init_from_datastore_file()  # reloads only if the file is not the one this process wrote

    def _require(self, image_id):
        if not self.get_image_uri(image_id):
            raise HTTPException(404, f"no image {image_id!r} in the datastore")


def storage_error(error: OSError, folder, what: str) -> HTTPException:
    """The answer for a write that failed: 507 when the disk has no room, else 503; both name the folder and
    say that nothing was stored."""
    if error.errno in NO_SPACE:
        reason = "file too large for the server's file-size limit" if error.errno == errno.EFBIG else \
            "no space left on device"
        return HTTPException(507, f"{reason}: {what} could not be written to {folder}; nothing was saved and the "
                                  "previous state is unchanged. Free space on that disk, then save again.")
    return HTTPException(503, f"{what} could not be written to {folder} ({error.strerror or error}); nothing "
                              "was saved and the previous state is unchanged")


def _check(check, *args):
    try:
        return check(*args)
    except InvalidUpload as e:
        raise HTTPException(422, str(e)) from e
