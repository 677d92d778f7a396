"""Tuning baselines that share the backbone and the tumour head with SLPT: full fine-tuning and head-only.

Both are :class:`~apps.slpt.model.prompts.PromptedSegmenter` with ``K = 1``, no prompted stage and no
decoder deltas, so :func:`apps.slpt.training.loop.fit` trains them unchanged and every difference to SLPT
is what is trained, never how the output is formed.
"""

from __future__ import annotations

import dataclasses

from apps.slpt.config import SLPTConfig
from apps.slpt.model.backbone import Backbone
from apps.slpt.model.build import build_model
from apps.slpt.model.prompts import PromptedSegmenter, keep_organ_evidence_frozen

# Full fine-tuning's step and schedule, picked on validation phantoms by the explore rule
# (benchmarks.explore --pick --method ft).
FINETUNE_LEARNING_RATE = 3e-3
FINETUNE_EPOCHS = 200


def head_only(backbone: Backbone, cfg: SLPTConfig) -> PromptedSegmenter:
    """The frozen backbone with only SLPT's tumour head trained."""
    return build_model(backbone, dataclasses.replace(cfg, stages=(), num_prompts=1, decoder_rank=0,
                                                     decoder_shifts=False))


def full_finetune(backbone: Backbone, cfg: SLPTConfig) -> PromptedSegmenter:
    """Every backbone weight trained, with SLPT's tumour head."""
    model = keep_organ_evidence_frozen(head_only(backbone, cfg))
    for p in model.backbone.parameters():
        p.requires_grad_(True)
    return model


def finetune_config(cfg: SLPTConfig, learning_rate: float = FINETUNE_LEARNING_RATE,
                    epochs: int | None = None) -> SLPTConfig:
    """``cfg`` as full fine-tuning trains with: one step size for every weight (the whole network is
    trained, so its own rate, not the prompts'), its own schedule length (``cfg``'s when ``None``), and no
    diversity term, since it makes one prediction."""
    return dataclasses.replace(cfg, learning_rate=learning_rate, decoder_learning_rate=learning_rate,
                               diversity_weight=0.0, epochs=epochs or cfg.epochs)
