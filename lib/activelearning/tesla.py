"""MONAI Label strategy ``tesla``: serves TESLA's current round, one scan per annotator at a time.

Annotators are told apart by ``client_id`` in the request body (OHIF/Slicer send one), falling back to
the authenticated user name (``main.py`` passes it through). The round state (queue, reasons, leases)
lives in ``<model_dir>/tesla_state.json``, written atomically and separate from MONAI Label's
``datastore_v2.json``, so a restart or a ``kill -9`` loses nothing. Nothing here scores: it only reads
what the ``tesla`` scoring method stored, and falls back to diversity when that is missing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from apps.slpt.active.policy import plan_round
from apps.slpt.active.rounds import (
    RoundState,
    budget_plan,
    queue_view,
    round_complete,
    serve,
    start_round,
    training_due,
)
from apps.slpt.config import SLPTConfig
from apps.slpt.model.checkpoints import PromptCheckpointStore, atomic_write_json
from lib.activelearning.tesla_scoring import INFO_KEY

logger = logging.getLogger(__name__)


class Tesla(Strategy):
    """Stage 1 (diversity) until a prompt checkpoint exists, stage 2 (uncertainty + diversity) after."""

    def __init__(self, config: SLPTConfig):
        super().__init__("TESLA: diversity first, then prompt-based uncertainty; rounds and per-annotator leases")
        self.cfg = config
        self.store = PromptCheckpointStore(config.model_dir)
        self.state_path = Path(config.model_dir) / "tesla_state.json"
        self._lock = threading.Lock()

    def load_state(self) -> RoundState:
        if not self.state_path.is_file():
            return RoundState()
        return RoundState.from_dict(json.loads(self.state_path.read_text()))

    def __call__(self, request, datastore: Datastore):
        client = str(request.get("client_id") or "anonymous")
        lease_seconds = _positive(request.get("lease_seconds", self.cfg.lease_seconds), "lease_seconds")
        with self._lock:
            state = self.load_state()
            labelled = set(datastore.get_labeled_images())
            unlabelled = sorted(set(datastore.get_unlabeled_images()))
            now = time.time()
            if (not state.queue or round_complete(state, labelled)) and unlabelled:
                self._new_round(state, datastore, labelled, unlabelled, now)
            image_id = serve(state, client, labelled, now, lease_seconds)
            atomic_write_json(self.state_path, state.to_dict())
        if image_id is None:
            logger.info("TESLA: nothing free for %s in round %d", client, state.round)
            return {}
        rank = state.queue.index(image_id) + 1
        return {"id": image_id, "tesla": {**state.reasons.get(image_id, {}), "rank": rank, "round": state.round,
                                          "stage": state.stage, "client_id": client,
                                          "lease_expires": state.leases[image_id]["expires"]}}

    def training_due(self, labelled: set[str], labelled_when_trained: int) -> bool:
        with self._lock:
            state = self.load_state()
            due = training_due(state, labelled, labelled_when_trained, self.cfg.train_after_labels)
            atomic_write_json(self.state_path, state.to_dict())
        return due

    def view(self, datastore: Datastore) -> dict:
        """What an annotation lead sees in ``/info/``: round, budget and the queue with reasons."""
        state = self.load_state()
        labelled = set(datastore.get_labeled_images())
        pool = len(labelled) + len(datastore.get_unlabeled_images())
        budget, round_size = budget_plan(pool, self.cfg.budget_fraction, self.cfg.rounds, self.cfg.min_round_size)
        return {"round": state.round, "stage": state.stage, "round_size": round_size, "budget": budget,
                "selected_total": state.selected_total, "labelled": len(labelled), "pool": pool,
                "checkpoint_version": state.checkpoint_version,
                "queue": queue_view(state, labelled, time.time())}

    def _new_round(self, state, datastore, labelled, unlabelled, now) -> None:
        pool = len(labelled) + len(unlabelled)
        _, k = budget_plan(pool, self.cfg.budget_fraction, self.cfg.rounds, self.cfg.min_round_size)
        infos = {i: datastore.get_image_info(i).get(INFO_KEY, {}) for i in unlabelled}
        version = self.store.current()
        rng = np.random.default_rng(self.cfg.seed + state.round)
        plan = plan_round(unlabelled, infos, version, k, rng, lambda i: _header_features(datastore.get_image_uri(i)))
        start_round(state, plan.picks, plan.reasons, plan.stage, version, now)
        logger.info("TESLA round %d (stage %d, %s): %s", state.round, plan.stage, plan.basis, plan.picks)


def _positive(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0:
        raise HTTPException(422, f"{name} must be a positive number of seconds, got {value!r}")
    return number


def _header_features(path: str) -> list[float]:
    """Shape, spacing and axis directions from the file header only (no voxel data is read)."""
    try:
        img = nib.load(path)
        return [*img.shape[:3], *img.header.get_zooms()[:3], *np.sign(np.diag(img.affine)[:3])]
    except Exception:  # not a NIfTI (e.g. DICOM folder): geometry unknown, still selectable
        return [0.0] * 9
