"""MONAI Label's multi-GPU training path, run on the CPU.

A server with several GPUs runs a ``multi_gpu`` training request as MONAI Label's train command
(``python -m monailabel.interfaces.utils.app -m train -r <request>``), whose ``BasicTrainTask`` spawns one
process per GPU. The server rewrites ``gpus`` to ``all`` and counts CUDA devices, so on this GPU-less machine
the test runs that same command itself with ``gpus: "0,1"``: MONAI Label then spawns two CPU processes (gloo),
the data-parallel path a two-GPU server runs with NCCL. The server around it labels the scans and serves the
result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from apps.slpt.model.checkpoints import PromptCheckpointStore
from lib.request_params import CHECKED_SETTINGS
from phantoms.io import image_id, write_studies
from tests.app.conftest import NETGUARD, start_server, stop_server
from tests.app.helpers import SMALL
from tools.server import ROOT

pytestmark = pytest.mark.server

SEEDS = (930, 931)
ROUND = {"max_epochs": 2, "iterations_per_epoch": 1, "patch_size": 32}
# What the server hands its train command besides the request: the settings it parsed from it (lib/endpoints.py).
CHECKED = {CHECKED_SETTINGS: {"epochs": 2, "iterations_per_epoch": 1, "patch_size": 32}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multi")
    studies = workdir / "studies"
    write_studies(studies, SEEDS, spec=SMALL, ground_truth=workdir / "truth")
    conf = {"slpt_model_dir": str(workdir / "prompts"), "slpt_train_after_labels": "1000"}
    srv = start_server(workdir, studies, conf)
    srv.conf = conf
    for name in map(image_id, SEEDS):
        with open(workdir / "truth" / f"{name}.nii.gz", "rb") as f:
            r = srv.put(f"/datastore/label?image={name}&tag=final", files={"label": (f"{name}.nii.gz", f)})
        assert r.status_code == 200, r.text
    yield srv
    stop_server(srv)


def train_command(server, request: dict) -> subprocess.CompletedProcess:
    """MONAI Label's own train command for ``request``, in the environment its server gives it."""
    env = {**os.environ, "MONAI_LABEL_APP_DIR": str(ROOT), "MONAI_LABEL_STUDIES": str(server.studies),
           "MONAI_LABEL_APP_CONF": json.dumps(server.conf), "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
           "MONAI_LABEL_SERVER_PORT": server.url.rsplit(":", 1)[1].strip("/"),  # the app asks it to re-score
           "PYTHONPATH": str(NETGUARD), "SLPT_NETGUARD_LOG": str(server.workdir / "network.log")}
    command = [sys.executable, "-m", "monailabel.interfaces.utils.app", "-m", "train", "-r", json.dumps(request)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_two_training_processes_publish_one_checkpoint_from_rank_zero(server):
    done = train_command(server, {"model": "slpt", **ROUND, **CHECKED, "multi_gpu": True, "gpus": "0,1"})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "Total proces to spawn: 2" in log  # MONAI Label's spawn, not a path of ours
    assert "data-parallel over 2 processes" in log, log[-4000:]
    stats = server.get("/info/").json()["train_stats"]["slpt"]
    assert stats["processes"] == 2 and stats["epoch"] == stats["total_epochs"] == 2, stats
    assert PromptCheckpointStore(server.workdir / "prompts").versions() == [1]  # rank 1 published nothing
    answer = server.post(f"/infer/slpt?image={image_id(SEEDS[0])}&output=json")
    assert answer.status_code == 200 and answer.json()["prompt_checkpoint_version"] == 1, answer.text
    assert not (server.workdir / "network.log").exists()


@pytest.mark.parametrize("params, words", [
    ({"multi_gpu": "false"}, ["multi_gpu", "JSON boolean"]),
    ({"gpus": "0,x"}, ["gpus", "'0,1'"]),
    ({"gpus": "1,1"}, ["gpus", "twice"]),
])
def test_bad_multi_gpu_parameters_are_named(server, params, words):
    r = server.post("/train/slpt", json={**ROUND, **params})
    assert r.status_code == 422, r.text
    assert all(w in r.json()["detail"] for w in words), r.json()
