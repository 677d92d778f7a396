"""A label save killed half-way is undone at the next start: the label in place is the last save that
completed, no version record names a label that never landed, and no temporary file stays behind.

The saves run in a forked process on real files, and are killed: at random moments with SIGKILL, and
exactly between writing the version records and renaming the label into place
(:mod:`tests.interrupted_save`). The next :class:`~lib.datastore.ValidatingDatastore` is what a restarted server builds.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from lib.datastore import ValidatingDatastore
from lib.label_versions import leftovers, sha256_file
from tests.interrupted_save import save_killed_before_the_label_lands

SCAN = "scan0"


def studies_with_labels(tmp_path: Path, n: int = 2) -> tuple[Path, list[Path]]:
    """A studies folder holding one scan, and ``n`` different labels for it outside the folder."""
    studies = tmp_path / "studies"
    studies.mkdir()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), affine), studies / f"{SCAN}.nii.gz")
    labels = []
    for i in range(n):
        label = np.zeros((16, 16, 16), np.uint8)
        label[2:10 + i, 2:10, 2:10] = 1
        label[4:6, 4:6, 4:6 + i] = 2
        path = tmp_path / f"label{i}.nii.gz"
        nib.save(nib.Nifti1Image(label, affine), path)
        labels.append(path)
    return studies, labels


def assert_consistent(studies: Path) -> None:
    """What any start must find: the newest record is the label in place, every older one's file is kept
    and holds what the record says, and no temporary or undo file is left anywhere."""
    store = ValidatingDatastore(str(studies))
    assert not [p for folder in (studies, *studies.rglob("*")) if folder.is_dir() for p in leftovers(folder)]
    versions = store.list_label_versions(SCAN)
    if not store.get_label_uri(SCAN, "final"):
        assert not versions
        return
    assert versions and versions[-1]["current"], versions
    for record in versions[:-1]:
        assert record["available"], record
        assert sha256_file(store.label_versions.file(SCAN, record)) == record["sha256"]


def test_a_save_killed_before_its_label_lands_is_undone_at_the_next_start(tmp_path):
    studies, (first, second) = studies_with_labels(tmp_path)
    store = ValidatingDatastore(str(studies))
    store.save_label(SCAN, str(first), "final", {"user": "reader-1"})

    save_killed_before_the_label_lands(studies, SCAN, second, {"user": "reader-2"})
    final = studies / "labels" / "final" / f"{SCAN}.nii.gz"
    assert final.read_bytes() == first.read_bytes()
    assert leftovers(final.parent), "the killed save left no temporary file: it was not killed half-way"

    restarted = ValidatingDatastore(str(studies))
    assert len(restarted.interrupted_saves) == 2, restarted.interrupted_saves  # the save, and its temporary file
    assert "version 2" in restarted.interrupted_saves[0] and "reader-2" in restarted.interrupted_saves[0]
    assert "version 1 stays" in restarted.interrupted_saves[0]
    assert_consistent(studies)
    assert [(v["version"], v["user"], v["current"]) for v in restarted.list_label_versions(SCAN)] == \
        [(1, "reader-1", True)]

    restarted.save_label(SCAN, str(second), "final", {"user": "reader-2"})  # saved again: version 2 this time
    versions = restarted.list_label_versions(SCAN)
    assert [(v["version"], v["user"], v["current"]) for v in versions] == [(1, "reader-1", False), (2, "reader-2", True)]
    assert final.read_bytes() == second.read_bytes()


def test_saves_killed_at_random_moments_leave_a_consistent_store(tmp_path):
    studies, labels = studies_with_labels(tmp_path, n=3)
    ValidatingDatastore(str(studies))  # the folder's datastore_v2.json, before the writer starts

    for delay in (0.25, 0.31, 0.37, 0.43, 0.49, 0.55):
        pid = os.fork()
        if pid == 0:  # one annotator after another, as fast as the store saves
            try:
                store, n = ValidatingDatastore(str(studies)), 0
                while True:
                    n += 1
                    store.save_label(SCAN, str(labels[n % len(labels)]), "final", {"user": f"reader-{n}"})
            finally:
                os._exit(1)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert_consistent(studies)
