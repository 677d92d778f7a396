"""From ensemble probabilities to the task label map that the app serves and is scored on."""

from __future__ import annotations

import torch
from monai.transforms import KeepLargestConnectedComponent

# The liver is one organ. Liver or tumour voxels outside its largest connected piece (liver and tumour
# together) are partial-volume edges of other organs or of the body wall, never a lesion of this liver.
_ONE_LIVER = KeepLargestConnectedComponent(applied_labels=[1, 2], independent=False)


def task_label(probs: torch.Tensor) -> torch.Tensor:
    """``[C, *S]`` class probabilities -> ``[*S]`` long label map: the argmax, then only the largest
    connected region of liver and tumour (background elsewhere)."""
    label = probs.argmax(0, keepdim=True)
    return torch.as_tensor(_ONE_LIVER(label))[0].long()
