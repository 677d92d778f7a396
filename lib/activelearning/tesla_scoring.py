"""MONAI Label scoring method ``tesla``: embeddings and prompt-based uncertainty per unlabelled scan.

Results go into each image's datastore info under ``slpt_tesla``; the strategy only reads them. An
embedding is keyed by the image file's SHA-256; an uncertainty by the prompt-checkpoint version (a new
checkpoint re-scores). The liver mask of the backbone pass is kept on disk (:class:`OrganMasks`, a few KB per
scan, not in the datastore info), so re-scoring after a new checkpoint runs only the K-prompt pass. Each scan is
written as soon as it is scored, so a killed scoring run keeps everything it finished.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
from monai.transforms import Compose, LoadImaged
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from apps.slpt.active.scoring import embed_scan, prompt_uncertainty
from apps.slpt.config import SLPTConfig
from apps.slpt.model.backbone import Backbone, file_sha256
from apps.slpt.model.build import load_checkpoint
from apps.slpt.model.checkpoints import CheckpointError, PromptCheckpointStore, atomic_write_bytes

logger = logging.getLogger(__name__)
INFO_KEY = "slpt_tesla"


def needs_scoring(info: dict, version: int | None) -> bool:
    """Whether a scan's TESLA info lacks an embedding, or an uncertainty from checkpoint ``version``."""
    return not info.get("embedding") or (version is not None and info.get("checkpoint_version") != version)


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


class TeslaScoring(ScoringMethod):
    """Frozen-backbone embedding (once per image) + K-prompt uncertainty in the liver's windows (once per version)."""

    def __init__(self, backbone: Backbone, config: SLPTConfig):
        super().__init__("TESLA scoring: backbone embedding + prompt-based uncertainty in the liver")
        self.backbone, self.cfg = backbone, config
        self.store = PromptCheckpointStore(config.model_dir)
        self.load = Compose([LoadImaged(keys="image"), *backbone.preprocessing])
        self.organs = OrganMasks(Path(config.model_dir) / "tesla_organs", backbone.identity["sha256"])

    def __call__(self, request, datastore: Datastore):
        start = time.time()
        version = self.store.current()
        model = inferer = None
        if version is not None:
            try:
                served = load_checkpoint(self.backbone, self.store, version, self.cfg)
                model, inferer = served.model.eval(), served.inferer
            except CheckpointError as e:
                logger.warning("TESLA scores embeddings only: %s", e)
                version = None
        organ_channel = self.backbone.labels.get("liver")
        counts = {"embedded": 0, "scored": 0, "unchanged": 0, "failed": 0}
        for image_id in sorted(datastore.get_unlabeled_images()):
            info = dict(datastore.get_image_info(image_id).get(INFO_KEY, {}))
            path = datastore.get_image_uri(image_id)
            try:
                digest = file_sha256(path)
                need_embedding = info.get("content_sha256") != digest or not info.get("embedding")
                need_score = model is not None and (need_embedding or needs_scoring(info, version))
                if not (need_embedding or need_score):
                    counts["unchanged"] += 1
                    continue
                image = self.load({"image": path})["image"].as_tensor().float()
                organ = _NOT_KEPT if need_embedding else self.organs.get(digest, image.shape[1:], _NOT_KEPT)
                if organ is _NOT_KEPT:
                    # One prompt-free backbone pass gives the embedding and the liver mask the uncertainty needs.
                    embedding, organ = embed_scan(self.backbone.network, image, self.cfg.embed_stage, organ_channel)
                    self.organs.put(digest, organ)
                if need_embedding:
                    info = {"content_sha256": digest, "embedding": [round(float(v), 5) for v in embedding],
                            "organ_voxels": 0 if organ is None else int(organ.sum())}
                    counts["embedded"] += 1
                if need_score:
                    info["uncertainty"] = prompt_uncertainty(model, image, organ, inferer, self.cfg.uncertainty_margin,
                                                             self.cfg.uncertainty_top_fraction)
                    info["checkpoint_version"] = version
                    counts["scored"] += 1
                info["scored_at"] = int(time.time())
                datastore.update_image_info(image_id, {INFO_KEY: info})
            except Exception as e:  # one unreadable scan must not stop the others from being scored
                counts["failed"] += 1
                logger.error("TESLA could not score %s: %s", image_id, e)
        result = {**counts, "checkpoint_version": version, "seconds": round(time.time() - start, 2)}
        logger.info("TESLA scoring: %s", result)
        return result
