"""Per-case scores of a prediction against its ground truth: the one definition every report uses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import Inferer
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from apps.slpt import labels
from apps.slpt.inference import predict, task_label
from apps.slpt.labels import NUM_CLASSES


def dice_per_case(prediction: torch.Tensor, label: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """``[*S]`` label maps -> ``[num_classes - 1]`` Dice; an empty class in both counts as 1 (LiTS)."""
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    return metric(one_hot(prediction[None, None], num_classes), one_hot(label[None, None], num_classes))[0]


def case_scores(prediction: torch.Tensor, truth: torch.Tensor) -> dict:
    """``[*S]`` predicted and true task label maps -> liver (organ, tumour included) and tumour Dice, plus the
    tumour voxel counts that pool into a global Dice over many cases."""
    predicted, true = labels.tumour(prediction), labels.tumour(truth)
    return {
        "dice_liver": float(dice_per_case(labels.organ(prediction).long(), labels.organ(truth).long(), 2)[0]),
        "dice_tumor": float(dice_per_case(predicted.long(), true.long(), 2)[0]),
        "tumor_predicted": int(predicted.sum()), "tumor_true": int(true.sum()),
        "tumor_intersection": int((predicted & true).sum()),
    }


def evaluate(model: torch.nn.Module, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], inferer: Inferer) -> dict:
    """Mean per-case liver and tumour Dice of ``model``'s served label over ``(image [1, *S], label [1, *S])`` pairs."""
    cases = [case_scores(task_label(predict(model, image, inferer)[0]), label[0].long()) for image, label in pairs]
    liver, tumour = np.mean([c["dice_liver"] for c in cases]), np.mean([c["dice_tumor"] for c in cases])
    return {"dice_liver": float(liver), "dice_tumor": float(tumour), "mean_dice": float(liver + tumour) / 2,
            "cases": len(pairs)}
