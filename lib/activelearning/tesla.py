"""MONAI Label strategy ``tesla``: serves TESLA's current round, one scan per annotator at a time.

Annotators are told apart by ``client_id`` in the request body (OHIF/Slicer send one), falling back to
the authenticated user name (``main.py`` passes it through). The round state (queue, reasons, leases)
lives in ``<model_dir>/tesla_state.json``, written atomically and separate from MONAI Label's
``datastore_v2.json``, so a restart or a ``kill -9`` loses nothing. The state names the datastore it was
made for: started on another studies folder or PACS, the app archives it (``tesla_archive/``) and starts a
fresh round; prompt checkpoints stay, as they belong to the backbone. Nothing here scores: it only reads
what the ``tesla`` scoring method stored in its score cache.
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

from apps.slpt.active.policy import extend_round, plan_round
from apps.slpt.active.rounds import (
    RoundState,
    budget_plan,
    drop_missing,
    join_round,
    queue_view,
    release_leases,
    round_complete,
    serve,
    start_round,
    training_due,
)
from apps.slpt.config import SLPTConfig
from apps.slpt.model.checkpoints import PromptCheckpointStore, atomic_write_json
from lib.activelearning.tesla_scoring import (
    ScoreCache,
    datastore_location,
    needs_scoring,
    waits_for_embedding,
)

logger = logging.getLogger(__name__)


class Tesla(Strategy):
    """Stage 1 (diversity) until a prompt checkpoint exists, stage 2 (uncertainty + diversity) after."""

    def __init__(self, config: SLPTConfig, backbone_sha256: str):
        super().__init__("TESLA: diversity first, then prompt-based uncertainty; rounds and per-annotator leases")
        self.cfg, self.backbone_sha256 = config, backbone_sha256
        self.store = PromptCheckpointStore(config.model_dir)
        self.state_path = Path(config.model_dir) / "tesla_state.json"
        self._lock = threading.Lock()

    def cache(self, datastore: Datastore) -> ScoreCache:
        return ScoreCache(self.cfg.model_dir, datastore_location(datastore), self.backbone_sha256)

    def load_state(self, datastore: Datastore, archive: bool = False) -> RoundState:
        """The round state of ``datastore``; a state made for another one is archived (if ``archive``) and a
        fresh one returned."""
        location = datastore_location(datastore)
        if not self.state_path.is_file():
            return RoundState(datastore=location)
        state = RoundState.from_dict(json.loads(self.state_path.read_text()))
        if state.datastore == location:
            return state
        # A state from before states named their datastore is this one's if its round is here.
        if not state.datastore and set(state.queue) & set(datastore.list_images()):
            state.datastore = location
            return state
        if archive:
            archived = self.state_path.parent / "tesla_archive" / f"tesla_state-{time.strftime('%Y%m%dT%H%M%S')}.json"
            archived.parent.mkdir(parents=True, exist_ok=True)
            self.state_path.replace(archived)
            logger.warning("TESLA: the round state was made for %s, not for this datastore (%s); archived as %s, "
                           "a fresh round starts", state.datastore or "an unnamed datastore", location, archived)
        return RoundState(datastore=location)

    def __call__(self, request, datastore: Datastore):
        client = str(request.get("client_id") or "anonymous")
        lease_seconds = _positive(request.get("lease_seconds", self.cfg.lease_seconds), "lease_seconds")
        with self._lock:
            state = self.load_state(datastore, archive=True)
            labelled = set(datastore.get_labeled_images())
            unlabelled = sorted(set(datastore.get_unlabeled_images()))
            now = time.time()
            self._drop_missing(state, labelled | set(unlabelled), now)
            image_id = self._serve(state, datastore, client, labelled, unlabelled, now, lease_seconds)
            atomic_write_json(self.state_path, state.to_dict())
        if image_id is None:
            logger.info("TESLA: nothing for %s in round %d: every unlabelled scan is leased to someone else or "
                        "none is left", client, state.round)
            return {}
        rank = state.queue.index(image_id) + 1
        return {"id": image_id, "tesla": {**state.reasons.get(image_id, {}), "rank": rank, "round": state.round,
                                          "client_id": client, "lease_expires": state.leases[image_id]["expires"]}}

    def _serve(self, state, datastore, client, labelled, unlabelled, now, lease_seconds) -> str | None:
        """The client's scan: their lease or the round's best free scan, else one more scan for the round."""
        if not unlabelled:
            return None
        cache = self.cache(datastore)
        summaries = cache.summaries()  # full records (embeddings) are read only to choose scans
        waiting = [i for i in unlabelled if waits_for_embedding(summaries.get(i, {}))]
        # Round 0 waits for the pool's embeddings: chosen earlier, a round would be k-means on image
        # geometry, which on equal-sized scans is just the first ids. Meanwhile it grows one scan per request.
        if (state.round > 0 and round_complete(state, labelled)) or (state.round == 0 and not waiting):
            self._new_round(state, datastore, cache.records(), labelled, unlabelled, now)
        image_id = serve(state, client, labelled, now, lease_seconds)
        if image_id is None:
            image_id = self._grow_round(state, datastore, cache.records(), unlabelled, len(waiting))
            if image_id is not None:
                image_id = serve(state, client, labelled, now, lease_seconds)
        return image_id

    def _new_round(self, state, datastore, records, labelled, unlabelled, now) -> None:
        pool = len(labelled) + len(unlabelled)
        _, k = budget_plan(pool, self.cfg.budget_fraction, self.cfg.rounds, self.cfg.min_round_size)
        version = self.store.current()
        rng = np.random.default_rng(self.cfg.seed + state.round)
        unlabelled = _selectable(unlabelled, records)
        if not unlabelled:
            logger.info("TESLA: no new round: every unlabelled scan is flagged as not an abdominal CT")
            return
        plan = plan_round(unlabelled, records, version, k, rng, _geometry(datastore))
        release_leases(state, labelled, now)
        start_round(state, plan.picks, plan.reasons, plan.stage, version, now, pool_size=len(unlabelled))
        logger.info("TESLA round %d (stage %d, %s) of %d unlabelled scans: %s", state.round, plan.stage, plan.basis,
                    len(unlabelled), state.queue)

    def _grow_round(self, state, datastore, records, unlabelled, waiting: int) -> str | None:
        """One more scan for the round, by the same criterion, when each of its unlabelled scans is leased."""
        rng = np.random.default_rng([self.cfg.seed, state.round, len(state.queue)])
        grown = extend_round(_selectable(unlabelled, records), state.queue, records, self.store.current(), rng,
                             _geometry(datastore))
        if grown is None:
            return None
        image_id, reason = grown
        if state.round == 0:
            reason = {**reason, "overflow": False, "provisional": True,
                      "basis": f"provisional, {waiting} scans still wait for their embedding; {reason['basis']}"}
        join_round(state, image_id, reason)
        logger.info("TESLA round %d grows by %s (%s)", state.round, image_id, reason["basis"])
        return image_id

    @staticmethod
    def _drop_missing(state: RoundState, present: set[str], now: float) -> None:
        gone = drop_missing(state, present, now)
        if gone:
            logger.warning("TESLA: %s left the datastore; dropped from round %d", gone, state.round)

    def training_due(self, datastore: Datastore, labelled_when_trained: int) -> bool:
        with self._lock:
            state = self.load_state(datastore, archive=True)
            labelled = set(datastore.get_labeled_images())
            self._drop_missing(state, labelled | set(datastore.get_unlabeled_images()), time.time())
            due = training_due(state, labelled, labelled_when_trained, self.cfg.train_after_labels)
            atomic_write_json(self.state_path, state.to_dict())
        return due

    def view(self, datastore: Datastore) -> dict:
        """What an annotation lead sees in ``/info/``: round, budget, the queue with reasons, and how many
        scans wait for scoring. Read-only: a stale state is shown as it will be used, not rewritten."""
        state = self.load_state(datastore)
        labelled = set(datastore.get_labeled_images())
        unlabelled = datastore.get_unlabeled_images()
        drop_missing(state, labelled | set(unlabelled), time.time())
        pool = len(labelled) + len(unlabelled)
        budget, round_size = budget_plan(pool, self.cfg.budget_fraction, self.cfg.rounds, self.cfg.min_round_size)
        records, version = self.cache(datastore).summaries(), self.store.current()
        return {"datastore": state.datastore, "round": state.round, "stage": state.stage, "round_size": round_size,
                "budget": budget, "budget_used": len(labelled), "selected_total": state.selected_total,
                "labelled": len(labelled), "pool": pool, "checkpoint_version": state.checkpoint_version,
                "waiting_for_scoring": sum(needs_scoring(records.get(i, {}), version) for i in unlabelled),
                "waiting_for_embedding": sum(waits_for_embedding(records.get(i, {})) for i in unlabelled),
                # Skipped by the last scoring that reached them (an unreadable file, a PACS that did not answer),
                # with the reason; tried again by the next scoring, which the server runs unasked.
                "scoring_failed": {i: records[i]["error"] for i in unlabelled if records.get(i, {}).get("error")},
                # Never selected (the labelling budget is not spent on them); each with the reasons.
                "out_of_distribution": {i: reasons for i, reasons in self.cache(datastore).out_of_distribution().items()
                                        if i in unlabelled},
                "queue": queue_view(state, labelled, time.time())}


def _positive(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0:
        raise HTTPException(422, f"{name} must be a positive number of seconds, got {value!r}")
    return number


def _selectable(unlabelled: list[str], records: dict[str, dict]) -> list[str]:
    """Unlabelled scans minus those scoring flagged as not abdominal CTs (``apps/slpt/ood.py``)."""
    return [i for i in unlabelled if not (records.get(i, {}).get("out_of_distribution") or {}).get("flagged")]


def _geometry(datastore: Datastore):
    return lambda image_id: _header_features(datastore.get_image_uri(image_id))


def _header_features(path: str) -> list[float]:
    """Shape, spacing and axis directions from the file header only (no voxel data is read)."""
    try:
        img = nib.load(path)
        return [*img.shape[:3], *img.header.get_zooms()[:3], *np.sign(np.diag(img.affine)[:3])]
    except Exception:  # not a NIfTI (e.g. DICOM folder): geometry unknown, still selectable
        return [0.0] * 9
