"""MONAI Label train task ``slpt``: prompt-only training on the datastore's final labels.

MONAI Label runs it in a subprocess (``POST /train/slpt``) and kills that process on ``DELETE /train/``;
the round itself (:func:`apps.slpt.training.rounds.train_round`) writes each improvement the moment it is
found, so a stopped run keeps its best checkpoint. Its loop is plain PyTorch: no ignite/MLflow handlers
run, which also sidesteps MLflow 3's refusal of its default file store by design rather than by env var.

With ``multi_gpu`` and several GPUs (``gpus``: ``all`` or ``"0,1"``), MONAI Label's own ``BasicTrainTask``
spawns one process per GPU and calls :meth:`SLPTTrainer.train` in each with its rank; the loop is then
data-parallel (:mod:`apps.slpt.training.distributed`: NCCL on CUDA, gloo on the CPU) and rank 0 alone writes
the split, the checkpoints and the stats.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import monailabel
import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from apps.slpt.config import SLPTConfig
from apps.slpt.inference import task_inferer
from apps.slpt.labels import FOREGROUND
from apps.slpt.model.backbone import Backbone
from apps.slpt.model.checkpoints import PromptCheckpointStore, atomic_write_json
from apps.slpt.model.prompts import parameter_report
from apps.slpt.training import distributed
from apps.slpt.training.data import as_pair, pair_transforms
from apps.slpt.training.loop import prompt_optimizer, task_loss
from apps.slpt.training.rounds import TrainingRound, round_split, starting_model, train_round
from apps.slpt.training.splits import split_scans
from lib.request_params import CHECKED_SETTINGS

logger = logging.getLogger(__name__)


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
        """This run's config: the app's, with the settings the server parsed from the request before the run
        started (``lib/endpoints.py``); a run the app starts itself, after labelling, has none."""
        return self.cfg.with_overrides(**request.get(CHECKED_SETTINGS, {}))

    def pre_process(self, request, datastore: Datastore):
        """One record per labelled scan, with its id (the split is kept by id)."""
        self._counts = {"labelled": len(datastore.get_labeled_images()),
                        "unlabelled": len(datastore.get_unlabeled_images())}
        return [{"id": i, "image": datastore.get_image_uri(i), "label": datastore.get_label_uri(i, "final")}
                for i in sorted(datastore.get_labeled_images())]

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
        """One round on this process's rank: fixed split, load scans, train prompts, checkpoint improvements."""
        if not datalist:
            raise ValueError("no labelled scans: save final labels with PUT /datastore/label first")
        world_size = world_size if request.get("multi_gpu") else 1
        device = self._rank_device(rank, world_size, request)
        if world_size > 1 and device.type == "cpu":  # ranks sharing the CPU share its cores, not each take all
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        # MONAI Label's own keys, where a client set them; else the device's backend and a file every rank finds.
        url = request.get("distributed_url") or distributed.rendezvous_file(self.cfg.model_dir, request["run_id"])
        with distributed.process_group(rank, world_size, device, url, request.get("distributed_backend")):
            return self._train(rank, request, datalist, device)

    @staticmethod
    def _rank_device(rank: int, world_size: int, request: dict) -> torch.device:
        """This rank's GPU (``gpus`` lists them, ``all``: the first ``world_size``), or the request's device.

        BasicTrainTask.__call__ has mapped the request's device ("cuda" by default) to "cpu" where no GPU is.
        """
        if world_size > 1 and torch.cuda.is_available():
            gpus = request.get("gpus", "all")
            ids = list(range(world_size)) if gpus == "all" else [int(g) for g in str(gpus).split(",")]
            torch.cuda.set_device(ids[rank])  # NCCL's collectives and broadcast_object_list use it
            return torch.device(f"cuda:{ids[rank]}")
        return torch.device(request.get("device") or "cpu")

    def _train(self, rank, request, datalist, device) -> dict:
        start = time.time()
        context = Context()
        context.request, context.datalist = request, datalist
        warm = str(request.get("warm_start", True)).lower() != "false"
        context.model, context.config = starting_model(self.backbone, self.store, self.run_config(request), warm,
                                                       log=logger.info, warn=logger.warning)
        cfg = context.config

        # Rank 0 extends and writes the split; every rank trains on the one it wrote.
        split, split_text = distributed.from_rank_zero(
            round_split([d["id"] for d in datalist], self.split_path, cfg) if rank == 0 else None)
        if rank == 0:
            logger.info("SLPT data: %s; datastore %s", split_text, self._counts)
        load = self.train_pre_transforms(context)
        # Every rank holds every labelled scan: a global batch draws its patches from any of them.
        scans = {d["id"]: as_pair(load({"image": d["image"], "label": d["label"]})) for d in datalist}
        train, val = split_scans(scans, split)

        context.network = self.network(context).to(device)
        stats = {"name": "slpt", "start_ts": int(start), "split": split_text, **self._counts,
                 "train_size": len(train), "val_size": len(val), "parameters": parameter_report(context.network),
                 "total_epochs": cfg.epochs, "processes": distributed.world()[1]}

        def on_epoch(report, version):  # called on rank 0 only (fit)
            stats.update(epoch=report.epoch, loss=round(report.loss, 5), diversity=round(report.diversity, 5),
                         val=report.val, best_metric=report.best_metric, total_time=round(time.time() - start, 1),
                         prompt_checkpoint_version=version)
            atomic_write_json(self._stats_path, stats)

        data = TrainingRound(train, val, split_text, self.backbone.identity, dict(self._labels), monailabel.__version__)
        stats["prompt_checkpoint_version"] = train_round(
            context.network, data, cfg, self.val_inferer(context), self.store, optimizer=self.optimizer(context),
            seg_loss=self.loss_function(context), on_epoch=on_epoch, log=logger.info)
        if rank == 0:
            atomic_write_json(self._stats_path, stats)
        return stats
