"""MONAI Label scoring method ``tesla``: embeddings and prompt-based uncertainty per unlabelled scan.

Results go into TESLA's score cache (:class:`ScoreCache`), one record per image of the datastore; the
strategy only reads them. An embedding is keyed by the image file's SHA-256; an uncertainty by the
prompt-checkpoint version (a new checkpoint re-scores). The liver mask of the backbone pass is kept on disk
(:class:`OrganMasks`, a few KB per scan), so re-scoring after a new checkpoint runs only the K-prompt pass.
Each scan is written as soon as it is scored, so a killed scoring run keeps everything it finished.
``slpt_scoring_workers`` processes share the scans (one GPU each where there are several); each writes its
own scans' records, and SQLite serialises their writes.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, LoadImaged
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from apps.slpt.active.scoring import embed_scan, prompt_uncertainty
from apps.slpt.active.workers import run_in_workers
from apps.slpt.config import SLPTConfig
from apps.slpt.model.backbone import Backbone, file_sha256
from apps.slpt.model.build import load_checkpoint
from apps.slpt.model.checkpoints import CheckpointError, PromptCheckpointStore, atomic_write_bytes
from apps.slpt.model.prompts import model_device
from apps.slpt.ood import LayoutLimits, captured_output, check_scan

logger = logging.getLogger(__name__)
INFO_KEY = "slpt_tesla"  # where earlier versions kept the scores: in the image info, taken over from there


def needs_scoring(info: dict, version: int | None) -> bool:
    """Whether a scan's TESLA record lacks an embedding, or an uncertainty from checkpoint ``version``."""
    return not info.get("embedding") or (version is not None and info.get("checkpoint_version") != version)


def waits_for_embedding(info: dict) -> bool:
    """Whether a scan has no embedding yet and scoring has not failed on it (it may still get one)."""
    return not info.get("embedding") and not info.get("error")


def datastore_location(datastore: Datastore) -> str:
    """What names a datastore across restarts: its DICOMweb URL, or its studies folder's real path."""
    if isinstance(datastore, DICOMWebDatastore):
        return datastore.name()  # MONAI Label's DICOMweb datastore names itself by the PACS URL
    folder = getattr(datastore, "_datastore_path", None)  # the local datastore has no public accessor
    return os.path.realpath(folder) if folder else f"{type(datastore).__name__}:{datastore.name()}"


class ScoreCache:
    """TESLA's scoring record per image (``embedding``, ``uncertainty``, ``checkpoint_version``, ...) for one
    datastore and backbone, in ``<model_dir>/tesla_scores.sqlite``.

    Not in the datastore's image info: MONAI Label copies that info into every Next Sample answer and
    ``/datastore/`` listing, and an embedding alone is 192 floats. SQLite, because the scoring subprocess
    writes a record per scan while the server reads, and one record is rewritten, not the whole cache.
    """

    def __init__(self, model_dir: str | Path, datastore: str, backbone_sha256: str):
        self.path = Path(model_dir) / "tesla_scores.sqlite"
        self.key = (datastore, backbone_sha256)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60)  # waits while the other process writes
        db.execute("CREATE TABLE IF NOT EXISTS scores (datastore TEXT, backbone TEXT, image_id TEXT, record TEXT, "
                   "PRIMARY KEY (datastore, backbone, image_id))")
        return db

    def records(self) -> dict[str, dict]:
        """Every image's full record."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT image_id, record FROM scores WHERE datastore = ? AND backbone = ?", self.key)
            return {image_id: json.loads(record) for image_id, record in rows}

    def summaries(self) -> dict[str, dict]:
        """Every image's record without the embedding's values (``embedding`` is ``True`` when there is one):
        enough for :func:`needs_scoring` and :func:`waits_for_embedding`, without parsing every embedding."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT image_id, json_type(record, '$.embedding') = 'array', "
                "json_extract(record, '$.checkpoint_version'), json_extract(record, '$.error') "
                "FROM scores WHERE datastore = ? AND backbone = ?", self.key)
            return {i: {"embedding": bool(e), "checkpoint_version": v, "error": err} for i, e, v, err in rows}

    def out_of_distribution(self) -> dict[str, list[str]]:
        """Images whose record is flagged as not an abdominal CT (``apps/slpt/ood.py``), with the reasons."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT image_id, json_extract(record, '$.out_of_distribution.reasons') FROM scores "
                "WHERE datastore = ? AND backbone = ? AND json_extract(record, '$.out_of_distribution.flagged')",
                self.key)
            return {i: json.loads(reasons or "[]") for i, reasons in rows}

    def put(self, image_id: str, record: dict) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", (*self.key, image_id, json.dumps(record)))


class OrganMasks:
    """The backbone's liver mask per scan, on disk under ``folder``, keyed by backbone and image content.

    The mask depends only on the frozen backbone and the image, so a new prompt checkpoint can re-score a
    scan without the backbone pass. A scan where no liver was found is kept as such (``None``: its
    uncertainty then covers every window). A missing or unreadable file only costs that pass again.
    """

    def __init__(self, folder: str | Path, backbone_sha256: str):
        self.folder, self.prefix = Path(folder), backbone_sha256[:16]

    def _path(self, content_sha256: str) -> Path:
        return self.folder / f"{self.prefix}-{content_sha256}.npz"

    def get(self, content_sha256: str, shape: tuple[int, ...], default=None):
        """The kept mask of ``shape`` (``[*S]`` bool, or ``None`` for no liver), else ``default``.

        A mask of another shape (kept under other preprocessing) counts as not kept.
        """
        try:
            with np.load(self._path(content_sha256)) as kept:
                if not kept["found"]:
                    return None
                if tuple(int(n) for n in kept["shape"]) != tuple(shape):
                    return default
                return np.unpackbits(kept["bits"], count=int(np.prod(shape))).reshape(shape).astype(bool)
        except (OSError, KeyError, ValueError) as e:
            if not isinstance(e, FileNotFoundError):
                logger.warning("TESLA recomputes an unreadable liver mask %s: %s", self._path(content_sha256), e)
            return default

    def put(self, content_sha256: str, organ: np.ndarray | None) -> None:
        mask = np.zeros(0, bool) if organ is None else np.asarray(organ, bool)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, found=organ is not None, shape=np.array(mask.shape), bits=np.packbits(mask))
        atomic_write_bytes(self._path(content_sha256), buffer.getvalue())


_NOT_KEPT = object()


class ScanScorer:
    """Scores one scan and stores its record at once: the job :func:`run_in_workers` hands each worker.

    Picklable, so each scoring worker gets its own copy of the backbone and of the one prompt model the run
    loaded (every worker scores with the same weights, even if a new checkpoint lands meanwhile).
    """

    def __init__(self, method: TeslaScoring, cache: ScoreCache, model, inferer, version: int | None):
        self.backbone, self.cfg, self.ood = method.backbone, method.cfg, method.ood
        self.load, self.organs, self.cache = method.load, method.organs, cache
        self.model, self.inferer, self.version = model, inferer, version
        self.organ_channel = self.backbone.labels.get(self.cfg.organ)  # the organ that holds the lesions (slpt_organ)

    def start(self, device: str) -> None:
        """A worker's own device (a worker process, never the server's)."""
        self.backbone.network.to(device)
        if self.model is not None:
            self.model.to(device)

    def __call__(self, job: tuple[str, str, dict, bool]) -> list[str]:
        """``(image id, image path, its record, whether the record is new)`` -> what was done: ``embedded``,
        ``scored``, ``unchanged`` or ``failed`` (the first two can come together)."""
        image_id, path, info, new = job
        done = []
        try:
            digest = file_sha256(path)
            need_embedding = info.get("content_sha256") != digest or not info.get("embedding")
            need_score = self.model is not None and (need_embedding or needs_scoring(info, self.version))
            if not (need_embedding or need_score):
                if new or "error" in info:  # taken over from the image info, or readable again after a failure
                    info.pop("error", None)
                    self.cache.put(image_id, info)
                return ["unchanged"]
            image = self.load({"image": path})["image"].as_tensor().float()
            organ = _NOT_KEPT if need_embedding else self.organs.get(digest, image.shape[1:], _NOT_KEPT)
            if organ is _NOT_KEPT:
                # One prompt-free backbone pass gives the embedding and the liver mask the uncertainty needs.
                with captured_output(self.backbone.network) as seen:  # its organ logits: the OOD check
                    embedding, organ = embed_scan(self.backbone.network, image, self.cfg.embed_stage,
                                                  self.organ_channel, precision=self.cfg.precision)
                self.organs.put(digest, organ)
            if need_embedding:
                info = {"content_sha256": digest, "embedding": [round(float(v), 5) for v in embedding],
                        "organ_voxels": 0 if organ is None else int(organ.sum())}
                if self.ood is not None:
                    probs = torch.softmax(seen["output"][0].float(), 0)
                    info["out_of_distribution"] = check_scan(probs, self.backbone.labels, self.ood).to_dict()
                    if info["out_of_distribution"]["flagged"]:
                        logger.warning("TESLA: %s is not selectable, it does not look like an abdominal CT: %s",
                                       image_id, "; ".join(info["out_of_distribution"]["reasons"]))
                done.append("embedded")
            if need_score:
                info["uncertainty"] = prompt_uncertainty(self.model, image, organ, self.inferer,
                                                         self.cfg.uncertainty_margin, self.cfg.uncertainty_top_fraction)
                info["checkpoint_version"] = self.version
                done.append("scored")
            info.pop("error", None)
            info["scored_at"] = int(time.time())
            self.cache.put(image_id, info)  # now, not at the end: a killed run keeps every scan it finished
            return done
        except Exception as e:  # one unreadable scan must not stop the others from being scored
            if _disk_full(e):  # but a full disk stops them all; every record kept so far stays as it was
                raise OSError(errno.ENOSPC, f"no space left on device: TESLA scores could not be written to "
                                            f"{self.cache.path.parent} (scoring {image_id}); scoring stopped, the "
                                            "records already kept are unchanged") from e
            logger.error("TESLA could not score %s: %s", image_id, e)
            self.cache.put(image_id, {**info, "error": str(e)[:500]})  # so the first round does not wait for it
            return ["failed"]


class TeslaScoring(ScoringMethod):
    """Frozen-backbone embedding (once per image) + K-prompt uncertainty in the liver's windows (once per version)."""

    def __init__(self, backbone: Backbone, config: SLPTConfig, ood: LayoutLimits | None = None):
        super().__init__("TESLA scoring: backbone embedding + prompt-based uncertainty in the liver")
        self.backbone, self.cfg = backbone, config
        self.ood = ood  # limits of the out-of-distribution check on the embedding pass, or None: not checked
        self.store = PromptCheckpointStore(config.model_dir)
        self.load = Compose([LoadImaged(keys="image"), *backbone.preprocessing])
        self.organs = OrganMasks(Path(config.model_dir) / "tesla_organs", backbone.identity["sha256"])

    def cache(self, datastore: Datastore) -> ScoreCache:
        return ScoreCache(self.cfg.model_dir, datastore_location(datastore), self.backbone.identity["sha256"])

    def pending(self, datastore: Datastore) -> list[str]:
        """Unlabelled scans whose record is missing or out of date (checked without reading any image)."""
        records, version = self.cache(datastore).summaries(), self.store.current()
        return [i for i in datastore.get_unlabeled_images() if needs_scoring(records.get(i, {}), version)]

    def __call__(self, request, datastore: Datastore):
        """Score the unlabelled scans over ``slpt_scoring_workers`` processes (:func:`run_in_workers`)."""
        start = time.time()
        cache = self.cache(datastore)
        records = cache.records()
        version = self.store.current()
        model = inferer = None
        if version is not None:
            try:
                served = load_checkpoint(self.backbone, self.store, version, self.cfg)
                model, inferer = served.model.eval(), served.inferer
            except CheckpointError as e:
                logger.warning("TESLA scores embeddings only: %s", e)
                version = None
        counts = {"embedded": 0, "scored": 0, "unchanged": 0, "failed": 0}
        jobs = []
        for image_id in sorted(datastore.get_unlabeled_images()):
            info = dict(records.get(image_id, {}))
            try:  # the datastore is the server's: asked here, in this process, never in a worker
                info = info or _take_over_from_image_info(datastore, image_id)
                jobs.append((image_id, datastore.get_image_uri(image_id), info, image_id not in records))
            except Exception as e:
                counts["failed"] += 1
                logger.error("TESLA could not score %s: %s", image_id, e)
                cache.put(image_id, {**info, "error": str(e)[:500]})
        scorer = ScanScorer(self, cache, model, inferer, version)
        workers = self.cfg.scoring_workers
        for done in run_in_workers(scorer, jobs, workers, device=model_device(self.backbone.network)):
            for what in done:
                counts[what] += 1
        result = {**counts, "checkpoint_version": version, "workers": min(workers, max(1, len(jobs))),
                  "seconds": round(time.time() - start, 2)}
        logger.info("TESLA scoring: %s", result)
        return result


def _disk_full(error: Exception) -> bool:
    """A write failed for lack of space: an ``OSError`` (the organ masks) or SQLite's "database or disk is
    full" (the score records; SQLite rolls the write back)."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return isinstance(error, sqlite3.OperationalError) and "full" in str(error)


def _take_over_from_image_info(datastore: Datastore, image_id: str) -> dict:
    """Scores an earlier version kept in the image info: moved to the cache by the caller, cleared there (to
    ``None``: MONAI Label's datastores can update an image's info, not remove a key from it)."""
    kept = datastore.get_image_info(image_id).get(INFO_KEY)
    if kept:
        datastore.update_image_info(image_id, {INFO_KEY: None})
    return kept or {}
