"""Tuning baselines that share the backbone and task head with SLPT: full fine-tuning and head-only.

They expose the same interface as :class:`~apps.slpt.prompts.PromptedSegmenter` with ``K = 1``
(``num_prompts``, ``forward_views``, ``trainable_state_dict``), so ``tuning.fit`` trains them unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .backbone import Backbone
from .prompts import freeze, resolve_stages, stage_channels


class HeadSegmenter(nn.Module):
    """Backbone + a new task head on ``feature_stage``; the backbone is trained too unless ``freeze_backbone``.

    Args:
        backbone: the network (copied, so the caller's instance is untouched).
        feature_stage: module whose output feeds the head.
        num_classes: task classes, background included.
        freeze_backbone: ``True`` for head-only tuning, ``False`` for full fine-tuning.
    """

    num_prompts = 1

    def __init__(self, backbone: nn.Module, feature_stage: str, num_classes: int, freeze_backbone: bool):
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.frozen = freeze_backbone
        if freeze_backbone:
            freeze(self.backbone)
        else:
            for p in self.backbone.parameters():
                p.requires_grad_(True)
        c = stage_channels(self.backbone, [feature_stage])[feature_stage]
        self.head = nn.Sequential(nn.GroupNorm(min(8, c), c), nn.ReLU(), nn.Conv3d(c, num_classes, kernel_size=1))
        self._feature: torch.Tensor | None = None
        module = resolve_stages(self.backbone, [feature_stage])[feature_stage]
        self._handle = module.register_forward_hook(lambda m, i, o: setattr(self, "_feature", o))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Cin, *S]`` -> ``[B, num_classes, *S]``."""
        try:
            self.backbone(x)
            return self.head(self._feature)
        finally:
            self._feature = None

    forward_views = forward

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if self.frozen is False or not k.startswith("backbone.")}


def full_finetune(backbone: Backbone, feature_stage: str, num_classes: int = 3) -> HeadSegmenter:
    return HeadSegmenter(backbone.network, feature_stage, num_classes, freeze_backbone=False)


def head_only(backbone: Backbone, feature_stage: str, num_classes: int = 3) -> HeadSegmenter:
    return HeadSegmenter(backbone.network, feature_stage, num_classes, freeze_backbone=True)
