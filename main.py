"""SLPT for MONAI Label: selective labelling + prompt tuning for liver-tumour segmentation on CT.

    monailabel start_server --app . --studies data/demo --host 127.0.0.1 \\
        [--conf slpt_backbone /path/to/bundle]
"""

from __future__ import annotations

import logging
import os

from lib.environment import check_environment

check_environment()  # before MONAI Label or torch do anything on a broken install

import monailabel  # noqa: E402
from fastapi import HTTPException  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402

from apps.slpt.backbone import load_backbone  # noqa: E402
from apps.slpt.config import SLPTConfig  # noqa: E402
from lib.infers.backbone import BackboneSegmentation  # noqa: E402
from lib.infers.slpt import SLPTSegmentation  # noqa: E402
from lib.trainers.slpt import SLPTTrainer  # noqa: E402

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    """Registers the SLPT tasks; all method logic lives in ``apps/slpt``."""

    def __init__(self, app_dir, studies, conf):
        self.config = SLPTConfig.from_conf(conf or {}, app_dir)
        self.backbone = load_backbone(self.config.backbone)
        logger.info(
            "SLPT backbone %s (sha256 %s…), %d parameters",
            self.backbone.identity["path"], self.backbone.identity["sha256"][:12], self.backbone.num_parameters(),
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SLPT",
            description="Selective labelling meets prompt tuning: liver tumours on CT from few labels",
            version=monailabel.__version__,
            labels={"liver": 1, "tumor": 2},
        )

    def init_infers(self):
        return {
            "slpt": SLPTSegmentation(self.backbone, self.config),
            "backbone": BackboneSegmentation(self.backbone, overlap=self.config.sw_overlap),
        }

    def init_trainers(self):
        return {"slpt": SLPTTrainer(self.backbone, self.config)}

    def infer(self, request, datastore=None):
        """MONAI Label answers 500 for an unknown model or image; a client error deserves a 404."""
        if request.get("model") not in self._infers:
            raise HTTPException(404, f"no model {request.get('model')!r}; available: {sorted(self._infers)}")
        image = request.get("image")
        store = datastore or self.datastore()
        if isinstance(image, str) and not os.path.exists(image) and image not in store.list_images():
            raise HTTPException(404, f"no image {image!r} in the datastore")
        return super().infer(request, datastore)

    def info(self):
        meta = super().info()
        meta["slpt"] = {
            "config": self.config.to_dict(),
            "backbone": {**self.backbone.identity, "parameters": self.backbone.num_parameters()},
            "datastore": {"labelled": len(self.datastore().get_labeled_images()),
                          "unlabelled": len(self.datastore().get_unlabeled_images())},
        }
        return meta

