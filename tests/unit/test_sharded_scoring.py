"""TESLA scoring over worker processes stores what one process stores, and keeps what it finished."""

from __future__ import annotations

import concurrent.futures
import os
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import SegResNet
from monai.transforms import EnsureChannelFirstd
from monailabel.datastore.local import LocalDatastore

from apps.slpt.active.workers import run_in_workers, worker_devices
from apps.slpt.config import SLPTConfig
from apps.slpt.model.backbone import Backbone
from apps.slpt.model.build import build_model
from apps.slpt.model.checkpoints import PromptCheckpointStore
from lib.activelearning.tesla_scoring import TeslaScoring

IDENTITY = {"name": "tiny", "path": "tiny", "sha256": "b" * 64}


def tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=4, init_filters=8,
                    blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)).eval()
    return Backbone(network=net, preprocessing=[EnsureChannelFirstd(keys="image", channel_dim="no_channel")],
                    roi_size=(32, 32, 32), labels={"background": 0, "liver": 1}, identity=IDENTITY)


def studies(folder, n=4):
    folder.mkdir()
    for i in range(n):
        image = np.random.default_rng(i).random((40, 36, 32), dtype=np.float32)
        image[8:30, 8:28, 6:26] += 1.0  # something organ-like, so the windows differ between scans
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"scan_{i}.nii.gz")
    return LocalDatastore(str(folder), extensions=["*.nii.gz"], auto_reload=False)


@pytest.fixture(scope="module")
def datastore(tmp_path_factory):
    return studies(tmp_path_factory.mktemp("pool") / "studies")


def scorer(tmp_path, name, workers):
    backbone = tiny_backbone()
    cfg = SLPTConfig(model_dir=str(tmp_path / name), scoring_workers=workers, ood_check=False, precision="fp32")
    torch.manual_seed(1)
    model = build_model(backbone, cfg)
    with torch.no_grad():  # a trained-looking head and set evidence, so that the prompt sets disagree
        for p in model.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.set_evidence_gain.normal_(0, 1.0)
    PromptCheckpointStore(cfg.model_dir).save(model.trainable_state_dict(),
                                              {"backbone": IDENTITY, "config": cfg.to_dict()})
    return TeslaScoring(backbone, cfg)


def test_two_workers_store_the_same_scores_as_one(tmp_path, datastore):
    one, two = scorer(tmp_path, "one", 1), scorer(tmp_path, "two", 2)
    first, second = one({}, datastore), two({}, datastore)
    assert first["scored"] == second["scored"] == 4 and first["failed"] == second["failed"] == 0
    assert (first["workers"], second["workers"]) == (1, 2)
    alone, shared = one.cache(datastore).records(), two.cache(datastore).records()
    assert sorted(alone) == sorted(shared) == sorted(datastore.get_unlabeled_images())
    for image_id, want in alone.items():
        got = shared[image_id]
        assert got["content_sha256"] == want["content_sha256"] and got["checkpoint_version"] == 1
        assert got["organ_voxels"] == want["organ_voxels"]
        # Stored to 5 decimals: the workers' other thread count can move a value across a rounding step.
        np.testing.assert_allclose(got["embedding"], want["embedding"], rtol=0, atol=2e-5)
        assert got["uncertainty"] == pytest.approx(want["uncertainty"], rel=1e-5, abs=1e-9)
    assert len({r["uncertainty"] for r in alone.values()}) > 1  # the scans are told apart: a real comparison
    # The cache is keyed by content and version: nothing is left to do, whichever run scored it.
    assert two({}, datastore)["unchanged"] == 4 and not two.pending(datastore)


class Record:
    """A job that stores each item in a folder before it returns (as ScanScorer stores each scan)."""

    def __init__(self, folder):
        self.folder, self.device = folder, None

    def start(self, device):
        self.device = device

    def __call__(self, item):
        if item == "stop":
            for _ in range(600):  # after the other worker has finished its item
                if (self.folder / "a").exists():
                    break
                time.sleep(0.05)
            os._exit(1)  # a worker killed mid-run
        (self.folder / item).write_text(str(self.device))
        return item.upper(), self.device, os.getpid()


def test_workers_answer_in_order_each_on_its_own_device(tmp_path):
    results = list(run_in_workers(Record(tmp_path), ["a", "b", "c"], 2))
    assert [r[0] for r in results] == ["A", "B", "C"] and {r[1] for r in results} == {"cpu"}
    assert os.getpid() not in {r[2] for r in results}
    (alone,) = run_in_workers(Record(tmp_path), ["d"], 2)
    assert alone[2] == os.getpid()  # one item: no process
    assert worker_devices(3, "cpu") == ["cpu"] * 3


def test_a_killed_run_keeps_every_item_it_finished(tmp_path):
    with pytest.raises(concurrent.futures.process.BrokenProcessPool):  # the pool breaks when a worker dies
        list(run_in_workers(Record(tmp_path), ["a", "stop"], 2))
    assert (tmp_path / "a").exists()


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        list(run_in_workers(len, ["a"], 0))
