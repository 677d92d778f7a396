"""MONAI Label train task ``slpt``: prompt-only training on the datastore's final labels.

MONAI Label runs it in a subprocess (``POST /train/slpt``) and kills that process on ``DELETE /train/``;
so the best checkpoint is written, atomically, the moment it is found, and a stopped run keeps it.
The training loop itself is ``apps.slpt.training.loop.fit`` (plain PyTorch): no ignite/MLflow handlers run,
which also sidesteps MLflow 3's refusal of its default file store by design rather than by env var.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import monailabel
from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from apps.slpt.config import SLPTConfig
from apps.slpt.inference import task_inferer
from apps.slpt.labels import FOREGROUND
from apps.slpt.model.backbone import Backbone
from apps.slpt.model.build import build_model, load_checkpoint
from apps.slpt.model.checkpoints import CheckpointError, PromptCheckpointStore, atomic_write_json
from apps.slpt.model.prompts import parameter_report
from apps.slpt.training.data import as_pair, pair_transforms
from apps.slpt.training.loop import fit, prompt_optimizer, task_loss
from apps.slpt.training.splits import describe_split, update_split

logger = logging.getLogger(__name__)

# Request parameters a client may set per run, mapped to config fields ("max_epochs" is MONAI Label's name).
REQUEST_FIELDS = {"max_epochs": "epochs", "epochs": "epochs", "iterations_per_epoch": "iterations_per_epoch",
                  "learning_rate": "learning_rate", "batch_size": "batch_size", "patch_size": "patch_size"}


class SLPTTrainer(BasicTrainTask):
    """Frozen backbone; trains prompts, updaters and head; fixed validation split; versioned checkpoints."""

    def __init__(self, backbone: Backbone, config: SLPTConfig):
        super().__init__(
            model_dir=config.model_dir,
            description="SLPT prompt-only training (frozen backbone, K diversified prompt sets)",
            config={"max_epochs": config.epochs, "iterations_per_epoch": config.iterations_per_epoch,
                    "learning_rate": config.learning_rate, "warm_start": True},
            amp=False,
            labels=FOREGROUND,
            tracking=None,
        )
        for unused in ("dataset", "dataloader", "tracking", "tracking_uri", "tracking_experiment_name", "val_split",
                       "train_batch_size", "val_batch_size", "early_stop_patience", "pretrained"):
            self._config.pop(unused, None)  # ignite-loop settings this task does not use; don't advertise them
        self.backbone, self.cfg = backbone, config
        self.store = PromptCheckpointStore(config.model_dir)
        self.split_path = Path(config.model_dir) / "split.json"

    def run_config(self, request: dict) -> SLPTConfig:
        """This run's config: the app's, with the request's per-run parameters (validated)."""
        overrides = {field: request[key] for key, field in REQUEST_FIELDS.items() if key in request}
        try:
            return self.cfg.with_overrides(**overrides)
        except ValueError as e:
            raise HTTPException(422, f"bad training parameter: {e}") from e

    def pre_process(self, request, datastore: Datastore):
        """One record per labelled scan, with its id (the split is kept by id)."""
        self._counts = {"labelled": len(datastore.get_labeled_images()),
                        "unlabelled": len(datastore.get_unlabeled_images())}
        return [{"id": i, "image": datastore.get_image_uri(i), "label": datastore.get_label_uri(i, "final")}
                for i in sorted(datastore.get_labeled_images())]

    def __call__(self, request, datastore: Datastore):
        self.run_config(request)  # reject bad parameters before any work
        return super().__call__(request, datastore)

    # BasicTrainTask's hooks, all used by train() below.
    def network(self, context: Context):
        return context.model

    def optimizer(self, context: Context):
        return prompt_optimizer(context.network, context.config)

    def loss_function(self, context: Context):
        return task_loss(context.config)  # per prompt set; DVPT adds the diversity term

    def train_pre_transforms(self, context: Context):
        return pair_transforms(self.backbone.preprocessing)

    def train_post_transforms(self, context: Context):
        return []

    def val_inferer(self, context: Context):
        return task_inferer(context.config)

    def train(self, rank, world_size, request, datalist):
        """One round: fixed split, load scans, train prompts, checkpoint every improvement."""
        start = time.time()
        if not datalist:
            raise ValueError("no labelled scans: save final labels with PUT /datastore/label first")
        context = Context()
        context.request, context.datalist = request, datalist
        model, context.config = self._initial_model(self.run_config(request),
                                                    warm=str(request.get("warm_start", True)).lower() != "false")
        context.model = model
        cfg = context.config

        previous = json.loads(self.split_path.read_text()) if self.split_path.is_file() else {}
        split = update_split([d["id"] for d in datalist], previous, cfg.val_fraction, cfg.min_val_scans,
                             cfg.min_train_scans, cfg.seed)
        atomic_write_json(self.split_path, split)
        split_text = describe_split(split, cfg.val_fraction, cfg.min_val_scans, cfg.min_train_scans)
        logger.info("SLPT data: %s; datastore %s", split_text, self._counts)

        load = self.train_pre_transforms(context)
        pairs = {d["id"]: as_pair(load({"image": d["image"], "label": d["label"]})) for d in datalist}
        train = [pairs[i] for i, side in sorted(split.items()) if side == "train"]
        val = [pairs[i] for i, side in sorted(split.items()) if side == "val"]

        # BasicTrainTask.__call__ has mapped the request's device ("cuda" by default) to "cpu" where no GPU is.
        context.network = self.network(context).to(request.get("device") or "cpu")
        params = parameter_report(context.network)
        version = None
        stats = {"name": "slpt", "start_ts": int(start), "split": split_text, **self._counts,
                 "train_size": len(train), "val_size": len(val), "parameters": params, "total_epochs": cfg.epochs}

        def on_epoch(report):
            stats.update(epoch=report.epoch, loss=round(report.loss, 5), diversity=round(report.diversity, 5),
                         val=report.val, best_metric=report.best_metric, total_time=round(time.time() - start, 1),
                         prompt_checkpoint_version=version)
            atomic_write_json(self._stats_path, stats)

        def on_best(report):
            nonlocal version
            metadata = {
                "config": cfg.to_dict(),
                "backbone": self.backbone.identity,
                "classes": dict(self._labels),
                "parameters": params,
                "train_size": len(train),
                "val_size": len(val),
                "split": split_text,
                "epoch": report.epoch,
                "metrics": report.val or {"note": "no validation set; last epoch kept"},
                "app_version": monailabel.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            if version is None:
                version = self.store.save(context.network.trainable_state_dict(), metadata)
            else:
                self.store.replace(version, context.network.trainable_state_dict(), metadata)
            logger.info("SLPT prompt checkpoint v%d saved (epoch %d)", version, report.epoch)

        fit(context.network, train, val, cfg, self.val_inferer(context), optimizer=self.optimizer(context),
            seg_loss=self.loss_function(context), on_epoch=on_epoch, on_best=on_best, log=logger.info)
        stats["prompt_checkpoint_version"] = version
        atomic_write_json(self._stats_path, stats)
        return stats

    def _initial_model(self, cfg: SLPTConfig, warm: bool):
        """Warm-start from the served checkpoint (keeping its prompt architecture), else fresh prompts."""
        current = self.store.current()
        if warm and current is not None:
            try:
                served = load_checkpoint(self.backbone, self.store, current, cfg)
                logger.info("SLPT warm start from prompt checkpoint v%d", current)
                return served.model, served.config
            except CheckpointError as e:
                logger.warning("SLPT starts fresh: %s", e)
        return build_model(self.backbone, cfg), cfg
