"""The foundation, from a client's side of the real MONAI Label server."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from phantoms.phantom import ORGAN_NAMES
from tests.app.helpers import load_response_image

pytestmark = pytest.mark.server


def test_info_lists_the_backbone_model(server):
    info = server.get("/info/").json()
    assert "backbone" in info["models"]
    assert info["models"]["backbone"]["labels"]["liver"] == ORGAN_NAMES["liver"]
    assert info["slpt"]["backbone"]["sha256"]


def test_datastore_lists_the_studies(server, ids):
    listed = server.get("/datastore/", params={"output": "all"}).json()
    assert set(ids.values()) <= set(listed["objects"])


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_backbone_infer_returns_organs_in_the_input_geometry(server, ids, orientation, tmp_path):
    name = ids[orientation]
    r = server.post(f"/infer/backbone?image={name}&output=image")
    assert r.status_code == 200, r.text
    pred = load_response_image(r, tmp_path)
    image = nib.load(server.studies / f"{name}.nii.gz")
    assert pred.shape == image.shape
    np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
    organs = np.asarray(pred.dataobj)
    assert set(np.unique(organs)) <= set(ORGAN_NAMES.values())
    # The geometry must be right voxel for voxel: the liver lands on the true liver.
    truth = np.asarray(nib.load(server.workdir / "truth" / "organs" / f"{name}.nii.gz").dataobj)
    liver_pred, liver_true = organs == ORGAN_NAMES["liver"], truth == ORGAN_NAMES["liver"]
    dice = 2 * (liver_pred & liver_true).sum() / (liver_pred.sum() + liver_true.sum())
    assert dice > 0.8, f"liver Dice {dice:.3f} for the {orientation} input"


def test_unknown_model_and_image_are_client_errors(server, ids):
    assert server.post(f"/infer/nonexistent?image={ids['RAS']}").status_code in (400, 404, 422)
    assert server.post("/infer/backbone?image=no_such_image").status_code in (400, 404, 422)



def test_monai_labels_stock_strategies_serve_unlabelled_scans(server, ids):
    info = server.get("/info/").json()
    assert {"tesla", "random", "first"} <= set(info["strategies"])
    stored = set(server.get("/datastore/", params={"output": "all"}).json()["objects"])
    for strategy in ("random", "first"):
        r = server.post(f"/activelearning/{strategy}", json={"client_id": "reader-1"})
        assert r.status_code == 200, r.text
        assert r.json()["id"] in stored
    r = server.post("/activelearning/random", json={"lease_seconds": 60})
    assert r.status_code == 422 and "not a parameter of activelearning/random" in r.text  # TESLA's, not random's
