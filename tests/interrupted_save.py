"""A label save whose process dies between writing the version records and renaming the label into place:
the one instant of a save that leaves records and label disagreeing. The save runs in a forked process on
the real studies folder and ends there with ``os._exit``, which, like ``kill -9``, runs no undo."""

from __future__ import annotations

import os
from pathlib import Path

from lib.datastore import ValidatingDatastore
from lib.label_versions import LabelWrite


def in_child(work) -> int:
    """Run ``work()`` in a forked process; its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            work()
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def save_killed_before_the_label_lands(studies: Path, image: str, label: Path, info: dict) -> None:
    """Save ``label`` as ``image``'s final label in ``studies``, dying just before the label's rename."""

    def save():
        put = LabelWrite.put

        def dying_put(self, tmp, target, previous):
            if target.parent.name == "final" and target.name.startswith(f"{image}."):
                os._exit(9)
            put(self, tmp, target, previous)

        LabelWrite.put = dying_put
        ValidatingDatastore(str(studies)).save_label(image, str(label), "final", info)

    assert in_child(save) == 9, "the save finished or failed before reaching the label's rename"
