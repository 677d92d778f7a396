"""MONAI Label's local datastore, with uploads checked before anything is written.

MONAI Label stores whatever a client sends: a label that is not an image, or of the wrong shape or
geometry, is copied into ``labels/final`` and breaks the next training round, and an id or tag is joined into a path
unchecked (``tag=../../x`` writes outside the studies folder). This subclass runs ``lib.validation``
first and answers a 4xx with a message; on a refusal nothing under the studies folder changes.

MONAI Label also rewrites ``datastore_v2.json`` in place: it truncates the file, then serialises the whole
datastore into it. A process killed in between (the scoring subprocess writes the file after every scan)
leaves it empty or torn, and the next start fails on it. Here the file is replaced atomically instead.
"""

from __future__ import annotations

import json
import os

from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from apps.slpt.model.checkpoints import atomic_write_bytes
from lib.validation import (
    TASK_LABEL_VALUES,
    InvalidUpload,
    check_image,
    check_label,
    check_safe_id,
    volume_geometry,
)


class ValidatingDatastore(LocalDatastore):
    """Local studies folder: 404 for an unknown image, 409 for a taken id, 422 for a bad id, tag or file;
    ``datastore_v2.json`` written atomically."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self, "_handler", None) is not None:  # auto-reload: a rename is how other processes write
            self._handler.on_moved = self._on_replaced

    def add_image(self, image_id, image_filename, image_info):
        image_id = image_id or self._to_id(os.path.basename(image_filename))[0]
        _check(check_safe_id, image_id, "image id")
        if self.get_image_uri(image_id):
            raise HTTPException(409, f"image {image_id!r} already exists; remove it first (DELETE /datastore/image) "
                                     "to replace it, so its labels are not silently orphaned")
        _check(check_image, image_filename)
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id, label_filename, label_tag, label_info):
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
        return super().save_label(image_id, label_filename, label_tag, label_info)

    # MONAI Label raises ImageNotFoundException for these, which its server answers with a 500.
    def remove_image(self, image_id):
        self._require(image_id)
        return super().remove_image(image_id)

    def update_image_info(self, image_id, info):
        self._require(image_id)
        return super().update_image_info(image_id, info)

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


def _check(check, *args):
    try:
        return check(*args)
    except InvalidUpload as e:
        raise HTTPException(422, str(e)) from e
