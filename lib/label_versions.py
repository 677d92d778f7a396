"""Every final label a scan was given, with who saved it and when: MONAI Label keeps only the newest.

The local datastore keeps them beside the labels, under its final-label folder::

    labels/final/<id>.nii.gz                   the newest label: the only one MONAI Label (and training) sees
    labels/final/.versions/<id>/versions.json  one record per version, oldest first
    labels/final/.versions/<id>/v0001.nii.gz   each earlier version's file, as it was saved

MONAI Label lists ``labels/<tag>/*<ext>`` without descending into folders, its file watcher's patterns stop
at the same level, and an image id never starts with a dot, so nothing under ``.versions`` is taken for an
image, a label or a tag.

A label file is written whole or not at all: to a temporary file in its own folder, then renamed into
place. :class:`LabelWrite` does the writes of one save in an order where everything that needs disk space
comes first, and undoes them all if any step fails (a full disk, most often). A save whose process was
killed half-way (``kill -9``, a power cut) cannot undo itself: :meth:`LabelVersions.recover` does it at the
next start, so a save is either done and answered, or was never made.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from fastapi import HTTPException

logger = logging.getLogger(__name__)

VERSIONS_DIR = ".versions"
MANIFEST = "versions.json"
# Errors that mean the disk (or a quota, or the process's file-size limit) has no room for the write.
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def now_iso(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))


def write_temp(folder: str | os.PathLike, name: str, data: bytes) -> Path:
    """``data`` in a new temporary file beside ``folder/name`` (fsynced; never matched as a label or image,
    which end in ``.nii.gz``, ``.nrrd``, ...); removed again if writing fails."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def leftovers(folder: Path) -> list[Path]:
    """The temporary files (``.tmp``) and undo links (``.bak``) that an interrupted save leaves in ``folder``:
    hidden names, never a label."""
    return sorted(p for p in folder.glob(".*") if p.suffix in (".tmp", ".bak") and p.is_file())


def keep_copy(source: Path, target: Path) -> None:
    """``target`` becomes another name of ``source`` (a hard link: no disk space needed; labels are only ever
    replaced by a rename, never rewritten in place), or a whole copy where links are not supported."""
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno in NO_SPACE:
            raise
        tmp = write_temp(target.parent, target.name, source.read_bytes())
        os.replace(tmp, target)


def manifest_bytes(image_id: str, history: list[dict[str, Any]]) -> bytes:
    """A scan's ``versions.json``."""
    return json.dumps({"image": image_id, "versions": history}, indent=1).encode()


def version_to_restore(versions: list[dict[str, Any]], image_id: str, version: int) -> dict[str, Any]:
    """The record of ``version`` among a scan's listed ``versions``, if it can be restored: a 404 for an
    unknown version, a 409 for the current label or a removal."""
    record = next((r for r in versions if r["version"] == version), None)
    if record is None:
        raise HTTPException(404, f"no version {version} of the final label of {image_id!r}; "
                                 f"versions: {[r['version'] for r in versions]}")
    if record["current"]:
        raise HTTPException(409, f"version {version} is already the final label of {image_id!r}")
    if record.get("removed"):
        raise HTTPException(409, f"version {version} of {image_id!r} is the label's removal; restore the version "
                                 "before it")
    return record


class LabelVersions:
    """The version records and earlier files of the final labels in ``final_folder``."""

    def __init__(self, final_folder: str | os.PathLike):
        self.folder = Path(final_folder)
        self.root = self.folder / VERSIONS_DIR

    def dir(self, image_id: str) -> Path:
        return self.root / image_id

    def history(self, image_id: str) -> list[dict[str, Any]]:
        """The records of ``image_id``'s versions, oldest first; ``[]`` if none was kept."""
        try:
            return json.loads((self.dir(image_id) / MANIFEST).read_text())["versions"]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as e:
            # The manifest is written by rename, so this is damage from outside; the files stay where they are.
            logger.warning("label versions of %s are unreadable (%s); their files stay in %s", image_id, e,
                           self.dir(image_id))
            return []

    def file(self, image_id: str, record: dict[str, Any]) -> Path:
        """Where an earlier version's file is kept."""
        return self.dir(image_id) / f"v{int(record['version']):04d}{record['ext']}"

    def listing(self, image_id: str, current: Path | None) -> list[dict[str, Any]]:
        """The records as the API shows them: the newest one is ``current`` when ``current`` (the label file
        in place) still holds what it saved; each says whether its file can be restored."""
        history = self.history(image_id)
        current_sha = sha256_file(current) if current and current.is_file() else None
        shown = []
        for i, record in enumerate(history):
            is_current = i == len(history) - 1 and current_sha is not None and record.get("sha256") == current_sha
            available = is_current or (not record.get("removed") and self.file(image_id, record).is_file())
            shown.append({**record, "current": is_current, "available": available})
        return shown

    def write_history(self, image_id: str, history: list[dict[str, Any]]) -> None:
        """Replace ``image_id``'s records (atomically; the manifest goes when none is left)."""
        manifest = self.dir(image_id) / MANIFEST
        if not history:
            manifest.unlink(missing_ok=True)
            return
        os.replace(write_temp(manifest.parent, MANIFEST, manifest_bytes(image_id, history)), manifest)

    def recover(self, current: Callable[[str], Path | None]) -> list[str]:
        """Undo the saves that were killed half-way, and say what was undone (one sentence each).

        A save writes the new label to a temporary file first, then the version records, then renames the label
        into place. Killed in between, it leaves the label it replaces in place, records naming a version whose
        label never landed, and its temporary files. The label in place stays (it is the last save that
        completed, and the one its client was answered for); records of a version that never landed (its file
        is a leftover temporary file, not the label in place and not kept) are dropped; leftovers are removed.
        ``current(image_id)``: the final label file in place, or ``None``. The caller holds the datastore's
        lock, so no save is under way.
        """
        temps = {sha256_file(p): p for p in leftovers(self.folder) if p.suffix == ".tmp"}
        undone = []
        for folder in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if not folder.is_dir():
                continue
            image_id, history = folder.name, self.history(folder.name)
            dropped = []
            if history and history[-1].get("sha256") in temps:  # else no save of it was cut off: nothing to hash
                in_place = current(image_id)
                in_place_sha = sha256_file(in_place) if in_place is not None and in_place.is_file() else None
                while history and history[-1].get("sha256") in temps and history[-1].get("sha256") != in_place_sha \
                        and not self.file(image_id, history[-1]).exists():
                    dropped.append(history.pop())
            if dropped:
                self.write_history(image_id, history)
                for record in dropped:
                    undone.append(f"the save of version {record['version']} of {image_id}'s final label (by "
                                  f"{record.get('user') or record.get('client_id') or 'an unnamed client'} at "
                                  f"{record.get('saved_at')}) was interrupted before its label was in place; "
                                  f"{'version ' + str(history[-1]['version']) if history else 'no label'} "
                                  "stays, so that save must be made again")
            for path in leftovers(folder):
                path.unlink()
        for path in leftovers(self.folder):
            path.unlink()
            undone.append(f"removed {path.name}, a file left by an interrupted save in {self.folder}")
        return undone

    def scans_with_several(self) -> int:
        """How many scans have more than one version kept."""
        if not self.root.is_dir():
            return 0
        return sum(len(self.history(d.name)) > 1 for d in self.root.iterdir() if d.is_dir())


class LabelWrite:
    """The file writes of one label save, undone together if any of them fails.

    Writes that need disk space (the new label and manifest as temporary files, a copy of the label being
    replaced) come first; then renames put them in place. Each step registers how to undo it, and
    :meth:`rollback` runs those in reverse. Used as a context manager: an exception rolls back and
    propagates; a clean exit drops what was kept only for the undo.
    """

    def __init__(self):
        self._undo: list[Callable[[], None]] = []
        self._cleanup: list[Path] = []

    def __enter__(self) -> LabelWrite:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is not None:
            self.rollback()
            return
        for path in self._cleanup:
            path.unlink(missing_ok=True)

    def temp(self, folder: Path, name: str, data: bytes) -> Path:
        tmp = write_temp(folder, name, data)
        self._undo.append(lambda: tmp.unlink(missing_ok=True))
        return tmp

    def makedirs(self, folder: Path) -> None:
        missing = []
        for parent in [folder, *folder.parents]:
            if parent.is_dir():
                break
            missing.append(parent)
        folder.mkdir(parents=True, exist_ok=True)
        for made in missing:  # innermost first, so each rmdir finds its folder empty
            self._undo.append(lambda made=made: made.rmdir())

    def keep(self, source: Path, target: Path) -> None:
        """``target`` keeps ``source``'s content from now on (see :func:`keep_copy`)."""
        keep_copy(source, target)
        self._undo.append(lambda: target.unlink(missing_ok=True))

    def put(self, tmp: Path, target: Path, previous: Path | None) -> None:
        """Rename ``tmp`` over ``target``; undone by putting ``previous`` (a kept copy of what ``target``
        held, or ``None`` if nothing was there) back."""
        os.replace(tmp, target)
        if previous is None:
            self._undo.append(lambda: target.unlink(missing_ok=True))
        else:
            self._undo.append(lambda: os.replace(previous, target))

    def remove(self, path: Path, kept: Path) -> None:
        """Remove ``path``, whose content ``kept`` holds; undone by putting it back from ``kept``."""
        path.unlink()
        self._undo.append(lambda: keep_copy(kept, path))

    def backup(self, path: Path) -> Path | None:
        """A hard link to ``path`` for the undo, removed after a clean save; ``None`` if ``path`` is absent."""
        if not path.exists():
            return None
        kept = _linked(path)
        self._undo.append(lambda: kept.unlink(missing_ok=True))
        self._cleanup.append(kept)
        return kept

    def on_undo(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def rollback(self) -> None:
        for undo in reversed(self._undo):
            try:
                undo()
            except OSError as e:  # keep undoing the rest; what could not be undone is in the log
                logger.error("undoing part of a failed label save failed: %s", e)
        self._undo.clear()


def _linked(path: Path) -> Path:
    """A new hidden name (hard link) for ``path``'s current content, in its folder."""
    kept = path.with_name(f".{path.name}.{uuid.uuid4().hex}.bak")
    keep_copy(path, kept)
    return kept
