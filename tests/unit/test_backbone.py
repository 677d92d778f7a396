from __future__ import annotations

import json

import pytest
import torch
from monai.networks.nets import SegResNet

from apps.slpt.model.backbone import label_channels, load_backbone

# A bundle in the model zoo's style (wholeBody_ct_segmentation): references, NormalizeIntensity, dropout.
ZOO_STYLE_CONFIG = {
    "imports": ["$import glob"],
    "bundle_root": ".",
    "pixdim": [1.5, 1.5, 1.5],
    "network_def": {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 5,
                    "init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2},
    "network": "$@network_def.to('cpu')",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"},
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
        {"_target_": "ScaleIntensityd", "keys": "image", "minv": -1.0, "maxv": 1.0},
    ]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1, "overlap": 0.25},
}


def _tiny_segresnet(init_filters=8, out_channels=5):
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=out_channels, init_filters=init_filters,
                     blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), dropout_prob=0.2)


def _write_bundle(root, state_dict, config=ZOO_STYLE_CONFIG):
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(state_dict, root / "models" / "model.pt")
    return root


def test_default_backbone_loads_and_describes_itself(root):
    backbone = load_backbone(root / "models" / "backbone")
    assert backbone.labels["liver"] == 1 and backbone.out_channels == len(backbone.labels)
    assert not backbone.network.training
    assert {type(t).__name__ for t in backbone.preprocessing} >= {"Orientationd", "Spacingd"}
    meta = backbone.metadata
    assert meta["num_parameters"] == backbone.num_parameters()
    assert meta["sha256"] == backbone.identity["sha256"]  # the metadata belongs to these very weights
    # Held-out Dice per organ, computed by benchmarks/pretrain.py; liver >= 0.90 is the shipping bar.
    assert set(meta["heldout_dice"]) == set(backbone.labels) - {"background"}
    assert all(0.0 <= d <= 1.0 for d in meta["heldout_dice"].values())
    assert meta["heldout_dice"]["liver"] >= 0.90
    # Inference uses the window the network was trained on (a larger one pads short scans unseen).
    assert backbone.roi_size == (meta["pretrain_config"]["patch_size"],) * 3
    assert meta["pretrain_config"]["train_seeds"] != meta["pretrain_config"]["val_seeds"]


def test_zoo_style_bundle_loads_with_its_own_preprocessing(tmp_path):
    reference = _tiny_segresnet().eval()
    backbone = load_backbone(_write_bundle(tmp_path / "bundle", reference.state_dict()))
    assert backbone.roi_size == (32, 32, 32)
    names = [type(t).__name__ for t in backbone.preprocessing]
    assert "LoadImaged" not in names and names[-2:] == ["NormalizeIntensityd", "ScaleIntensityd"]
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.network(x), reference(x))


def test_zoo_metadata_names_the_channels_and_wrapped_weights_load(tmp_path):
    """The zoo's metadata has no ``labels`` map: the bundle schema's ``channel_def`` names the outputs. Its
    CheckpointLoader accepts weights under ``model``; so does the app."""
    reference = _tiny_segresnet().eval()
    root = _write_bundle(tmp_path / "bundle", {"model": reference.state_dict()})
    names = ["background", "spleen", "kidney_right", "liver", "vertebrae_L1"]
    outputs = {"pred": {"format": "segmentation", "channel_def": {str(i): n for i, n in enumerate(names)}}}
    (root / "configs" / "metadata.json").write_text(json.dumps({"network_data_format": {"outputs": outputs}}))
    backbone = load_backbone(root)
    assert backbone.labels == {n: i for i, n in enumerate(names)}
    assert label_channels(backbone.labels, "liver") == (3,) and label_channels(backbone.labels, "bone") == (4,)
    assert label_channels(backbone.labels, "muscle") == ()


def test_mismatched_weights_fail_loudly(tmp_path):
    wrong_width = _tiny_segresnet(init_filters=16).state_dict()
    with pytest.raises(ValueError, match="shape mismatch"):
        load_backbone(_write_bundle(tmp_path / "a", wrong_width))

    extra = dict(_tiny_segresnet().state_dict(), **{"head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): head.weight"):
        load_backbone(_write_bundle(tmp_path / "b", extra))

    partial = dict(_tiny_segresnet().state_dict())
    partial.pop("conv_final.2.conv.weight")
    with pytest.raises(ValueError, match="missing keys"):
        load_backbone(_write_bundle(tmp_path / "c", partial))


def test_incomplete_bundle_names_the_missing_file(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.json").write_text(json.dumps(ZOO_STYLE_CONFIG))
    with pytest.raises(FileNotFoundError, match="models/model.pt"):
        load_backbone(tmp_path)
