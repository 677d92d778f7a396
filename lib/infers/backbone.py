"""MONAI Label infer task ``backbone``: the frozen backbone's own organ segmentation."""

from __future__ import annotations

import torch
from monai.transforms import Activationsd, AsDiscreted, CastToTyped, Compose, Invertd, LoadImaged, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from apps.slpt.inference import organ_logits, sliding_window
from apps.slpt.model.backbone import Backbone
from apps.slpt.ood import LayoutLimits, OutOfDistributiond


class BackboneSegmentation(BasicInferTask):
    """Organ label map from the frozen backbone, written back in the input's own geometry; empty, with the
    reason in ``result.out_of_distribution``, for a scan that is not an abdominal CT (``ood`` limits given)."""

    def __init__(self, backbone: Backbone, overlap: float = 0.25, precision: str = "fp32",
                 ood: LayoutLimits | None = None, sw_batch_voxels: int = 1):
        super().__init__(
            path=None,
            network=backbone.network,
            type=InferType.SEGMENTATION,
            labels=backbone.labels or None,
            dimension=3,
            description="Task-agnostic organ segmentation by the frozen backbone (no prompts)",
            roi_size=backbone.roi_size,
        )
        self.backbone = backbone
        self.overlap = overlap
        self.sw_batch_voxels = sw_batch_voxels
        self.precision = precision
        self.ood = ood

    def pre_transforms(self, data=None):
        return [LoadImaged(keys="image"), *self.backbone.preprocessing]

    def inferer(self, data=None):
        return sliding_window(self.roi_size, self.overlap, self.sw_batch_voxels)

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        """The organ logits at the app's precision (``slpt_precision``), computed as the organ evidence of
        ``/infer/slpt`` is (:func:`~apps.slpt.inference.organ_logits`): both serve the same organs."""
        image = torch.as_tensor(data[self.input_key])[None].to(device)
        data[self.output_label_key] = organ_logits(self._get_network(device, data), image, self.inferer(data),
                                                   self.precision)[0]
        return data

    def post_transforms(self, data=None):
        return [
            Activationsd(keys="pred", softmax=True),
            *([OutOfDistributiond(keys="pred", labels=self.backbone.labels, limits=self.ood)] if self.ood else []),
            AsDiscreted(keys="pred", argmax=True),
            # Undo the backbone's orientation/spacing with the image's own transform record.
            Invertd(keys="pred", transform=Compose(self.pre_transforms(data)), orig_keys="image", nearest_interp=True),
            SqueezeDimd(keys="pred", dim=0),
            CastToTyped(keys="pred", dtype="uint8"),
        ]
