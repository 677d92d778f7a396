"""A PACS outage through the real server (issue 42, part 2): a real Orthanc that the test stops and starts again
on the same storage folder, under a real server on its DICOMweb root.

While Orthanc is stopped, a label save and Next Sample answer 503 naming the PACS within seconds, a training
round is refused with the same reason, and nothing changes: not the PACS, not the server's DICOMweb cache, not
the model folder. Inference on a scan the server has cached still answers, ``/info/`` says the PACS is
unreachable, and scoring skips a scan it cannot fetch, named with the reason in ``/info/``. Once Orthanc is back, without a server restart, the same save works, its answer names the label it
replaced, Next Sample and training work, and every instance Orthanc stored before is still there, byte for byte.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from phantoms.dicom import RAS_TO_LPS, to_lps_order, write_ct_series
from phantoms.io import image_id
from phantoms.phantom import make_phantom
from tests.app.conftest import start_server, stop_server
from tests.app.helpers import SMALL, require_orthanc, step, wait
from tools.orthanc import start_orthanc, stop_orthanc, upload_series
from tools.server import free_port

pytestmark = [pytest.mark.server, pytest.mark.orthanc]

SEEDS = (932, 933)
TINY = {"max_epochs": 1, "iterations_per_epoch": 1, "patch_size": 32}
# Training and scoring only when asked, so nothing writes to the store behind the test's back.
CONF = {"slpt_train_after_labels": "1000", "slpt_min_round_size": "2"}
PROMPT_S = 10  # "within seconds": a refused connection is answered at once (a silent PACS: 2 x 3 s a request)


def label_bytes(seed: int) -> bytes:
    """The phantom's label in its DICOM series' voxel order (``phantoms/dicom.py``), as a NIfTI file."""
    ph = make_phantom(seed, SMALL)
    label, lps = to_lps_order(ph.label, ph.affine)
    return gzip.compress(nib.Nifti1Image(label.astype(np.uint8), RAS_TO_LPS @ lps).to_bytes())


def put_label(server, image: str, content: bytes, client: str):
    return server.put("/datastore/label", params={"image": image, "tag": "final"},
                      files={"label": ("label.nii.gz", content)}, data={"params": f'{{"client_id": "{client}"}}'})


def stored_instances(orthanc) -> dict[str, str]:
    """``{Orthanc instance id: MD5 of its stored DICOM file}``, through Orthanc's REST API."""
    ids = requests.get(f"{orthanc.url}/instances", timeout=30).json()
    return {i: requests.get(f"{orthanc.url}/instances/{i}/attachments/dicom/md5", timeout=30).text for i in ids}


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` by content; file locks left by a fetch are not state."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".fetch-")}


def unreachable(answer, orthanc) -> None:
    assert answer.status_code == 503, answer.text
    detail = answer.json()["detail"]
    assert f"the PACS at {orthanc.dicomweb} is unreachable" in detail and "retry" in detail, detail


def scoring_done(server) -> bool:
    answer = server.get("/scoring/")
    return answer.status_code == 200 and answer.json().get("status") in ("DONE", "ERROR")


def timed(call):
    start = time.time()
    answer = call()
    return answer, time.time() - start


def test_a_pacs_outage_is_a_clear_retryable_error_and_nothing_is_lost(tmp_path):
    require_orthanc()
    series = {}
    for seed in SEEDS:
        ph = make_phantom(seed, SMALL)
        series[image_id(seed)] = write_ct_series(ph.image, ph.affine, tmp_path / "dicom" / image_id(seed),
                                                 patient_id=image_id(seed))["series_uid"]
    scan, other = (series[image_id(s)] for s in SEEDS)
    labels = {scan: label_bytes(SEEDS[0]), other: label_bytes(SEEDS[1])}
    port = free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", port)
    server = None
    log: list = []
    try:
        upload_series(orthanc.dicomweb, [tmp_path / "dicom" / name for name in series])
        cache, model_dir = tmp_path / "dicomweb-cache", tmp_path / "prompts"
        server = start_server(tmp_path, orthanc.dicomweb, {**CONF, "slpt_model_dir": str(model_dir)},
                              env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(cache)}, timeout=600)

        with step("before the outage: a label saved, both scans cached by start-up scoring", log):
            first = put_label(server, scan, labels[scan], "reader-1")
            assert first.status_code == 200 and first.json()["version"] == 1, first.text
            wait(lambda: scoring_done(server) and len(list(cache.rglob("*.nii.gz"))) >= 3, timeout=600, every=2)
            before = {"pacs": stored_instances(orthanc), "cache": snapshot(cache), "model": snapshot(model_dir)}

        stop_orthanc(orthanc)

        with step("a label save answers 503 naming the PACS, within seconds, and stores nothing", log):
            answer, seconds = timed(lambda: put_label(server, other, labels[other], "reader-2"))
            unreachable(answer, orthanc)
            assert seconds < PROMPT_S, seconds
            print(f"save during the outage: {answer.status_code} in {seconds:.1f} s: {answer.json()['detail']}")
            assert snapshot(cache) == before["cache"]

        with step("Next Sample answers 503 and leases nothing", log):
            answer, seconds = timed(lambda: server.post("/activelearning/tesla", json={"client_id": "reader-2"}))
            unreachable(answer, orthanc)
            assert seconds < PROMPT_S, seconds

        with step("inference on a cached scan still answers (it reads the cached NIfTI only)", log):
            answer = server.post(f"/infer/backbone?image={other}&output=json")
            assert answer.status_code == 200, answer.text

        with step("a training round is refused with the reason; none starts", log):
            answer, seconds = timed(lambda: server.post("/train/slpt", json=TINY))
            unreachable(answer, orthanc)
            assert seconds < PROMPT_S, seconds
            assert server.get("/train/").status_code == 404  # MONAI Label: no training task, ever

        with step("/info/ answers and says the PACS is unreachable, counting from its last lists", log):
            slpt = server.get("/info/").json()["slpt"]
            pacs = slpt["datastore"]["pacs"]
            assert pacs["reachable"] is False and orthanc.dicomweb in pacs["error"] and pacs["since"], pacs
            assert (slpt["datastore"]["labelled"], slpt["datastore"]["unlabelled"]) == (1, 1), slpt["datastore"]
            assert snapshot(cache) == before["cache"] and snapshot(model_dir) == before["model"]

        with step("scoring skips a scan it cannot fetch, and /info/ says which and why", log):
            # A scan the server has not fetched yet (a series new to it): its cached copy is gone.
            for cached in cache.rglob(f"{other}*"):
                shutil.rmtree(cached) if cached.is_dir() else cached.unlink()
            answer = server.post("/scoring/tesla")
            assert answer.status_code == 200, answer.text
            failed = wait(lambda: scoring_done(server) and server.get("/info/").json()["slpt"]["tesla"]["scoring_failed"],
                          timeout=300, every=2)
            assert list(failed) == [other] and orthanc.dicomweb in failed[other], failed

        orthanc = start_orthanc(tmp_path / "orthanc", port)  # the same storage folder and port

        with step("Orthanc back: the next scoring fetches and scores the scan it skipped", log):
            assert server.post("/scoring/tesla").status_code == 200
            wait(lambda: scoring_done(server) and not server.get("/info/").json()["slpt"]["tesla"]["scoring_failed"],
                 timeout=300, every=2)

        with step("Orthanc back: every instance it stored before is there, byte for byte", log):
            assert stored_instances(orthanc) == before["pacs"]
            assert server.get("/info/").json()["slpt"]["datastore"]["pacs"]["reachable"] is True

        with step("Next Sample, the same save and a re-save work without a server restart", log):
            answer = server.post("/activelearning/tesla", json={"client_id": "reader-2"})
            assert answer.status_code == 200 and answer.json()["id"] == other, answer.text
            answer = put_label(server, other, labels[other], "reader-2")
            assert answer.status_code == 200 and answer.json()["version"] == 1, answer.text
            again = put_label(server, scan, labels[scan], "reader-3")
            assert again.status_code == 200, again.text
            replaces = again.json()["replaces"]
            assert again.json()["version"] == 2 and replaces["version"] == 1, again.json()
            assert replaces["client_id"] == "reader-1" and replaces["saved_at"] and replaces["seg"], replaces
            after = stored_instances(orthanc)
            assert {i: after[i] for i in before["pacs"]} == before["pacs"] and len(after) == len(before["pacs"]) + 2

        with step("the PACS's label versions: listed, and an earlier one restored as a new SEG", log):
            versions = server.get("/datastore/label/versions", params={"image": scan}).json()["versions"]
            assert [(v["version"], v["current"], v["client_id"]) for v in versions] == \
                [(1, False, None), (2, True, "reader-3")], versions
            assert server.get("/info/").json()["slpt"]["datastore"]["scans_with_several_label_versions"] == 1
            restored = server.post("/datastore/label/versions/restore", params={"image": scan, "version": 1})
            assert restored.status_code == 200 and restored.json()["version"] == 3, restored.text
            assert restored.json()["replaces"]["seg"] == versions[1]["seg"]
            label = server.get("/datastore/label", params={"label": scan, "tag": "final"})
            assert label.status_code == 200, label.text
            got = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(label.content)).dataobj)
            want = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(labels[scan])).dataobj)
            assert np.array_equal(np.bincount(got.ravel().astype(int)), np.bincount(want.ravel().astype(int)))
            assert server.post("/datastore/label/versions/restore", params={"image": scan, "version": 3}).status_code == 409

        with step("a training round trains on both labels", log):
            answer = server.post("/train/slpt", json=TINY)
            assert answer.status_code == 200, answer.text
            done = wait(lambda: (t := server.get("/train/").json()).get("status") in ("DONE", "ERROR") and t,
                        timeout=600, every=2)
            assert done["status"] == "DONE", done
    finally:
        if server is not None:
            stop_server(server)
        stop_orthanc(orthanc)
