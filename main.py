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
import schedule  # noqa: E402
import torch  # noqa: E402
from fastapi import HTTPException  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.tasks.activelearning.first import First  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402
from monailabel.utils.async_tasks.task import AsyncTask  # noqa: E402
from monailabel.utils.others.generic import device_map  # noqa: E402

from apps.slpt.config import SLPTConfig  # noqa: E402
from apps.slpt.labels import FOREGROUND  # noqa: E402
from apps.slpt.model.backbone import load_backbone  # noqa: E402
from apps.slpt.ood import LayoutLimits  # noqa: E402
from lib import endpoints, lifecycle, ohif, privacy  # noqa: E402
from lib.activelearning.tesla import Tesla  # noqa: E402
from lib.activelearning.tesla_scoring import TeslaScoring  # noqa: E402
from lib.datastore import ValidatingDatastore  # noqa: E402
from lib.dicomweb_datastore import dicomweb_datastore  # noqa: E402
from lib.infers.backbone import BackboneSegmentation  # noqa: E402
from lib.infers.slpt import SLPTSegmentation  # noqa: E402
from lib.request_params import CheckedRequest, InvalidParameter, check_request, task_specs  # noqa: E402
from lib.trainers.slpt import SLPTTrainer  # noqa: E402

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    """Registers the SLPT tasks; all method logic lives in ``apps/slpt``."""

    def __init__(self, app_dir, studies, conf):
        privacy.install()  # MONAI Label logs DICOMweb image info, which holds the PatientID
        self.config = SLPTConfig.from_conf(conf or {}, app_dir)
        self.backbone = load_backbone(self.config.backbone)
        # Out-of-distribution check (apps/slpt/ood.py): it reads the backbone's liver and its neighbours.
        self.ood = LayoutLimits() if self.config.ood_check and "liver" in self.backbone.labels else None
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
            labels=FOREGROUND,
        )
        # MONAI Label would re-score on every Next Sample; TESLA scores after training and for new images.
        self._auto_update_scoring = False
        self._pending_seen: frozenset = frozenset()
        self._request_specs = task_specs({name: task.config() for name, task in self._infers.items()},
                                         {name: task.config() for name, task in self._trainers.items()},
                                         list(device_map()), torch.cuda.device_count())

    def init_datastore(self):
        """A local studies folder gets upload checks; a DICOMweb PACS gets SLPT's SEG labels (no dcmqi
        download); XNAT/DSA stores stay MONAI Label's own."""
        if self.studies.startswith(("http://", "https://")):
            if settings.MONAI_LABEL_DATASTORE.lower() in ("", "dicom", "dicomweb"):
                return dicomweb_datastore(self.studies, self.labels)
            return super().init_datastore()
        return ValidatingDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self):
        return {
            "slpt": SLPTSegmentation(self.backbone, self.config, ood=self.ood),
            "backbone": BackboneSegmentation(self.backbone, overlap=self.config.sw_overlap,
                                             precision=self.config.precision, ood=self.ood,
                                             sw_batch_voxels=self.config.sw_batch_voxels),
        }

    def init_trainers(self):
        return {"slpt": SLPTTrainer(self.backbone, self.config)}

    def init_strategies(self):
        # MONAI Label's stock strategies beside TESLA, as its radiology app registers them: a team can compare
        # them through the API, and a client that asks for ``random`` gets it. ``tesla`` stays the default.
        return {"tesla": Tesla(self.config, self.backbone.identity["sha256"]), "random": Random(), "first": First()}

    def init_scoring_methods(self):
        return {"tesla": TeslaScoring(self.backbone, self.config, ood=self.ood)}

    def infer(self, request, datastore=None):
        """MONAI Label answers 500 for an unknown model or image; a client error deserves a 404."""
        if request.get("model") not in self._infers:
            raise HTTPException(404, f"no model {request.get('model')!r}; available: {sorted(self._infers)}")
        image = request.get("image")
        store = datastore or self.datastore()
        if isinstance(image, str) and not os.path.exists(image) and image not in store.list_images():
            raise HTTPException(404, f"no image {image!r} in the datastore")
        self.check_request("infer", request["model"], request)
        return super().infer(request, datastore)

    def next_sample(self, request):
        strategy = request.get("strategy") or "tesla"
        if strategy not in self._strategies:
            raise HTTPException(404, f"no strategy {strategy!r}; available: {sorted(self._strategies)}")
        self.check_request("activelearning", strategy, request)
        return super().next_sample({**request, "strategy": strategy})

    def check_request(self, kind: str, name: str, request: dict) -> CheckedRequest:
        """The request, parsed against its task's spec (``lib.request_params``): 422 naming the parameter for a
        bad, unknown or server-only one, as MONAI Label itself passes every value through unchecked."""
        spec = self._request_specs.get(f"{kind}/{name}")
        if spec is None:
            known = sorted(k.split("/", 1)[1] for k in self._request_specs if k.startswith(f"{kind}/"))
            raise HTTPException(404, f"no {kind} task {name!r}; available: {known}")
        try:
            return check_request(request, spec, self.config)
        except InvalidParameter as e:
            raise HTTPException(422, str(e)) from e

    def train(self, request):
        """Runs in MONAI Label's training subprocess; a finished round is re-scored right away."""
        result = super().train(request)
        if request.get("model") == "slpt":
            if self._server_mode:
                self.async_scoring("tesla")
            else:
                # The training subprocess reaches the server over HTTP. MONAI Label's /scoring/tesla refuses
                # (429) while a scoring run is going; /scoring/ queues behind it, so no round goes unscored.
                self._local_request("/scoring/", None, "Scoring")
        return result

    def on_init_complete(self):
        lifecycle.install()  # a stopped server stops its task processes and starts no queued one
        super().on_init_complete()
        self._score_pending()
        schedule.every(1).minutes.do(self._score_pending)  # MONAI Label's time loop runs pending jobs

    def _score_pending(self):
        """Background scoring (never from Next Sample) of unlabelled scans whose TESLA info is out of date.

        That covers new images, a checkpoint whose re-scoring was missed, and a scoring run that was
        killed. A set already handed to scoring is not handed again until it changes, so a scan that
        cannot be read is not retried every minute.
        """
        store = self.datastore()
        pending = frozenset(self._scoring_methods["tesla"].pending(store))
        running = AsyncTask.status("scoring", check_if_running=True)[0] is not None
        if pending and pending != self._pending_seen and not running:
            self._pending_seen = pending
            logger.info("TESLA: %d unlabelled scans need scoring; scoring in the background", len(pending))
            self.async_scoring("tesla")

    def on_save_label(self, image_id, label_id):
        """Retrain when the round is fully labelled (or after ``slpt_train_after_labels`` new labels)."""
        super().on_save_label(image_id, label_id)
        store = self.datastore()
        labelled = set(store.get_labeled_images())
        if image_id not in labelled:
            return  # a draft or another tag: not a final label
        trained_on = self._trainers["slpt"].stats().get("labelled", 0)
        if self._strategies["tesla"].training_due(store, trained_on):
            logger.info("TESLA: %d final labels; training slpt in the background", len(labelled))
            self.async_training("slpt", enqueue=True)

    def info(self):
        meta = super().info()
        # MONAI Label's clients read the top-level labels as a list of names (OHIF's panel appends to it and
        # stops with "Something went wrong" on a dict); the values stay in models.slpt.labels.
        meta["labels"] = sorted(self.labels, key=self.labels.get)
        store = self.datastore()
        meta["slpt"] = {
            "config": self.config.to_dict(),
            "backbone": {**self.backbone.identity, "parameters": self.backbone.num_parameters()},
            "datastore": {"labelled": len(store.get_labeled_images()),
                          "unlabelled": len(store.get_unlabeled_images()),
                          # versions kept by the local studies folder (lib/label_versions.py) or the PACS
                          "scans_with_several_label_versions":
                              getattr(store, "scans_with_several_label_versions", lambda: None)(),
                          # DICOMweb only: whether the PACS answers now (the counts are its last lists if not)
                          "pacs": getattr(store, "pacs_status", lambda: None)(),
                          # local studies only: saves cut off by a crash, undone at this start (one sentence each)
                          "interrupted_saves_undone": getattr(store, "interrupted_saves", None)},
            "tesla": self._strategies["tesla"].view(store) if "tesla" in self._strategies else None,
        }
        return meta


# MONAI Label's endpoints answer these requests before any app method runs; see lib/endpoints.py.
endpoints.install()
ohif.install()  # /ohif/ gains SLPT's Save Label, brush and TESLA reason (lib/ohif_addon/slpt-ohif.js)
