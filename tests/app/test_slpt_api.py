"""SLPT's train and infer tasks, driven the way OHIF/Slicer drive them: infer before training, label,
train, then infer. The shared server is trained once, by a module fixture that first keeps what the server
answered before training, so every test runs alone or in any order."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.app.helpers import load_response_image, wait

pytestmark = pytest.mark.server

APP_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def untrained(server, ids) -> dict:
    """The server's answers before this module's training round (the only one on the shared server)."""
    r = server.post(f"/infer/slpt?image={ids['RAS']}")
    return {"infer": (r.status_code, r.json()), "info": server.get("/info/").json()}


@pytest.fixture(scope="module")
def trained(server, ids, untrained) -> dict:
    """Both scans labelled and one tiny round trained: the labelled count, the finished task and ``/info/``."""
    for name in ids.values():
        with open(server.workdir / "truth" / f"{name}.nii.gz", "rb") as f:
            r = server.put(f"/datastore/label?image={name}&tag=final", files={"label": (f"{name}.nii.gz", f)})
        assert r.status_code == 200, r.text
    labelled = server.get("/info/").json()["slpt"]["datastore"]["labelled"]
    r = server.post("/train/slpt", json={"max_epochs": 2, "iterations_per_epoch": 1, "patch_size": 32})
    assert r.status_code == 200, r.text
    task = wait(lambda: (t := server.get("/train/").json()).get("status") not in ("SUBMITTED", "RUNNING") and t,
                every=2)
    return {"labelled": labelled, "task": task, "info": server.get("/info/").json()}


def test_infer_before_any_training_is_a_clear_client_error(untrained):
    status, answer = untrained["infer"]
    assert status == 409
    assert "no SLPT prompt checkpoint yet" in answer["detail"]


def test_info_reports_slpt_before_training(untrained):
    info = untrained["info"]
    assert info["models"]["slpt"]["labels"] == {"liver": 1, "tumor": 2}
    assert info["models"]["slpt"]["prompt_checkpoint"] is None
    assert "slpt" in info["trainers"]


def test_label_then_train_publishes_a_prompt_checkpoint(trained, ids):
    assert trained["labelled"] == len(ids)
    assert trained["task"]["status"] == "DONE", trained["task"]
    stats = trained["info"]["train_stats"]["slpt"]
    assert stats["epoch"] == stats["total_epochs"] == 2
    assert stats["train_size"] == 2 and stats["val_size"] == 0 and "too few labelled scans" in stats["split"]
    assert stats["parameters"]["trainable_percent_of_backbone"] <= 6.0
    summary = trained["info"]["models"]["slpt"]["prompt_checkpoint"]
    assert summary["version"] == 1 and summary["current"] and summary["train_size"] == 2


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_slpt_infer_returns_task_labels_in_the_input_geometry(server, trained, ids, orientation, tmp_path):
    name = ids[orientation]
    r = server.post(f"/infer/slpt?image={name}&output=image")
    assert r.status_code == 200, r.text
    pred, image = load_response_image(r, tmp_path), nib.load(server.studies / f"{name}.nii.gz")
    assert pred.shape == image.shape
    np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_slpt_infer_reports_version_uncertainty_and_latencies(server, trained, ids):
    result = server.post(f"/infer/slpt?image={ids['RAS']}&output=json").json()
    assert result["prompt_checkpoint_version"] == 1
    # Windows of the training patch size (32 in the `trained` round), not the backbone's own.
    backbone_roi = json.loads((APP_DIR / "models/backbone/configs/inference.json").read_text())["inferer"]["roi_size"]
    assert result["roi_size"] == [32, 32, 32] != backbone_roi
    assert result["prompt_uncertainty"] >= 0.0
    assert {"pre", "infer", "invert", "post", "write", "total"} <= set(result["latencies"])
    assert "PromptEnsembled" in result["latencies"]["transform"]["post"]


def test_uncertainty_map_is_a_second_output_in_the_same_geometry(server, trained, ids, tmp_path):
    name = ids["LPS"]
    r = server.post(f"/infer/slpt?image={name}&output=image", data={"params": '{"slpt_output": "uncertainty"}'})
    assert r.status_code == 200, r.text
    pu, image = load_response_image(r, tmp_path), nib.load(server.studies / f"{name}.nii.gz")
    assert pu.shape == image.shape and np.allclose(pu.affine, image.affine, atol=1e-4)
    values = np.asarray(pu.dataobj)
    assert values.dtype == np.float32 and values.min() >= 0.0 and values.max() <= np.log(3) + 1e-4


def test_bad_output_parameter_is_named(server, ids):
    r = server.post(f"/infer/slpt?image={ids['RAS']}", data={"params": '{"slpt_output": "bogus"}'})
    assert r.status_code == 422 and "slpt_output" in r.json()["detail"]


def test_server_made_no_network_call(server, trained):
    """Through start-up, scoring and a training round at least."""
    log = server.workdir / "network.log"
    assert not log.exists(), log.read_text()
