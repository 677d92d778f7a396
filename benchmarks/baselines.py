"""Tuning baselines that share the backbone and task head with SLPT: full fine-tuning and head-only.

They expose the same interface as :class:`~apps.slpt.model.prompts.PromptedSegmenter` with ``K = 1``
(``num_prompts``, ``forward_views``, ``trainable_state_dict``), so ``apps.slpt.training.loop.fit`` trains them unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from apps.slpt.config import SLPTConfig
from apps.slpt.labels import NUM_CLASSES
from apps.slpt.model.backbone import Backbone
from apps.slpt.model.prompts import StageTap, TaskHead, freeze, is_backbone_key, resolve_stages, stage_channels


class HeadSegmenter(nn.Module):
    """Backbone + SLPT's task head on ``head_stages``; the backbone is trained too unless ``freeze_backbone``.

    Args:
        backbone: the network (copied, so the caller's instance is untouched).
        head_stages: modules whose outputs feed the head, as in SLPT.
        num_classes: task classes, background included.
        freeze_backbone: ``True`` for head-only tuning, ``False`` for full fine-tuning.
        head_channels: width of the head's 3x3x3 convs, as in SLPT.
        head_layers: number of the head's 3x3x3 convs, as in SLPT.
    """

    num_prompts = 1

    def __init__(self, backbone: nn.Module, head_stages: Sequence[str], num_classes: int, freeze_backbone: bool,
                 head_channels: int = 16, head_layers: int = 1):
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.frozen = freeze_backbone
        if freeze_backbone:
            freeze(self.backbone)
        else:
            for p in self.backbone.parameters():
                p.requires_grad_(True)
        self.head_stages = list(head_stages)
        channels = stage_channels(self.backbone, self.head_stages)
        self.head = TaskHead(sum(channels.values()), num_classes, head_channels, head_layers)
        self._tap = StageTap(resolve_stages(self.backbone, self.head_stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Cin, *S]`` -> ``[B, num_classes, *S]``."""
        self.backbone(x)
        return self.head(self._tap.take(self.head_stages))

    forward_views = forward

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.state_dict().items()
                if self.frozen is False or not is_backbone_key(k)}


def full_finetune(backbone: Backbone, cfg: SLPTConfig, num_classes: int = NUM_CLASSES) -> HeadSegmenter:
    """The whole backbone trained, with the task head ``cfg`` gives SLPT."""
    return HeadSegmenter(backbone.network, cfg.head_stages, num_classes, freeze_backbone=False,
                         head_channels=cfg.head_channels, head_layers=cfg.head_layers)


def head_only(backbone: Backbone, cfg: SLPTConfig, num_classes: int = NUM_CLASSES) -> HeadSegmenter:
    """The frozen backbone with only the task head ``cfg`` gives SLPT trained."""
    return HeadSegmenter(backbone.network, cfg.head_stages, num_classes, freeze_backbone=True,
                         head_channels=cfg.head_channels, head_layers=cfg.head_layers)


FINETUNE_LEARNING_RATE = 1e-3  # training the whole network needs a smaller step than training prompts


def finetune_config(cfg: SLPTConfig) -> SLPTConfig:
    """``cfg`` as the whole-network baselines (full fine-tuning, from scratch) train with: a smaller step
    than prompts take, and no diversity term, since they make one prediction."""
    return dataclasses.replace(cfg, learning_rate=FINETUNE_LEARNING_RATE, diversity_weight=0.0)
