"""One training round of the app: where it starts, its fixed split, and publishing each improvement.

Plain PyTorch and files, no server: ``lib/trainers/slpt.py`` reads the datastore's labelled scans and calls
these. Each improvement is written, atomically, the moment it is found, so a run that is stopped (MONAI Label
kills the training process on ``DELETE /train/``) keeps its best checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer

from apps.slpt.config import SLPTConfig
from apps.slpt.model.backbone import Backbone
from apps.slpt.model.build import build_model, load_checkpoint
from apps.slpt.model.checkpoints import CheckpointError, PromptCheckpointStore, atomic_write_json
from apps.slpt.model.prompts import PromptedSegmenter, parameter_report
from apps.slpt.training.loop import EpochReport, Pair, fit
from apps.slpt.training.splits import describe_split, update_split


@dataclass
class TrainingRound:
    """A round's scans, and what its checkpoints record about where they came from.

    Args:
        train: ``[1, *S]`` image and label pairs to train on.
        val: pairs held out to pick the best epoch (empty: the last epoch is kept).
        split: a sentence describing the split (:func:`round_split`).
        backbone: the frozen backbone's identity (path and weight hash).
        classes: class name -> label value.
        app_version: the serving software's version.
    """

    train: list[Pair]
    val: list[Pair]
    split: str
    backbone: dict[str, Any]
    classes: dict[str, int]
    app_version: str


def starting_model(
    backbone: Backbone,
    store: PromptCheckpointStore,
    cfg: SLPTConfig,
    warm: bool,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> tuple[PromptedSegmenter, SLPTConfig]:
    """The model a round trains, and its config.

    With ``warm``, the served checkpoint rebuilt with its own prompt architecture (so the round refines it);
    otherwise, or when there is none, fresh prompts from ``cfg``. A served checkpoint that cannot be loaded
    is reported to ``warn`` (default ``log``) and the round starts fresh.
    """
    current = store.current()
    if warm and current is not None:
        try:
            served = load_checkpoint(backbone, store, current, cfg)
            log(f"SLPT warm start from prompt checkpoint v{current}")
            return served.model, served.config
        except CheckpointError as e:
            (warn or log)(f"SLPT starts fresh: {e}")
    return build_model(backbone, cfg), cfg


def round_split(ids: Iterable[str], path: str | Path, cfg: SLPTConfig) -> tuple[dict[str, str], str]:
    """The labelled ``ids`` split into ``"train"`` and ``"val"``, fixed across rounds by the file ``path``.

    Earlier rounds' assignments are read from ``path`` (none yet: the first round) and the updated split is
    written back atomically. Returns the split and a sentence describing it.
    """
    path = Path(path)
    previous = json.loads(path.read_text()) if path.is_file() else {}
    split = update_split(ids, previous, cfg.val_fraction, cfg.min_val_scans, cfg.min_train_scans, cfg.seed)
    atomic_write_json(path, split)
    return split, describe_split(split, cfg.val_fraction, cfg.min_val_scans, cfg.min_train_scans)


def checkpoint_metadata(data: TrainingRound, cfg: SLPTConfig, parameters: dict, report: EpochReport) -> dict[str, Any]:
    """What a prompt checkpoint says about itself: the config it was trained with (its architecture is
    rebuilt from it), the backbone it belongs to, classes, parameter counts, data, epoch and metrics."""
    return {
        "config": cfg.to_dict(),
        "backbone": data.backbone,
        "classes": dict(data.classes),
        "parameters": parameters,
        "train_size": len(data.train),
        "val_size": len(data.val),
        "split": data.split,
        "epoch": report.epoch,
        "metrics": report.val or {"note": "no validation set; last epoch kept"},
        "app_version": data.app_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def train_round(
    model: PromptedSegmenter,
    data: TrainingRound,
    cfg: SLPTConfig,
    inferer: Inferer,
    store: PromptCheckpointStore,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    seg_loss: Callable | None = None,
    on_epoch: Callable[[EpochReport, int | None], None] = lambda report, version: None,
    log: Callable[[str], None] = print,
) -> int | None:
    """Train ``model``'s prompts on ``data`` and publish every improvement to ``store``.

    The round's first improvement becomes a new version, served at once; later ones overwrite that same
    version, so a round adds one version however often it improves.

    Args:
        on_epoch: called after every epoch with its report and the version published so far (``None``
            before the first improvement of the round).

    Returns:
        The version this round published (``None`` only if no epoch ran).
    """
    parameters = parameter_report(model)
    version = None

    def publish(report: EpochReport) -> None:
        nonlocal version
        metadata = checkpoint_metadata(data, cfg, parameters, report)
        if version is None:
            version = store.save(model.trainable_state_dict(), metadata)
        else:
            store.replace(version, model.trainable_state_dict(), metadata)
        log(f"SLPT prompt checkpoint v{version} saved (epoch {report.epoch})")

    fit(model, data.train, data.val, cfg, inferer, optimizer=optimizer, seg_loss=seg_loss,
        on_epoch=lambda report: on_epoch(report, version), on_best=publish, log=log)
    return version
