"""SLPT's train and infer tasks, driven the way OHIF/Slicer drive them. Tests run in file order:
infer before training, label, train, then infer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.app.helpers import load_response_image

pytestmark = pytest.mark.server

APP_DIR = Path(__file__).resolve().parents[2]


def test_infer_before_any_training_is_a_clear_client_error(server, ids):
    r = server.post(f"/infer/slpt?image={ids['RAS']}")
    assert r.status_code == 409
    assert "no SLPT prompt checkpoint yet" in r.json()["detail"]


def test_info_reports_slpt_before_training(server):
    info = server.get("/info/").json()
    assert info["models"]["slpt"]["labels"] == {"liver": 1, "tumor": 2}
    assert info["models"]["slpt"]["prompt_checkpoint"] is None
    assert "slpt" in info["trainers"]


def test_label_then_train_publishes_a_prompt_checkpoint(server, ids):
    for name in ids.values():
        with open(server.workdir / "truth" / f"{name}.nii.gz", "rb") as f:
            r = server.put(f"/datastore/label?image={name}&tag=final", files={"label": (f"{name}.nii.gz", f)})
        assert r.status_code == 200, r.text
    assert server.get("/info/").json()["slpt"]["datastore"]["labelled"] == len(ids)

    r = server.post("/train/slpt", json={"max_epochs": 2, "iterations_per_epoch": 1, "patch_size": 32})
    assert r.status_code == 200, r.text
    deadline = time.time() + 600
    while time.time() < deadline:
        task = server.get("/train/").json()
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(2)
    assert task["status"] == "DONE", task

    stats = server.get("/info/").json()["train_stats"]["slpt"]
    assert stats["epoch"] == stats["total_epochs"] == 2
    assert stats["train_size"] == 2 and stats["val_size"] == 0 and "too few labelled scans" in stats["split"]
    assert stats["parameters"]["trainable_percent_of_backbone"] <= 6.0
    summary = server.get("/info/").json()["models"]["slpt"]["prompt_checkpoint"]
    assert summary["version"] == 1 and summary["current"] and summary["train_size"] == 2


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_slpt_infer_returns_task_labels_in_the_input_geometry(server, ids, orientation, tmp_path):
    name = ids[orientation]
    r = server.post(f"/infer/slpt?image={name}&output=image")
    assert r.status_code == 200, r.text
    pred, image = load_response_image(r, tmp_path), nib.load(server.studies / f"{name}.nii.gz")
    assert pred.shape == image.shape
    np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_slpt_infer_reports_version_uncertainty_and_latencies(server, ids):
    result = server.post(f"/infer/slpt?image={ids['RAS']}&output=json").json()
    assert result["prompt_checkpoint_version"] == 1
    # Windows of the training patch size (32 in the training request above), not the backbone's own.
    backbone_roi = json.loads((APP_DIR / "models/backbone/configs/inference.json").read_text())["inferer"]["roi_size"]
    assert result["roi_size"] == [32, 32, 32] != backbone_roi
    assert result["prompt_uncertainty"] >= 0.0
    assert {"pre", "infer", "invert", "post", "write", "total"} <= set(result["latencies"])
    assert "PromptEnsembled" in result["latencies"]["transform"]["post"]


def test_uncertainty_map_is_a_second_output_in_the_same_geometry(server, ids, tmp_path):
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


def test_server_made_no_network_call(server):
    log = server.workdir / "network.log"
    assert not log.exists(), log.read_text()
