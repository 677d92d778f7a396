"""Loading a frozen, task-agnostic CT segmentation backbone from a MONAI bundle directory.

One mechanism serves both our default backbone and a model-zoo bundle such as
``wholeBody_ct_segmentation`` (``python -m tools.fetch_backbone``), read as the zoo ships it: a directory
with ``configs/inference.json`` (holding ``network_def``, ``preprocessing`` and optionally ``inferer``),
``configs/metadata.json`` and ``models/model.pt`` (a state dict). Our pre-training script writes exactly that
layout, so nothing special-cases "our" checkpoint.

Organ names come from the metadata: our ``labels`` map, or the zoo's standard
``network_data_format.outputs.pred.channel_def``. The app looks organs up by name
(:func:`label_channels`); a name the backbone lacks may stand for a group of its structures
(:data:`LABEL_GROUPS`: ``bone`` is a TotalSegmentator backbone's vertebrae, ribs and pelvis).

The bundle's own ``preprocessing`` transforms are reused (minus its loader), which keeps inference and
prompt tuning on the intensity and spacing conventions the backbone was trained with.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, LoadImaged
from torch import nn

INFERENCE_CONFIG = Path("configs") / "inference.json"
METADATA = Path("configs") / "metadata.json"
WEIGHTS = Path("models") / "model.pt"
# Keys that may wrap a state dict: a trainer's checkpoint, and the zoo's CheckpointLoader ``load_dict``.
WRAPPING_KEYS = ("state_dict", "model")
# Names the app reads (:mod:`apps.slpt.ood`) that a backbone may split into several structures, as
# patterns of its label names: the trunk's skeleton an abdominal field of view holds (TotalSegmentator's
# names; limbs, shoulders and skull left out, so that a head or a limb never counts as an abdomen's bone).
LABEL_GROUPS: dict[str, tuple[str, ...]] = {
    "bone": ("vertebrae_*", "rib_*", "sternum", "sacrum", "hip_*"),
}


@dataclass
class Backbone:
    """A loaded backbone.

    Attributes:
        network: the segmentation network, in eval mode, weights loaded strictly.
        preprocessing: image-only transforms (dict-based, key ``"image"``) that follow loading.
        roi_size: sliding-window size the bundle was trained/inferred with.
        labels: organ names to output indices, when the bundle declares them.
        identity: ``{"path", "sha256", "name"}``; prompt checkpoints record this.
        metadata: the bundle's ``configs/metadata.json`` (empty when absent).
    """

    network: nn.Module
    preprocessing: list
    roi_size: tuple[int, int, int]
    labels: dict[str, int] = field(default_factory=dict)
    identity: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def out_channels(self) -> int:
        return int(self.metadata.get("out_channels") or _last_conv_channels(self.network))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_backbone(bundle_dir: str | Path, device: str | torch.device = "cpu") -> Backbone:
    """Load the network and its preprocessing from a bundle directory; fail loudly on any mismatch.

    Raises:
        FileNotFoundError: the directory lacks ``configs/inference.json`` or ``models/model.pt``.
        ValueError: the config has no ``network_def``, or the weights do not match it exactly.
    """
    bundle_dir = Path(bundle_dir).resolve()
    for required in (INFERENCE_CONFIG, WEIGHTS):
        if not (bundle_dir / required).is_file():
            raise FileNotFoundError(f"backbone bundle {bundle_dir} has no {required}")

    parser = read_bundle_config(bundle_dir)
    if "network_def" not in parser.config:
        raise ValueError(f"{bundle_dir / INFERENCE_CONFIG} has no 'network_def'")
    network: nn.Module = parser.get_parsed_content("network_def", instantiate=True)

    weights_path = bundle_dir / WEIGHTS
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    wrapper = next((k for k in WRAPPING_KEYS if isinstance(state, dict) and isinstance(state.get(k), dict)), None)
    if wrapper is not None:
        state = state[wrapper]
    load_strict(network, state, source=str(weights_path))
    network.to(device).eval()

    metadata = json.loads((bundle_dir / METADATA).read_text()) if (bundle_dir / METADATA).is_file() else {}
    return Backbone(
        network=network,
        preprocessing=image_preprocessing(parser),
        roi_size=_roi_size(parser),
        labels=bundle_labels(metadata),
        identity={"path": str(bundle_dir), "sha256": file_sha256(weights_path), "name": bundle_dir.name},
        metadata=metadata,
    )


def bundle_labels(metadata: dict) -> dict[str, int]:
    """Organ names to output channels from a bundle's ``configs/metadata.json``: its ``labels`` map, else the
    MONAI bundle schema's ``network_data_format.outputs.pred.channel_def`` (``{"5": "liver", ...}``, the
    model zoo's way; its first output where none is called ``pred``); empty when it has neither."""
    if metadata.get("labels"):
        return {str(name): int(channel) for name, channel in metadata["labels"].items()}
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    channel_def = outputs.get("pred", next(iter(outputs.values()), {})).get("channel_def", {})
    return {str(name): int(channel) for channel, name in channel_def.items()}


def label_channels(labels: dict[str, int], name: str) -> tuple[int, ...]:
    """The output channels that make up ``name``: its own label, else those of the structures of
    :data:`LABEL_GROUPS` the backbone has (in channel order); ``()`` when it has none of them."""
    if name in labels:
        return (int(labels[name]),)
    patterns = LABEL_GROUPS.get(name, ())
    return tuple(sorted(int(c) for n, c in labels.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)))


def check_state_dict(expected: dict, state: dict, source: str) -> None:
    """Raise a ``ValueError`` naming missing, unexpected and mis-shaped keys of ``state``."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    problems = [
        f"{what} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mis_shaped))
        if keys
    ]
    if problems:
        raise ValueError(f"weights in {source} do not match the network: " + "; ".join(problems))


def load_strict(module: nn.Module, state: dict, source: str) -> None:
    """``load_state_dict`` that names what does not match instead of guessing (MONAI Label's
    ``load_strict=False`` reports success when nothing matched)."""
    check_state_dict(module.state_dict(), state, source)
    module.load_state_dict(state, strict=True)


def read_bundle_config(bundle_dir: str | Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(Path(bundle_dir) / INFERENCE_CONFIG)
    parser["bundle_root"] = str(bundle_dir)
    return parser


def image_preprocessing(parser: ConfigParser) -> list:
    """The bundle's preprocessing without its loader (callers load images their own way)."""
    if "preprocessing" not in parser.config:
        return []
    compose = parser.get_parsed_content("preprocessing", instantiate=True)
    transforms = compose.transforms if isinstance(compose, Compose) else list(compose)
    return [t for t in transforms if not isinstance(t, LoadImaged)]


def _roi_size(parser: ConfigParser) -> tuple[int, int, int]:
    try:
        roi = parser.get_parsed_content("inferer#roi_size", instantiate=True)
    except KeyError:
        roi = (96, 96, 96)
    return tuple(int(r) for r in roi)


def _last_conv_channels(network: nn.Module) -> int:
    convs = [m for m in network.modules() if isinstance(m, nn.Conv3d)]
    if not convs:
        raise ValueError("cannot infer output channels: network has no Conv3d")
    return convs[-1].out_channels
