"""MONAI Label infer task ``slpt``: prompt-tuned liver/tumour segmentation and its uncertainty map."""

from __future__ import annotations

import logging

import torch
from fastapi import HTTPException
from monai.transforms import Activationsd, CastToTyped, Compose, DeleteItemsd, Invertd, LoadImaged, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from apps.slpt.config import SLPTConfig
from apps.slpt.inference import PromptEnsembled, stitched_logits
from apps.slpt.labels import CLASSES, FOREGROUND
from apps.slpt.model.backbone import Backbone
from apps.slpt.model.build import Checkpointed, load_checkpoint
from apps.slpt.model.checkpoints import CheckpointError, PromptCheckpointStore
from apps.slpt.ood import LayoutLimits, OutOfDistributiond

logger = logging.getLogger(__name__)

ORGAN_KEY = "organ"  # the frozen backbone's organ logits of the scan, as /infer/backbone computes them


class SLPTSegmentation(BasicInferTask):
    """Liver (1) and tumour (2) from the frozen backbone + the current prompt checkpoint.

    Request params: ``slpt_output`` = ``"label"`` (default) or ``"uncertainty"`` (the voxel-wise
    prompt-disagreement map, float, in the image's geometry, for a viewer overlay). With ``ood`` limits, a
    scan that is not an abdominal CT gets an empty label (and map) and the reason in
    ``result.out_of_distribution``, read from the frozen backbone's organ logits (``/infer/backbone``'s own).
    """

    def __init__(self, backbone: Backbone, config: SLPTConfig, ood: LayoutLimits | None = None):
        super().__init__(
            path=None,
            network=None,
            type=InferType.SEGMENTATION,
            labels=FOREGROUND,
            dimension=3,
            description="SLPT: frozen backbone + prompts, liver and tumour (K-prompt ensemble)",
            config={"slpt_output": list(PromptEnsembled.OUTPUTS)},
        )
        self.backbone, self.cfg, self.ood = backbone, config, ood
        self.store = PromptCheckpointStore(config.model_dir)
        self._served: dict[str, tuple[Checkpointed, tuple]] = {}  # per device: the checkpoint and its file stamp

    def is_valid(self) -> bool:
        return True  # listed before training too; a request then gets a clear 409, not a missing model

    def info(self):
        info = super().info()
        version = self.store.current()
        info["prompt_checkpoint"] = self.store.summary(version) if version else None
        return info

    def pre_transforms(self, data=None):
        return [LoadImaged(keys="image"), *self.backbone.preprocessing]

    def __call__(self, request, callbacks=None):
        output = request.get("slpt_output", "label")
        if isinstance(output, list):  # MONAI Label sends the config's choice list when unset
            output = output[0]
        if output not in PromptEnsembled.OUTPUTS:
            raise HTTPException(422, f"slpt_output must be one of {PromptEnsembled.OUTPUTS}, got {output!r}")
        return super().__call__({**request, "slpt_output": output}, callbacks)

    def post_transforms(self, data=None):
        output = data.get("slpt_output", "label")
        # The organ layout is checked after the inferer, as /infer/backbone checks it, on the same organ logits.
        ood = [Activationsd(keys=ORGAN_KEY, softmax=True),
               OutOfDistributiond(keys="pred", labels=self.backbone.labels, limits=self.ood, probs_key=ORGAN_KEY,
                                  classes=len(CLASSES))] if self.ood else []
        return [
            *ood,
            DeleteItemsd(keys=ORGAN_KEY),
            PromptEnsembled(keys="pred", num_prompts=data["slpt_num_prompts"], output=output,
                            margin=self.cfg.uncertainty_margin, top_fraction=self.cfg.uncertainty_top_fraction),
            Invertd(keys="pred", transform=Compose(self.pre_transforms(data)), orig_keys="image",
                    nearest_interp=output == "label"),
            SqueezeDimd(keys="pred", dim=0),
            CastToTyped(keys="pred", dtype="uint8" if output == "label" else "float32"),
        ]

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        """The served checkpoint's K-prompt logits, in windows of the patch size it was trained with
        (:func:`apps.slpt.inference.task_inferer` says why)."""
        served = self._checkpoint(device)
        image = torch.as_tensor(data[self.input_key])
        logits, organ = (t[0] for t in stitched_logits(served.model, image[None], served.inferer))
        data[self.output_label_key], data[ORGAN_KEY] = logits, organ
        data["slpt_num_prompts"] = served.model.num_prompts
        data.setdefault("result", {})["prompt_checkpoint_version"] = served.version
        data["result"]["roi_size"] = list(served.inferer.roi_size)
        return data

    def _checkpoint(self, device: str) -> Checkpointed:
        """The current checkpoint on ``device``, rebuilt only when another version or file is served."""
        version = self.store.current()
        if version is None:
            raise HTTPException(409, "no SLPT prompt checkpoint yet: label a few scans (PUT /datastore/label) "
                                     "and train the prompts (POST /train/slpt) first")
        path = self.store.path(version)
        stamp = (version, path.stat().st_mtime)
        cached = self._served.get(device)
        if cached and cached[1] == stamp:
            return cached[0]
        try:
            served = load_checkpoint(self.backbone, self.store, version, self.cfg)
        except (CheckpointError, ValueError, TypeError, KeyError) as e:
            # All about this file: besides a bad format, its metadata can name an unknown stage or hold a
            # mistyped setting, which fail while the model is rebuilt.
            where = "" if str(path) in str(e) else f" ({path})"
            raise HTTPException(409, f"current prompt checkpoint v{version}{where} cannot be served: {e}; "
                                     "roll back with `python -m apps.slpt.model.checkpoints --model-dir "
                                     f"{self.store.directory} rollback` or train again") from e
        served.model.to(device).eval()
        self._served[device] = (served, stamp)
        logger.info("SLPT infer serves prompt checkpoint v%d", version)
        return served

