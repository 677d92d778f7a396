"""A training round of the app on a tiny network: its split, its start, and what it publishes."""

from __future__ import annotations

import dataclasses

import torch
from monai.networks.nets import SegResNet

from apps.slpt.config import SLPTConfig
from apps.slpt.inference import sliding_window
from apps.slpt.model.backbone import Backbone
from apps.slpt.model.checkpoints import PromptCheckpointStore
from apps.slpt.training.rounds import TrainingRound, round_split, starting_model, train_round
from apps.slpt.training.splits import split_scans

IDENTITY = {"name": "tiny", "path": "tiny", "sha256": "a" * 64}
CFG = SLPTConfig(stages=("up_layers.0",), epochs=3,
                 iterations_per_epoch=1, patch_size=16, batch_size=1, num_prompts=2, val_interval=1)
CLASSES = {"liver": 1, "tumor": 2}


def tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=4, init_filters=8,
                    blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)).eval()
    return Backbone(network=net, preprocessing=[], roi_size=(32, 32, 32), labels={"background": 0, "liver": 1},
                    identity=IDENTITY)


def scan():
    """A 32³ image with a liver block holding a tumour block."""
    label = torch.zeros(1, 32, 32, 32, dtype=torch.long)
    label[:, 6:26, 6:26, 6:26], label[:, 12:18, 12:18, 12:18] = 1, 2
    return torch.rand(1, 32, 32, 32, generator=torch.Generator().manual_seed(0)) + 0.3 * label, label


def run_round(backbone, store, cfg=CFG, warm=True, on_epoch=lambda report, version: None):
    model, cfg = starting_model(backbone, store, cfg, warm, log=lambda m: None)
    data = TrainingRound([scan()], [], "1 train scans, no validation", IDENTITY, CLASSES, "test")
    version = train_round(model, data, cfg, sliding_window((32, 32, 32)), store, on_epoch=on_epoch,
                          log=lambda m: None)
    return model, version


def test_the_split_stays_fixed_across_rounds_through_its_file(tmp_path):
    path = tmp_path / "split.json"
    first, text = round_split([f"s{i}" for i in range(5)], path, CFG)
    assert sorted(first.values()).count("val") == 1 and "1 validation" in text
    second, _ = round_split([f"s{i}" for i in range(10)], path, CFG)
    assert {i: second[i] for i in first} == first and sorted(second.values()).count("val") == 2
    scans = {i: i.upper() for i in second}
    train, val = split_scans(scans, second)
    assert sorted(train + val) == sorted(scans.values())
    assert val == [scans[i] for i in sorted(second) if second[i] == "val"]


def test_a_round_publishes_one_version_whatever_its_number_of_improvements(tmp_path):
    store, seen = PromptCheckpointStore(tmp_path), []
    model, version = run_round(tiny_backbone(), store, on_epoch=lambda report, v: seen.append((report.epoch, v)))
    # Without validation every epoch improves: the first one saves a new version, the others overwrite it.
    assert version == 1 and store.versions() == [1] and store.current() == 1
    assert seen == [(1, None), (2, 1), (3, 1)]
    payload = store.read(1)
    meta = payload["metadata"]
    assert meta["epoch"] == 3 and meta["metrics"] == {"note": "no validation set; last epoch kept"}
    assert meta["config"] == CFG.to_dict() and meta["backbone"] == IDENTITY and meta["classes"] == CLASSES
    assert (meta["train_size"], meta["val_size"], meta["app_version"]) == (1, 0, "test")
    assert meta["parameters"]["trainable"] > 0
    trained = model.trainable_state_dict()
    assert payload["state_dict"].keys() == trained.keys()
    assert all(torch.equal(payload["state_dict"][k], trained[k].cpu()) for k in trained)


def test_a_warm_round_starts_from_the_served_checkpoint_with_its_own_architecture(tmp_path):
    backbone, store = tiny_backbone(), PromptCheckpointStore(tmp_path)
    trained, _ = run_round(backbone, store)
    moved_on = dataclasses.replace(CFG, num_prompts=3)  # the app's config changed since that checkpoint
    warm, cfg = starting_model(backbone, store, moved_on, warm=True, log=lambda m: None)
    assert cfg.num_prompts == 2 and warm.num_prompts == 2
    assert all(torch.equal(v, trained.trainable_state_dict()[k]) for k, v in warm.trainable_state_dict().items())
    fresh, cfg = starting_model(backbone, store, moved_on, warm=False, log=lambda m: None)
    assert cfg is moved_on and fresh.num_prompts == 3
    assert run_round(backbone, store)[1] == 2 and store.current() == 2


def test_an_unloadable_served_checkpoint_is_reported_and_the_round_starts_fresh(tmp_path):
    backbone, store = tiny_backbone(), PromptCheckpointStore(tmp_path)
    run_round(backbone, store)
    store.path(1).write_bytes(b"not a checkpoint")
    warnings = []
    model, cfg = starting_model(backbone, store, CFG, warm=True, log=lambda m: None, warn=warnings.append)
    assert cfg is CFG and len(warnings) == 1 and warnings[0].startswith("SLPT starts fresh")
