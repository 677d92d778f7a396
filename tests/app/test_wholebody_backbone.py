"""The app on the architecture of the model zoo's ``wholeBody_ct_segmentation`` (what ``make backbone`` fetches),
through a real server: ``/infer/backbone``, a short ``/train/slpt``, ``/infer/slpt`` and TESLA scoring and Next
Sample, with the out-of-distribution verdict in every answer.

The bundle is the zoo's layout and configs with random weights (``tests/zoo_bundle.py``): SegResNet, init_filters
32, blocks_down 1-2-2-4, 105 TotalSegmentator classes, 1.5 mm, 96³ windows; served with ``--conf slpt_backbone``
as a user serves the real one. Random weights find no organs, so the scans are expected to be flagged; what is
held is what holds for any weights: each verdict is well-formed and read by organ name (the bone sign from the
zoo's vertebrae, ribs and pelvis), an answer is empty exactly when flagged, both infer tasks read the same
verdict, and TESLA scores the scan and hands it out only if it is not flagged. Two phantoms a third the usual
size keep every backbone pass to one 96³ window on a 2-core CPU.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from lib.ohif import OOD_HEADER
from phantoms.io import image_id, write_studies
from phantoms.phantom import PhantomSpec
from tests import zoo_bundle
from tests.app.conftest import start_server, stop_server
from tests.app.helpers import load_response_image, next_sample, step, tesla_infos, wait

pytestmark = pytest.mark.server

# Under 96 voxels across at 1.5 mm (each backbone pass is one window), liver in view.
TINY = PhantomSpec(body_scale=(0.35, 0.35), z_extent=(40.0, 40.0), inplane_spacing=(2.0, 2.0),
                   slice_spacing=(3.0, 3.0))
LABELLED, UNLABELLED = image_id(960), image_id(973)
SIGNS = ("confidence", "liver_share", "liver_connected", "spleen_per_liver", "kidney_left_per_liver",
         "kidney_right_per_liver", "aorta_per_liver", "bone_per_liver")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wholebody")
    bundle = zoo_bundle.write_bundle(workdir / zoo_bundle.NAME)
    write_studies(workdir / "studies", (960, 973), spec=TINY, ground_truth=workdir / "truth")
    srv = start_server(workdir, workdir / "studies", {"slpt_backbone": str(bundle),
                                                      "slpt_model_dir": str(workdir / "prompts")})
    yield srv
    stop_server(srv)


def infer(server, model: str, image: str, tmp_path) -> tuple[dict, np.ndarray]:
    """One ``output=image`` inference: the verdict (its header) and the label, checked against the scan's grid."""
    r = server.post(f"/infer/{model}?image={image}&output=image")
    assert r.status_code == 200, r.text
    label = load_response_image(r, tmp_path)
    scan = nib.load(server.studies / f"{image}.nii.gz")
    assert label.shape == scan.shape and np.allclose(label.affine, scan.affine, atol=1e-4)
    return json.loads(r.headers[OOD_HEADER]), np.asarray(label.dataobj)


def check_verdict(verdict: dict) -> None:
    """Well-formed, read by organ name from the 105 channels, and flagged exactly when there are reasons."""
    assert set(verdict) == {"flagged", "reasons", "features"} and isinstance(verdict["flagged"], bool)
    assert set(SIGNS) <= set(verdict["features"]), verdict["features"]
    assert verdict["flagged"] == bool(verdict["reasons"]), verdict


def test_the_wholebody_architecture_infers_trains_and_scores(server, tmp_path):
    log: list = []
    with step("the server serves the bundle", log):
        info = server.get("/info/").json()
        assert info["slpt"]["backbone"]["parameters"] == 18_799_401
        assert info["slpt"]["backbone"]["name"] == zoo_bundle.NAME
        labels = info["models"]["backbone"]["labels"]
        assert len(labels) == 105 and labels["liver"] == 5 and labels["vertebrae_L1"] == 22

    with step("/infer/backbone", log):
        backbone_verdict, organs = infer(server, "backbone", UNLABELLED, tmp_path)
        check_verdict(backbone_verdict)
        assert organs.any() != backbone_verdict["flagged"] and organs.max() < 105

    with step("a final label and /train/slpt", log):
        with open(server.workdir / "truth" / f"{LABELLED}.nii.gz", "rb") as f:
            r = server.put(f"/datastore/label?image={LABELLED}&tag=final", files={"label": (f"{LABELLED}.nii.gz", f)})
        assert r.status_code == 200, r.text
        r = server.post("/train/slpt", json={"max_epochs": 1, "iterations_per_epoch": 1, "batch_size": 2})
        assert r.status_code == 200, r.text
        task = wait(lambda: (t := server.get("/train/").json()).get("status") not in ("SUBMITTED", "RUNNING") and t,
                    timeout=300, every=1)
        assert task["status"] == "DONE", task
        stats = server.get("/info/").json()["train_stats"]["slpt"]
        assert stats["prompt_checkpoint_version"] == 1 and stats["train_size"] == 1
        share = stats["parameters"]["trainable_percent_of_backbone"]
        print(f"trainable share of the wholeBody backbone: {share}%", flush=True)
        assert 0 < share <= 6.0

    with step("/infer/slpt", log):
        slpt_verdict, task_label = infer(server, "slpt", UNLABELLED, tmp_path)
        check_verdict(slpt_verdict)
        assert task_label.any() != slpt_verdict["flagged"] and set(np.unique(task_label)) <= {0, 1, 2}
        # Both tasks read the verdict from the frozen backbone's own organ probabilities.
        assert slpt_verdict["flagged"] == backbone_verdict["flagged"]
        assert slpt_verdict["features"] == pytest.approx(backbone_verdict["features"], rel=1e-3, abs=1e-4)

    with step("TESLA scores the unlabelled scan with the new checkpoint", log):
        record = wait(lambda: (r := tesla_infos(server)[UNLABELLED]).get("checkpoint_version") == 1 and r,
                      timeout=300, every=1)
        assert len(record["embedding"]) == 3 * 256  # three poolings of the bottleneck's 8 x init_filters channels
        assert np.isfinite(record["uncertainty"])
        check_verdict(record["out_of_distribution"])

    with step("Next Sample serves it only if it is not flagged", log):
        flagged = record["out_of_distribution"]["flagged"]
        served = next_sample(server, "reader-1").get("id")
        assert served == (None if flagged else UNLABELLED), served
        assert (UNLABELLED in server.get("/info/").json()["slpt"]["tesla"]["out_of_distribution"]) == flagged
    print(f"steps (s): {log}; verdict: {backbone_verdict}", flush=True)
