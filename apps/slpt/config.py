"""The app's one typed configuration, parsed once from MONAI Label's ``--conf key value`` strings.

Every field is set with ``--conf slpt_<field> <value>``; the dataclass validates itself, so a typo or
an out-of-range value stops the server at start-up with a message that names the setting. Settings are
declared in sections by concern (storage, model, training, inference, TESLA, server).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

CONF_PREFIX = "slpt_"
PRECISIONS = ("auto", "bf16", "fp32")


def _f(default, help_: str, **kw):
    return field(default=default, metadata={"help": help_}, **kw)


@dataclass
class StorageSettings:
    """Storage: where the frozen backbone and the prompt checkpoints live."""

    backbone: str = _f("models/backbone", "frozen backbone bundle directory (configs/inference.json + models/model.pt)")
    model_dir: str = _f("model/slpt", "prompt checkpoint directory (versions + current.json)")

    def _checks(self) -> list[tuple[bool, str]]:
        return []


@dataclass
class ModelSettings:
    """Model: the SLPT v2 design around the frozen backbone (``apps/slpt/model/prompts.py``)."""

    stages: tuple[str, ...] = _f(("up_layers.0",),
                                 "consecutive decoder stages that get the K prompt sets and their FPUs; the "
                                 "finer stages run once, shared by the K sets")
    num_prompts: int = _f(3, "K, the number of diversified prompt sets")
    prompt_channels: int = _f(4, "channels of each prompt tensor")
    prompt_size: int = _f(4, "spatial size of each learnable prompt cube")
    hidden_ratio: float = _f(1.0, "FPU hidden width as a fraction of the stage channels")
    decoder_rank: int = _f(4, "rank of the low-rank updates of every decoder kernel (0: none)")
    decoder_shifts: bool = _f(True, "tune shifts of the decoder's norm scales, norm shifts and biases")
    # Deltas on the first two encoder stages, at the prompts' step size: the largest single gain in validation
    # tumour Dice (docs/results/explore, picked by benchmarks.explore.pick).
    encoder_stages: int = _f(2, "the first this many encoder stages get the decoder's deltas too (0: the encoder "
                                "stays frozen whole and training runs no backward pass through it)")
    head_channels: int = _f(16, "hidden width of the tumour head")
    head_kernel: int = _f(1, "kernel size of the tumour head's first conv: 1, or 3 to compare each voxel with "
                             "its neighbours (one more full-resolution conv)")
    organ: str = _f("liver", "the backbone's label (configs/metadata.json) of the organ that holds the lesions")

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (self.num_prompts >= 1, "slpt_num_prompts must be >= 1"),
            (self.prompt_channels >= 1 and self.prompt_size >= 1,
             "slpt_prompt_channels and slpt_prompt_size must be >= 1"),
            (0.0 < self.hidden_ratio <= 4.0, "slpt_hidden_ratio must be in (0, 4]"),
            (len(self.stages) >= 1 or self.num_prompts == 1, "slpt_stages needs a stage for K > 1 prompt sets"),
            (self.head_channels >= 1, "slpt_head_channels must be >= 1"),
            (self.head_kernel in (1, 3), "slpt_head_kernel must be 1 or 3"),
            (self.decoder_rank >= 0, "slpt_decoder_rank must be >= 0"),
            (self.encoder_stages >= 0, "slpt_encoder_stages must be >= 0"),
        ]


@dataclass
class TrainingSettings:
    """Training: one round of fitting the added parts to the labelled scans."""

    epochs: int = _f(200, "training epochs per round")
    iterations_per_epoch: int = _f(8, "optimiser steps per epoch")
    val_interval: int = _f(10, "validate every this many epochs (and after the last one)")
    batch_size: int = _f(4, "patches per optimiser step")
    patch_size: int = _f(32, "training patch edge in backbone voxels (multiple of 8)")
    learning_rate: float = _f(1e-2, "AdamW peak learning rate of prompts, updaters and head (one-cycle schedule)")
    decoder_learning_rate: float = _f(1e-2, "AdamW peak learning rate of the decoder's shifts and low-rank updates")
    # Off by default: on validation phantoms, pushing the sets apart everywhere in the organ cost tumour Dice
    # (docs/results/explore). The sets still part, by their own random starts.
    diversity_weight: float = _f(0.0, "weight of the prompt-diversity term in the loss")
    tumour_weight: float = _f(5.0, "loss weight of the tumour class (Dice and cross-entropy); tumour is ~1% of voxels")
    tumour_patch_ratio: float = _f(4.0, "tumour-centred training patches per background- and per liver-centred one")
    val_fraction: float = _f(0.2, "share of labelled scans held out for validation (fixed across rounds)")
    min_val_scans: int = _f(1, "validate only when at least this many scans can be held out")
    min_train_scans: int = _f(2, "never hold out scans that would leave fewer training scans than this")
    seed: int = _f(0, "seed for prompt initialisation, patch sampling and augmentation")

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (self.epochs >= 1 and self.iterations_per_epoch >= 1,
             "slpt_epochs and slpt_iterations_per_epoch must be >= 1"),
            (self.val_interval >= 1, "slpt_val_interval must be >= 1"),
            (self.batch_size >= 1, "slpt_batch_size must be >= 1"),
            (self.patch_size >= 16 and self.patch_size % 8 == 0, "slpt_patch_size must be a multiple of 8, >= 16"),
            (self.learning_rate > 0 and self.decoder_learning_rate > 0,
             "slpt_learning_rate and slpt_decoder_learning_rate must be > 0"),
            (self.diversity_weight >= 0, "slpt_diversity_weight must be >= 0"),
            (self.tumour_weight > 0, "slpt_tumour_weight must be > 0"),
            (self.tumour_patch_ratio >= 0, "slpt_tumour_patch_ratio must be >= 0"),
            (0.0 <= self.val_fraction < 1.0, "slpt_val_fraction must be in [0, 1)"),
            (self.min_val_scans >= 1 and self.min_train_scans >= 1,
             "slpt_min_val_scans and slpt_min_train_scans must be >= 1"),
        ]


@dataclass
class InferenceSettings:
    """Inference: how a scan is run through the network (training shares the precision)."""

    precision: str = _f("auto", "bf16 autocast for training and inference: auto (where the CPU has avx512_bf16 "
                                "or AMX, or on a CUDA GPU with bf16), bf16, or fp32")
    sw_overlap: float = _f(0.25, "sliding-window overlap in [0, 1)")
    sw_batch_voxels: int = _f(64**3, "sliding windows run through the network together, up to this many voxels "
                                     "per pass (eight 32³ windows, one 64³); GroupNorm normalises each window on "
                                     "its own, so this changes speed and memory, never the result")
    ood_check: bool = _f(True, "flag scans whose organ layout is not an abdominal CT's (apps/slpt/ood.py): /infer/* "
                               "answers an empty label with the reason, TESLA never selects them")

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (self.precision in PRECISIONS, f"slpt_precision must be one of {PRECISIONS}"),
            (0.0 <= self.sw_overlap < 1.0, "slpt_sw_overlap must be in [0, 1)"),
            (self.sw_batch_voxels >= 1, "slpt_sw_batch_voxels must be at least 1"),
        ]


@dataclass
class TeslaSettings:
    """TESLA active learning: the prompt-based uncertainty, the budget and its rounds."""

    uncertainty_margin: int = _f(2, "voxels around the predicted tumour counted as lesion-relevant")
    uncertainty_top_fraction: float = _f(0.01, "most-uncertain share of the liver counted as lesion-relevant")
    budget_fraction: float = _f(0.05, "labelling budget as a share of the pool (the paper's 5%)")
    rounds: int = _f(2, "rounds the budget is split into")
    min_round_size: int = _f(2, "smallest round, so tiny pools still get a useful round")
    lease_seconds: float = _f(1800.0, "how long a served scan stays reserved for its annotator")
    train_after_labels: int = _f(0, "retrain after this many new final labels (0: when the round is complete)")
    embed_stage: str = _f("down_layers.3", "backbone stage pooled into the scan embedding (the bottleneck)")
    scoring_workers: int = _f(1, "processes that share a scoring run's scans, one GPU each in turn where there are "
                                 "several (1: the scoring task's own process)")

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (self.uncertainty_margin >= 0, "slpt_uncertainty_margin must be >= 0"),
            (0.0 < self.uncertainty_top_fraction <= 1.0, "slpt_uncertainty_top_fraction must be in (0, 1]"),
            (0.0 < self.budget_fraction <= 1.0, "slpt_budget_fraction must be in (0, 1]"),
            (self.rounds >= 1 and self.min_round_size >= 1, "slpt_rounds and slpt_min_round_size must be >= 1"),
            (self.lease_seconds > 0, "slpt_lease_seconds must be > 0"),
            (self.train_after_labels >= 0, "slpt_train_after_labels must be >= 0"),
            (self.scoring_workers >= 1, "slpt_scoring_workers must be >= 1"),
        ]


@dataclass
class ServerSettings:
    """Server: limits on what clients may send."""

    max_upload_mb: int = _f(1024, "largest file a client may upload (a scan to /infer/*, an image or a label to "
                                  "the datastore), in MB; a 512x512x1000 CT is about 500 MB uncompressed")

    def _checks(self) -> list[tuple[bool, str]]:
        return [(1 <= self.max_upload_mb <= 65536, "slpt_max_upload_mb must be in [1, 65536]")]


# In the order docs/settings.md lists them. Each concern's settings and checks are found in one section;
# SLPTConfig joins them, and every setting keeps its flat ``slpt_<name>`` key and attribute
# (``cfg.patch_size``), the names that checkpoint metadata and the result digests store.
SECTIONS = (StorageSettings, ModelSettings, TrainingSettings, InferenceSettings, TeslaSettings, ServerSettings)


@dataclass
class SLPTConfig(ServerSettings, TeslaSettings, InferenceSettings, TrainingSettings, ModelSettings, StorageSettings):
    """Settings of the SLPT app (defaults are the method's defaults, chosen on a validation split), one section
    per concern (:data:`SECTIONS`)."""

    def __post_init__(self):
        self.stages = tuple(self.stages)
        for section in SECTIONS:
            for ok, message in section._checks(self):
                if not ok:
                    raise ValueError(f"{message} (config: {self._short()})")

    def _short(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items() if k not in ("backbone", "model_dir"))

    @classmethod
    def from_conf(cls, conf: dict[str, str], app_dir: str | Path = ".") -> SLPTConfig:
        """Parse MONAI Label's string ``conf``; unknown ``slpt_*`` keys are an error, not a typo to ignore."""
        hints = get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in conf.items():
            if not key.startswith(CONF_PREFIX):
                continue  # MONAI Label's own keys (e.g. server_mode)
            name = key[len(CONF_PREFIX):]
            if name not in names:
                known = ", ".join(CONF_PREFIX + n for n in sorted(names))
                raise ValueError(f"unknown setting {key!r}; known settings: {known}")
            values[name] = _coerce(key, raw, hints[name])
        config = cls(**values)
        for name in ("backbone", "model_dir"):
            path = Path(getattr(config, name))
            setattr(config, name, str(path if path.is_absolute() else Path(app_dir) / path))
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, **overrides: Any) -> SLPTConfig:
        """A validated copy with some fields replaced (per-request training parameters)."""
        hints = get_type_hints(type(self))
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - names
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}; known: {sorted(names)}")
        return dataclasses.replace(self, **{k: _coerce(k, v, hints[k]) for k, v in overrides.items()})


def _coerce(key: str, raw: Any, kind) -> Any:
    expected = getattr(kind, "__name__", str(kind))
    if kind is bool and isinstance(raw, bool):
        return raw
    if kind in (int, float) and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if kind is int and int(raw) != raw:
            raise ValueError(f"setting {key!r} expects int, got {raw!r}")
        return kind(raw)
    if getattr(kind, "__origin__", None) is tuple and isinstance(raw, (list, tuple)):
        return tuple(str(s) for s in raw)
    if not isinstance(raw, str):
        raise ValueError(f"setting {key!r} expects {expected}, got {raw!r}")
    try:
        if kind is bool:
            if raw.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"true", "1", "yes"}
        if kind in (int, float):
            return kind(raw)
        if getattr(kind, "__origin__", None) is tuple:
            return tuple(json.loads(raw)) if raw.startswith("[") else tuple(s.strip() for s in raw.split(",") if s)
        return raw
    except ValueError as e:
        raise ValueError(f"setting {key!r} expects {expected}, got {raw!r}") from e
