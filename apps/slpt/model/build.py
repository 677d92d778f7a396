"""Prompted models from the app's config, and from a prompt checkpoint (which carries its own architecture)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from monai.inferers import SlidingWindowInferer

from apps.slpt.config import SLPTConfig
from apps.slpt.inference import checkpoint_inferer, organ_inferer
from apps.slpt.model.backbone import Backbone
from apps.slpt.model.checkpoints import PromptCheckpointStore, load_into
from apps.slpt.model.prompts import PromptedSegmenter


def organ_channel(backbone: Backbone, organ: str) -> int:
    """The backbone's output channel of ``organ``, from its bundle's labels; a clear error when absent."""
    if organ not in backbone.labels:
        raise ValueError(f"backbone {backbone.identity.get('name')!r} declares no label {organ!r} in "
                         f"configs/metadata.json (labels: {sorted(backbone.labels)}); set slpt_organ")
    return int(backbone.labels[organ])


def build_model(backbone: Backbone, cfg: SLPTConfig) -> PromptedSegmenter:
    """A prompted copy of the backbone (the shared backbone object itself stays untouched)."""
    return PromptedSegmenter(
        copy.deepcopy(backbone.network),
        organ_channel=organ_channel(backbone, cfg.organ),
        stages=cfg.stages,
        num_prompts=cfg.num_prompts,
        prompt_channels=cfg.prompt_channels,
        prompt_size=cfg.prompt_size,
        hidden_ratio=cfg.hidden_ratio,
        decoder_rank=cfg.decoder_rank,
        decoder_shifts=cfg.decoder_shifts,
        encoder_stages=cfg.encoder_stages,
        head_channels=cfg.head_channels,
        head_kernel=cfg.head_kernel,
        precision=cfg.precision,
        organ_inferer=organ_inferer(backbone.roi_size, cfg),
        seed=cfg.seed,
    )


# The fields that define a prompt checkpoint's architecture; a checkpoint is rebuilt with its own values.
# The K prompt sets and their updaters, then what a full fine-tuning baseline shares (decoder and head).
PROMPT_SET_FIELDS = ("stages", "num_prompts", "prompt_channels", "prompt_size", "hidden_ratio")
HEAD_FIELDS = ("decoder_rank", "decoder_shifts", "encoder_stages", "head_channels", "head_kernel", "organ")
PROMPT_FIELDS = PROMPT_SET_FIELDS + HEAD_FIELDS + ("seed",)


def checkpoint_config(payload: dict, cfg: SLPTConfig) -> SLPTConfig:
    """``cfg`` with the prompt architecture a checkpoint was trained with (the app config may have moved on)."""
    saved = payload["metadata"].get("config", {})
    return dataclasses.replace(cfg, **{k: tuple(saved[k]) if k == "stages" else saved[k]
                                       for k in PROMPT_FIELDS if k in saved})


def model_from_checkpoint(backbone: Backbone, payload: dict, cfg: SLPTConfig) -> PromptedSegmenter:
    """Rebuild the prompted model a checkpoint was trained as, and load its tensors strictly.

    Raises:
        CheckpointError: the checkpoint belongs to another backbone or does not fit its own architecture.
    """
    model = build_model(backbone, checkpoint_config(payload, cfg))
    load_into(model, payload, backbone.identity)
    return model


@dataclass
class Checkpointed:
    """A stored prompt checkpoint, rebuilt: what inference, scoring and a warm start all need from it."""

    version: int
    model: PromptedSegmenter
    config: SLPTConfig  # the app's config with the checkpoint's own prompt architecture
    inferer: SlidingWindowInferer  # windows of the patch size it was trained with


def load_checkpoint(backbone: Backbone, store: PromptCheckpointStore, version: int, cfg: SLPTConfig) -> Checkpointed:
    """Read checkpoint ``version`` from ``store`` and rebuild it on ``backbone``, strictly.

    Raises:
        CheckpointError: the file is unreadable, belongs to another backbone, holds another design or does
            not fit its architecture.
        ValueError, TypeError, KeyError: its metadata names an unknown stage or holds a mistyped setting.
    """
    payload = store.read(version)
    return Checkpointed(version, model_from_checkpoint(backbone, payload, cfg), checkpoint_config(payload, cfg),
                        checkpoint_inferer(payload, cfg))
