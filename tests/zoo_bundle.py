"""A stand-in for the MONAI model zoo's ``wholeBody_ct_segmentation`` bundle: its layout, its configs' structure
and its exact architecture, with random weights.

The zoo packs a bundle as ``zip -r <name>_v<version>.zip <name>`` of its folder (``ci/utils.py``
``compress_bundle``), so the zip holds one base folder with ``configs/inference.json``,
``configs/metadata.json``, ``models/model.pt`` and ``docs/``. The configs below keep what bundle 0.2.5 holds
where the app or MONAI's parser reads it: ``imports``, a ``pixdim`` and a ``modelname`` chosen by an expression
on ``displayable_configs#highres`` (1.5 mm and ``model.pt``), ``device`` expressions, the SegResNet
``network_def`` (init_filters 32, blocks_down 1-2-2-4, 105 outputs), its preprocessing (a per-volume z-score
scaled to [-1, 1]), a Gaussian 96³ sliding window and a ``CheckpointLoader``; the metadata names the 105
TotalSegmentator (v1) structures in ``network_data_format.outputs.pred.channel_def`` and has no ``labels`` map.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from monai.networks.nets import SegResNet

NAME = "wholeBody_ct_segmentation"
VERSION = "0.2.5"


def _structures() -> list[str]:
    """The zoo's 104 structures in channel order (channel 0 is background)."""
    vertebrae = [f"vertebrae_{r}{i}" for r, top in (("L", 5), ("T", 12), ("C", 7)) for i in range(top, 0, -1)]
    ribs = [f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13)]
    pairs = [f"{part}_{side}" for part in ("humerus", "scapula", "clavicula", "femur", "hip")
             for side in ("left", "right")]
    gluteus = [f"gluteus_{m}_{side}" for m in ("maximus", "medius", "minimus") for side in ("left", "right")]
    return [
        "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "aorta", "inferior_vena_cava",
        "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right", "adrenal_gland_left",
        "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
        "lung_lower_lobe_right", *vertebrae, "esophagus", "trachea", "heart_myocardium", "heart_atrium_left",
        "heart_ventricle_left", "heart_atrium_right", "heart_ventricle_right", "pulmonary_artery", "brain",
        "iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right", "small_bowel", "duodenum",
        "colon", *ribs, *pairs, "sacrum", "face", *gluteus, "autochthon_left", "autochthon_right",
        "iliopsoas_left", "iliopsoas_right", "urinary_bladder",
    ]


CHANNELS = ["background", *_structures()]
NETWORK = {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": len(CHANNELS),
           "init_filters": 32, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2}
DEVICE = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"

INFERENCE = {
    "displayable_configs": {"highres": True, "sw_overlap": 0.25, "sw_batch_size": 1},
    "imports": ["$import glob", "$import numpy", "$import os"],
    "bundle_root": ".",
    "image_key": "image",
    "device": DEVICE,
    "pixdim": "$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]",
    "modelname": "$'model.pt' if @displayable_configs#highres else 'model_lowres.pt'",
    "network_def": NETWORK,
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "@image_key"},
        {"_target_": "EnsureTyped", "keys": "@image_key"},
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"},
        {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True},
        {"_target_": "ScaleIntensityd", "keys": "@image_key", "minv": -1.0, "maxv": 1.0},
    ]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96],
                "sw_batch_size": "@displayable_configs#sw_batch_size", "overlap": "@displayable_configs#sw_overlap",
                "padding_mode": "replicate", "mode": "gaussian", "device": DEVICE},
    "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/' + @modelname",
                         "load_dict": {"model": "@network"}},
}

METADATA = {
    "version": VERSION,
    "monai_version": "1.4.0",
    "name": "Whole body CT segmentation",
    "task": "TotalSegmentator Segmentation",
    "description": "Stand-in with random weights for the tests (tests/zoo_bundle.py); not the zoo's weights",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                             "spatial_shape": [96, 96, 96], "channel_def": {"0": "image"}}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(CHANNELS),
                             "spatial_shape": [96, 96, 96], "value_range": [0, len(CHANNELS) - 1],
                             "channel_def": {str(i): name for i, name in enumerate(CHANNELS)}}},
    },
}


def write_bundle(folder: Path, seed: int = 0) -> Path:
    """The bundle folder (``folder`` itself), with random weights from ``seed``: the zoo's layout and configs."""
    folder = Path(folder)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    (folder / "docs").mkdir(exist_ok=True)
    (folder / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=4))
    (folder / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=4))
    (folder / "docs" / "README.md").write_text("Random weights: a test stand-in, not a model.\n")
    torch.manual_seed(seed)
    network = SegResNet(**{k: v for k, v in NETWORK.items() if k != "_target_"})
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def zip_bundle(folder: Path, archive: Path) -> Path:
    """``folder`` packed as the zoo packs a bundle: every file under one base folder named :data:`NAME` (stored,
    not deflated as the zoo's are: random weights do not compress, and unzipping reads both alike)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                z.write(path, Path(NAME) / path.relative_to(folder))
    return archive
