"""Model variants that only the label-efficiency benchmark needs: ablations and extra baselines.

They wrap or subclass the method's own classes, so the method code stays as it is:

* :func:`without_fpu` — SLPT without the feature-aware prompt updater (FPU): each stage's
  prompt is mapped to a residual on the feature by a zero-initialised ``1x1x1`` conv that never sees the
  feature (VPT-deep style: nothing is carried between stages).
* :func:`from_scratch` — the same network architecture as the backbone, randomly initialised and fully
  trained with SLPT's task head (no pre-training at all).
* :class:`EnsembleMean` — a ``K``-prompt model seen as one model whose logits are the log of the ensemble
  mean probabilities, so MONAI Label-style scorers (MC dropout) that softmax a model's output apply to it.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from apps.slpt.config import SLPTConfig
from apps.slpt.model.backbone import Backbone
from apps.slpt.model.build import build_model
from apps.slpt.model.prompts import PromptedSegmenter, liver_margin, split_prompts
from benchmarks.baselines import full_finetune


class PlainPromptUpdater(nn.Module):
    """A prompt's residual on the feature that does not depend on the feature (no FPU).

    ``F' = F + conv1x1(P)``; the conv is zero-initialised, so an untrained prompt set is a no-op, like the FPU.
    The returned carried prompt is zero: a plain prompt is not updated by the stage and not passed on.

    Args:
        feature_channels: channels ``C`` of the stage output.
        prompt_channels: channels ``Cp`` of the prompt.
    """

    def __init__(self, feature_channels: int, prompt_channels: int):
        super().__init__()
        self.to_feature = nn.Conv3d(prompt_channels, feature_channels, kernel_size=1)
        nn.init.zeros_(self.to_feature.weight)
        nn.init.zeros_(self.to_feature.bias)

    def forward(self, feature: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feature [N, C, *S]``, ``prompt [N, Cp, *S]`` -> ``([N, C, *S], zeros [N, Cp, *S])``."""
        return feature + self.to_feature(prompt.to(feature.dtype)), torch.zeros_like(prompt)


def without_fpu(model: PromptedSegmenter) -> PromptedSegmenter:
    """``model`` with every FPU replaced by a :class:`PlainPromptUpdater` (same prompts, decoder deltas, head)."""
    for key, updater in model.updaters.items():
        model.updaters[key] = PlainPromptUpdater(updater.to_feature.out_channels, model.prompts[key].shape[1])
    return model


def build_plain_model(backbone: Backbone, cfg: SLPTConfig) -> PromptedSegmenter:
    """Like :func:`apps.slpt.model.build.build_model`, without the feature-aware prompt updaters."""
    return without_fpu(build_model(backbone, cfg))


def reinitialise(network: nn.Module, seed: int) -> nn.Module:
    """A copy of ``network`` with every layer's parameters freshly initialised (seeded), as before training."""
    fresh = copy.deepcopy(network)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in fresh.modules():
            if module is not fresh and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    finally:
        torch.random.set_rng_state(state)
    return fresh


def from_scratch(backbone: Backbone, cfg: SLPTConfig) -> PromptedSegmenter:
    """The backbone's architecture without its pre-trained weights (re-initialised with ``cfg.seed``), fully
    trainable, with SLPT's tumour head."""
    fresh = dataclasses.replace(backbone, network=reinitialise(backbone.network, cfg.seed))
    return full_finetune(fresh, cfg)


class EnsembleMean(nn.Module):
    """``[B, K * C, *S]`` K-prompt logits -> ``[B, C, *S]`` log of the mean of the K softmaxes.

    A softmax of this output is the ensemble's mean probability; dropout inside ``model`` stays reachable
    through ``modules()``, so :func:`apps.slpt.active.uncertainty.dropout_enabled` switches it on.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_prompts = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The organ evidence of this window, from the backbone whose dropout the MC samples switch on.
        margin = liver_margin(self.model.organ_network(x), self.model.organ_channel)
        probs = split_prompts(self.model(x, margin), self.model.num_prompts).softmax(2).mean(0)
        return probs.clamp_min(1e-8).log()
