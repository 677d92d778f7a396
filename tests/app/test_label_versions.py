"""Label versions and a full disk, through the real server (issue 42, parts 1 and 3).

Two annotators save the same scan: both labels are kept, the second answer names the first, an earlier
version can be listed and restored (as a new version), and training reads only the newest; a removed label
is kept as a version too. The studies
folder on a real small filesystem (a tmpfs the test mounts, so it runs as root; else it skips and says why)
filled to the last byte: a label save answers 507 naming the disk, and nothing in the store changes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phantoms.io import image_id, write_studies
from tests.app.conftest import start_server, stop_server
from tests.app.helpers import SMALL, wait
from tests.small_disk import fill, tmpfs

pytestmark = pytest.mark.server

SEEDS = (930, 931)
TINY = {"max_epochs": 1, "iterations_per_epoch": 1, "patch_size": 32}
# Training and scoring only when asked, so nothing writes to the store behind the test's back.
CONF = {"slpt_train_after_labels": "1000", "slpt_min_round_size": "2"}


def put_label(server, image, content: bytes, client: str | None = None, filename="label.nii.gz"):
    data = {"params": f'{{"client_id": "{client}"}}'} if client else None
    return server.put("/datastore/label", params={"image": image, "tag": "final"},
                      files={"label": (filename, content)}, data=data)


def without_tumour(truth: bytes) -> bytes:
    """The same label with its tumour painted as liver: a second annotator's different label."""
    img = nib.Nifti1Image.from_bytes(gzip.decompress(truth))
    labels = np.asarray(img.dataobj).astype(np.uint8)
    labels[labels == 2] = 1
    return gzip.compress(nib.Nifti1Image(labels, img.affine).to_bytes())


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def settled(server) -> None:
    """Start-up scoring has finished writing into the store."""
    wait(lambda: server.get("/scoring/").status_code != 200
         or server.get("/scoring/").json().get("status") in ("DONE", "ERROR"), timeout=600, every=1)


def test_two_annotators_both_versions_kept_restore_and_train_on_the_newest(tmp_path):
    studies = tmp_path / "studies"
    write_studies(studies, SEEDS, spec=SMALL, ground_truth=tmp_path / "truth")
    srv = start_server(tmp_path, studies, {**CONF, "slpt_model_dir": str(tmp_path / "prompts")})
    try:
        scan, other = (image_id(s) for s in SEEDS)
        first = (tmp_path / "truth" / f"{scan}.nii.gz").read_bytes()
        second = without_tumour(first)
        final = studies / "labels" / "final" / f"{scan}.nii.gz"

        r = put_label(srv, scan, first, client="reader-1")
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 1 and r.json()["replaces"] is None, r.json()

        r = put_label(srv, scan, second, client="reader-2")
        assert r.status_code == 200, r.text
        replaces = r.json()["replaces"]
        assert r.json()["version"] == 2 and replaces["version"] == 1 and replaces["client_id"] == "reader-1", r.json()
        assert replaces["user"] and replaces["saved_at"], replaces
        assert final.read_bytes() == second

        versions = srv.get("/datastore/label/versions", params={"image": scan}).json()["versions"]
        assert [(v["version"], v["client_id"], v["current"]) for v in versions] == \
            [(1, "reader-1", False), (2, "reader-2", True)]
        kept = studies / "labels" / "final" / ".versions" / scan / "v0001.nii.gz"
        assert kept.read_bytes() == first
        assert srv.get("/datastore/").json()["scans_with_several_label_versions"] == 1
        assert srv.get("/info/").json()["slpt"]["datastore"]["scans_with_several_label_versions"] == 1
        # MONAI Label sees one image and one final label per scan: no version became an image or a tag.
        listing = srv.get("/datastore/", params={"output": "all"}).json()["objects"]
        assert sorted(listing) == sorted([scan, other]) and list(listing[scan]["labels"]) == ["final"]

        r = srv.post("/datastore/label/versions/restore", params={"image": scan, "version": 1, "client_id": "lead"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 3 and r.json()["restored_from"] == 1, r.json()
        assert r.json()["replaces"]["client_id"] == "reader-2"
        assert final.read_bytes() == first
        versions = srv.get("/datastore/label/versions", params={"image": scan}).json()["versions"]
        assert [(v["version"], v.get("restored_from"), v["current"]) for v in versions] == \
            [(1, None, False), (2, None, False), (3, 1, True)]
        assert (studies / "labels" / "final" / ".versions" / scan / "v0002.nii.gz").read_bytes() == second
        for version, status in ((3, 409), (7, 404)):
            r = srv.post("/datastore/label/versions/restore", params={"image": scan, "version": version})
            assert r.status_code == status, r.text

        # Training reads the datalist: one pair per labelled scan, the label in place (the restored one).
        assert put_label(srv, other, (tmp_path / "truth" / f"{other}.nii.gz").read_bytes()).status_code == 200
        datalist = srv.get("/datastore/", params={"output": "train"}).json()
        assert len(datalist) == 2 and all(".versions" not in d["label"] for d in datalist), datalist
        assert {Path(d["label"]).name: Path(d["label"]).read_bytes() for d in datalist}[final.name] == first
        r = srv.post("/train/slpt", json=TINY)
        assert r.status_code == 200, r.text
        status = wait(lambda: (s := srv.get("/train/").json()).get("status") in ("DONE", "ERROR") and s, every=2)
        assert status["status"] == "DONE", status
        assert srv.get("/info/").json()["slpt"]["datastore"]["labelled"] == 2

        # A final label removed (DELETE /datastore/label, by mistake as often as not) is kept as a version.
        r = srv.delete("/datastore/label", params={"id": scan, "tag": "final"})
        assert r.status_code == 200, r.text
        assert not final.exists() and srv.get("/info/").json()["slpt"]["datastore"]["labelled"] == 1
        versions = srv.get("/datastore/label/versions", params={"image": scan}).json()["versions"]
        assert [(v["version"], v.get("removed", False), v["current"], v["available"]) for v in versions[2:]] == \
            [(3, False, False, True), (4, True, False, False)]
        assert srv.post("/datastore/label/versions/restore", params={"image": scan, "version": 4}).status_code == 409
        r = srv.post("/datastore/label/versions/restore", params={"image": scan, "version": 3})
        assert r.status_code == 200 and r.json()["version"] == 5, r.text
        assert final.read_bytes() == first
    finally:
        stop_server(srv)


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs at ``tmp_path/studies``: a real filesystem that fills up."""
    with tmpfs(tmp_path / "studies", "6m") as disk:
        yield disk


def test_full_disk_during_a_label_save(small_disk, tmp_path):
    write_studies(small_disk, SEEDS[:1], spec=SMALL, ground_truth=tmp_path / "truth")
    srv = start_server(tmp_path, small_disk, {**CONF, "slpt_model_dir": str(tmp_path / "prompts")})
    try:
        settled(srv)
        scan = image_id(SEEDS[0])
        first = (tmp_path / "truth" / f"{scan}.nii.gz").read_bytes()
        second = without_tumour(first)
        assert put_label(srv, scan, first, client="reader-1").status_code == 200

        filler = fill(small_disk)
        before = snapshot(small_disk, skip=(filler.name,))
        r = put_label(srv, scan, second, client="reader-2")
        assert r.status_code == 507, r.text
        assert "no space left on device" in r.json()["detail"] and str(small_disk / "labels") in r.json()["detail"]
        assert snapshot(small_disk, skip=(filler.name,)) == before  # nothing half-written, nothing moved
        r = srv.get("/datastore/label", params={"label": scan, "tag": "final"})
        assert r.status_code == 200 and r.content == first  # the previous label, readable and whole
        assert srv.get("/info/").status_code == 200  # still serving
        assert [v["version"] for v in srv.get("/datastore/label/versions", params={"image": scan}).json()["versions"]] \
            == [1]

        os.remove(filler)
        r = put_label(srv, scan, second, client="reader-2")
        assert r.status_code == 200, r.text
        assert r.json()["replaces"]["client_id"] == "reader-1"
        assert (small_disk / "labels" / "final" / f"{scan}.nii.gz").read_bytes() == second
    finally:
        stop_server(srv)
