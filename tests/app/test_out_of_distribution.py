"""A scan that is not an abdominal CT, through the real server: ``/infer/backbone`` and ``/infer/slpt`` answer
an empty label with the flag and its reasons (a datastore image and an upload alike), an abdominal phantom is
segmented as before, and TESLA lists the scan in ``/info/`` and never hands it to an annotator.

One server for the module, on two small phantoms and a generated head (``phantoms/non_abdominal.py``); a
prompt checkpoint is saved before it starts, so ``/infer/slpt`` serves without a training round. The CT head
atlas of the ``totalsegmentator`` wheel is tried too when ``pip download`` can fetch it, as a user would.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch

from apps.slpt.config import SLPTConfig
from apps.slpt.model.backbone import load_backbone
from apps.slpt.model.build import build_model
from apps.slpt.model.checkpoints import PromptCheckpointStore
from phantoms import non_abdominal
from phantoms.io import image_id, save_nifti, write_studies
from tests.app.conftest import start_server, stop_server
from tests.app.helpers import SMALL, load_response_image, next_sample, tesla_infos, wait

pytestmark = pytest.mark.server

SEEDS = (940, 941)
HEAD = "head_000"


@pytest.fixture(scope="module")
def server(tmp_path_factory, root):
    workdir = tmp_path_factory.mktemp("ood")
    studies = workdir / "studies"
    write_studies(studies, SEEDS, spec=SMALL)
    save_nifti(*non_abdominal.head(0), studies / f"{HEAD}.nii.gz")
    cfg = SLPTConfig(model_dir=str(workdir / "prompts"))
    backbone = load_backbone(root / "models" / "backbone")
    torch.manual_seed(0)
    model = build_model(backbone, cfg)
    PromptCheckpointStore(cfg.model_dir).save(model.trainable_state_dict(),
                                              {"backbone": backbone.identity, "config": cfg.to_dict()})
    srv = start_server(workdir, studies, {"slpt_model_dir": cfg.model_dir, "slpt_min_round_size": "2"})
    yield srv
    stop_server(srv)


def infer(server, model: str, tmp_path, image: str | None = None, upload=None) -> tuple[dict, np.ndarray]:
    """The result params and the label of one inference (``output=all``: both in one answer)."""
    query = f"/infer/{model}?output=json" + (f"&image={image}" if image else "")
    files = {"file": (upload.name, upload.read_bytes())} if upload else None
    result = server.post(query, files=files)
    assert result.status_code == 200, result.text
    label = server.post(query.replace("output=json", "output=image"), files=files)
    assert label.status_code == 200, label.text
    return result.json(), np.asarray(load_response_image(label, tmp_path).dataobj)


@pytest.mark.parametrize("model", ["backbone", "slpt"])
def test_a_head_gets_an_empty_label_and_the_reason(server, model, tmp_path):
    result, label = infer(server, model, tmp_path, image=HEAD)
    ood = result["out_of_distribution"]
    assert ood["flagged"] and ood["reasons"], ood
    assert label.shape == nib.load(server.studies / f"{HEAD}.nii.gz").shape and not label.any()


@pytest.mark.parametrize("model", ["backbone", "slpt"])
def test_an_abdominal_phantom_is_segmented(server, model, tmp_path):
    result, label = infer(server, model, tmp_path, image=image_id(SEEDS[0]))
    assert result["out_of_distribution"]["flagged"] is False, result["out_of_distribution"]
    assert (label == 1).sum() > 1000  # the liver


def test_an_uploaded_head_is_flagged_too(server, tmp_path):
    path = tmp_path / "upload.nii.gz"
    save_nifti(*non_abdominal.head(1), path)
    result, label = infer(server, "backbone", tmp_path, upload=path)
    assert result["out_of_distribution"]["flagged"] and not label.any()


def test_tesla_lists_the_head_and_never_serves_it(server):
    wait(lambda: all(r.get("embedding") for r in tesla_infos(server).values()), timeout=600, every=2)
    assert tesla_infos(server)[HEAD]["out_of_distribution"]["flagged"]
    assert all(not tesla_infos(server)[image_id(s)]["out_of_distribution"]["flagged"] for s in SEEDS)
    listed = server.get("/info/").json()["slpt"]["tesla"]["out_of_distribution"]
    assert list(listed) == [HEAD] and listed[HEAD]
    served = [next_sample(server, f"reader-{n}").get("id") for n in range(3)]
    assert HEAD not in served and sorted(i for i in served if i) == sorted(image_id(s) for s in SEEDS)


def test_the_ct_head_atlas_from_pypi_is_flagged(server, tmp_path):
    """The case the issue reported: 16% of this CT head was labelled liver. Fetched as a user would."""
    fetched = subprocess.run([sys.executable, "-m", "pip", "download", "totalsegmentator", "--no-deps",
                              "--quiet", "-d", str(tmp_path)], check=False, capture_output=True, text=True,
                             timeout=180)
    wheels = list(tmp_path.glob("totalsegmentator-*.whl"))
    if fetched.returncode or not wheels:
        pytest.skip(f"the totalsegmentator wheel could not be fetched from PyPI: {fetched.stderr.strip()[-300:]}")
    atlas = tmp_path / "ct_brain_atlas_1mm.nii.gz"
    with zipfile.ZipFile(wheels[0]) as wheel:
        atlas.write_bytes(wheel.read("totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz"))
    result, label = infer(server, "backbone", tmp_path, upload=atlas)
    assert result["out_of_distribution"]["flagged"] and not label.any(), result["out_of_distribution"]
