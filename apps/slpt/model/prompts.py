"""SLPT v2: K diversified prompt sets in the decoder of a frozen SegResNet, a tuned decoder, a tumour head.

SLPT (Bai et al., MICCAI 2023, arXiv 2308.04911) tunes a few parameters of a frozen, task-agnostic
segmentation network: prompts with feature-aware prompt updaters (FPU), and ``K`` diversified prompt
sets (DVPT) whose disagreement is the prompt-based uncertainty. Only the paper's abstract is public; this
design places those parts where parameter-efficient tuning of a small CNN is known to work (see
``docs/method.md``): tumour-vs-liver is a new class carved out of an organ the backbone already knows, an
output-level shift, so the encoder stays frozen and the decoder is specialised.

One pass over ``x [B, 1, *S]``:

1. **Encoder, frozen and shared.** SegResNet's ``encode`` runs once for all ``K`` sets, without autograd
   when nothing in it is trained (no backward pass through it).
2. **Prompted decoder stages** (``stages``, consecutive decoder stages, by default the two coarse ones).
   The batch is repeated ``K`` times (``[K * B, ...]``) at the first of them; after each, the FPU mixes
   the stage feature with set ``k``'s prompt (plus the prompt carried from the previous stage) and
   returns the modulated feature and the updated prompt. The FPU's feature output starts at zero.
3. After the last prompted stage each set reads its own **tumour evidence** at that (coarse) resolution,
   and the ``K`` features are averaged: the fine stages run **once**, so the sets share the costly
   full-resolution work (the K sets cost about what one coarse decoder stage costs, per extra set).
4. **Decoder deltas** (:mod:`apps.slpt.model.deltas`): every decoder module (up-sampling and stages) runs
   with zero-initialised shifts of its norms and biases and low-rank updates of its kernels.
5. **Task logits from the organ the backbone knows.** The organ evidence is the frozen backbone's own,
   computed by the caller in the backbone's own windows (:func:`apps.slpt.inference.organ_logits`), never
   by this prompted pass: the liver margin ``m`` (the liver's logit minus the strongest other class's) is the
   organ's log-odds, and ``tau_k`` splits the organ into tumour and healthy liver (:func:`task_logits`), so
   liver or tumour is served exactly where the backbone labels liver. ``tau_k`` (tumour-vs-healthy-liver
   log-odds) is a small 1x1x1 head on the decoder's output, the first encoder stage's feature (which still
   carries the faint lesion contrast) and the image, plus set ``k``'s coarse evidence. It starts at :data:`TUMOUR_PRIOR`, so only tumour has to be learnt.

The prompts, updaters and deltas only shape ``tau``: what the backbone knows (its organs, which the
out-of-distribution check and TESLA's liver masks read) is served unchanged, however long the training, and
untrained the label is the backbone's liver with no tumour. The backbone module is never edited (its
state-dict keys and tensors stay as loaded); checkpoints hold only what is trained.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai.inferers import Inferer, SimpleInferer

from apps.slpt.model.deltas import ParameterDeltas
from apps.slpt.model.kernels import pointwise, upsample_trilinear
from apps.slpt.model.precision import autocast, uses_bf16

# Initial tumour-vs-healthy-liver log-odds: a tumour probability of about 2% inside the liver, so an
# untrained head predicts no tumour and the loss starts from the backbone's liver.
TUMOUR_PRIOR = -4.0
# Initial scale of each prompt set's coarse tumour evidence: a read-out of about unit size becomes a tenth of a
# log-odds unit, enough for the K sets to differ (and to get different gradients), far from the prior's 4.
SET_EVIDENCE_GAIN = 0.1


class FeatureAwarePromptUpdater(nn.Module):
    """Mixes a stage feature with its prompt; returns the modulated feature and the updated prompt.

    Args:
        feature_channels: channels ``C`` of the stage output.
        prompt_channels: channels ``Cp`` of the prompt.
        hidden_channels: width of the pointwise mixing layer.
        updates_prompt: return an updated prompt for the next stage (the last prompted stage has none).
    """

    def __init__(self, feature_channels: int, prompt_channels: int, hidden_channels: int,
                 updates_prompt: bool = True):
        super().__init__()
        c = feature_channels + prompt_channels
        self.depthwise = nn.Conv3d(c, c, kernel_size=3, padding=1, groups=c)
        self.pointwise = nn.Conv3d(c, hidden_channels, kernel_size=1)
        self.norm = nn.GroupNorm(1, hidden_channels)
        self.to_feature = nn.Conv3d(hidden_channels, feature_channels, kernel_size=1)
        self.to_prompt = nn.Conv3d(hidden_channels, prompt_channels, kernel_size=1) if updates_prompt else None
        nn.init.zeros_(self.to_feature.weight)  # a fresh updater is an exact no-op on the feature
        nn.init.zeros_(self.to_feature.bias)

    def forward(self, feature: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``feature [N, C, *S]``, ``prompt [N, Cp, *S]`` -> ``([N, C, *S], [N, Cp, *S] or None)``."""
        h = F.gelu(self.norm(self.pointwise(self.depthwise(torch.cat([feature, prompt], dim=1)))))
        return feature + self.to_feature(h), prompt + self.to_prompt(h) if self.to_prompt is not None else None


class TumourHead(nn.Module):
    """Tumour-vs-healthy-liver log-odds per voxel from stacked full-resolution features.

    ``kernel_size`` 1 leaves all spatial context to the decoder's 3x3x3 convs (tuned by their deltas);
    3 lets the head compare a voxel with its neighbours itself, at the cost of one full-resolution conv.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 1):
        super().__init__()
        self.mix = nn.Conv3d(in_channels, hidden_channels, kernel_size=kernel_size, padding=kernel_size // 2)
        self.out = nn.Conv3d(hidden_channels, 1, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, TUMOUR_PRIOR)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        """``features`` ``[B, C_i, *S]`` (stacked on the channel axis) -> ``[B, 1, *S]`` fp32 log-odds."""
        if self.mix.kernel_size != (1, 1, 1):
            return self.out(F.gelu(self.mix(torch.cat(features, dim=1))))
        # One sample at a time, in fp32: a 32³ window's stacked features and hidden layer (about 2 MB each)
        # stay in cache, where the whole batch's would be written to and read back from memory twice.
        with torch.autocast(features[0].device.type, enabled=False):
            samples = (torch.cat([f[i:i + 1].float() for f in features], dim=1) for i in range(len(features[0])))
            return torch.cat([pointwise(self.out, F.gelu(pointwise(self.mix, x))) for x in samples])


class PromptedSegmenter(nn.Module):
    """Frozen SegResNet + ``K`` prompt sets with FPUs in its decoder + decoder deltas + a tumour head.

    Args:
        backbone: a MONAI ``SegResNet`` (frozen here, in one place).
        organ_channel: the backbone's output channel of the organ that holds the lesions (liver).
        stages: consecutive decoder stages (``up_layers.i``) that get the K prompt sets; may be empty
            (then ``K`` must be 1: the head-only and decoder-only baselines).
        num_prompts: ``K``.
        prompt_channels: channels of each prompt tensor.
        prompt_size: spatial size of each learnable prompt (a cube), resized to each feature.
        hidden_ratio: FPU hidden width as a fraction of the stage channels (at least 4).
        decoder_rank: rank of the decoder kernels' updates (0: none).
        decoder_shifts: tune shifts of the decoder's norms and biases.
        encoder_stages: the first this many encoder stages get the same deltas as the decoder (0: the
            encoder is frozen whole and no backward pass runs through it).
        head_channels: hidden width of the tumour head.
        head_kernel: kernel size of the tumour head's first conv (1 or 3).
        precision: ``auto``, ``bf16`` or ``fp32``: whether the pass runs under bf16 autocast
            (:mod:`apps.slpt.model.precision`); task logits are always returned in fp32.
        organ_inferer: how the frozen backbone's organ logits of a scan are computed: in the windows its
            bundle was trained and is served in (``/infer/backbone``'s), since GroupNorm statistics of
            smaller windows cost it the organ. ``None``: the whole input at once (small inputs, tests).
        seed: initialises the prompt sets and low-rank factors differently but reproducibly.
    """

    def __init__(
        self,
        backbone: nn.Module,
        organ_channel: int,
        stages: Sequence[str] = ("up_layers.0",),
        num_prompts: int = 3,
        prompt_channels: int = 4,
        prompt_size: int = 4,
        hidden_ratio: float = 1.0,
        decoder_rank: int = 4,
        decoder_shifts: bool = True,
        encoder_stages: int = 0,
        head_channels: int = 16,
        head_kernel: int = 1,
        precision: str = "fp32",
        organ_inferer: Inferer | None = None,
        seed: int = 0,
    ):
        super().__init__()
        for method in ("encode", "up_samples", "up_layers", "conv_final"):
            if not hasattr(backbone, method):
                raise ValueError(f"SLPT needs a MONAI SegResNet backbone (encode, up_samples, up_layers, "
                                 f"conv_final); {type(backbone).__name__} has no {method!r}")
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        self.backbone = backbone
        freeze(self.backbone)
        # Where the organ evidence comes from when the tumour pathway trains the backbone itself (full
        # fine-tuning, :func:`keep_organ_evidence_frozen`); ``None``: the frozen ``backbone``.
        self.organ_backbone: nn.Module | None = None
        self.organ_inferer = organ_inferer or SimpleInferer()
        self.num_prompts = num_prompts
        self.organ_channel = organ_channel
        uses_bf16(precision, "cpu")  # validates the name
        self.precision = precision
        self.prompted = prompted_stage_indices(stages, len(backbone.up_layers))
        if not self.prompted and num_prompts > 1:
            raise ValueError(f"K={num_prompts} prompt sets need at least one prompted stage")
        self.stages = tuple(stages)
        channels, first_stage = feature_channels(backbone)

        generator = torch.Generator().manual_seed(seed)
        self.prompts = nn.ParameterDict({
            str(i): nn.Parameter(0.02 * torch.randn(num_prompts, prompt_channels, *(prompt_size,) * 3,
                                                    generator=generator))
            for i in self.prompted
        })
        self.updaters = nn.ModuleDict({
            str(i): FeatureAwarePromptUpdater(channels[i], prompt_channels,
                                              max(4, round(channels[i] * hidden_ratio)),
                                              updates_prompt=i != self.prompted[-1])
            for i in self.prompted
        })
        # Each set's own tumour evidence, read where the sets part (after the last prompted stage): 1x1x1
        # weights and a bias, scaled by a per-set gain. The weights are drawn per set (as nn.Linear draws
        # them): from equal weights the sets would get equal gradients and stay one prediction. The gain
        # starts small (SET_EVIDENCE_GAIN): the sets disagree from the first step, as TESLA's uncertainty needs,
        # while an untrained model's evidence stays far below the tumour prior's distance from zero.
        self.set_evidence = self.set_evidence_gain = None
        if self.prompted:
            c = channels[self.prompted[-1]]
            weights = (torch.rand(num_prompts, c, generator=generator) * 2 - 1) / c**0.5
            self.set_evidence = nn.Parameter(torch.cat([weights, torch.zeros(num_prompts, 1)], dim=1))
            self.set_evidence_gain = nn.Parameter(torch.full((num_prompts,), SET_EVIDENCE_GAIN))
        self.deltas = nn.ModuleDict()
        if decoder_rank or decoder_shifts:
            tuned = {**{f"down_layers.{i}": backbone.down_layers[i] for i in range(encoder_stages)},
                     **decoder_modules(backbone)}
            for n, (name, module) in enumerate(tuned.items()):
                self.deltas[_key(name)] = ParameterDeltas(module, decoder_rank, shifts=decoder_shifts, seed=seed + n)
        self.head = TumourHead(channels[-1] + first_stage + backbone.convInit.conv.in_channels, head_channels,
                               head_kernel)

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, liver_margin: torch.Tensor) -> torch.Tensor:
        """``x [B, 1, *S]`` and the frozen backbone's liver margin there (:func:`liver_margin`, ``[B, 1, *S]``)
        -> task logits of every prompt set, ``[B, K * 3, *S]``.

        The ``K`` predictions sit side by side on the channel axis so that MONAI's sliding-window
        inferer (which stitches ``[B, C, *S]``) handles them unchanged; :func:`split_prompts` undoes it.
        """
        return task_logits(liver_margin, self.tumour_log_odds(x))

    def tumour_log_odds(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 1, *S]`` -> each set's tumour-vs-healthy-liver log-odds ``[B, K, *S]``, fp32: all that the
        trained parts decide, and what sliding windows stitch."""
        with autocast(self.precision, x.device):
            return self._tumour_log_odds(x).float()

    @property
    def organ_network(self) -> nn.Module:
        """The frozen, pre-trained network whose organ logits the task composes (:func:`organ_logits`)."""
        return self.organ_backbone if self.organ_backbone is not None else self.backbone

    def _tumour_log_odds(self, x: torch.Tensor) -> torch.Tensor:
        net, k, b = self.backbone, self.num_prompts, x.shape[0]
        skips = self._encode(x)
        h = skips.pop()
        skips = [h, *reversed(skips)]  # as SegResNet.decode reads them: bottleneck first
        carried, evidence = None, None
        for i in range(len(net.up_layers)):
            up = self._run(f"up_samples.{i}", net.up_samples[i], h)
            skip = skips[i + 1]
            h = self._run(f"up_layers.{i}", net.up_layers[i], up + (skip if up.shape[0] == skip.shape[0]
                                                                     else _repeat(skip, k)))
            if i in self.prompted:
                if h.shape[0] == b:
                    h = _repeat(h, k)  # the K sets part here: row k*B + b holds set k
                h, carried = self._prompt(i, h, carried, b)
                if i == self.prompted[-1]:
                    evidence = self._set_evidence(h, b)
                    h = h.view(k, b, *h.shape[1:]).mean(0)  # the finer stages run once, for all sets
        tau = self.head(h, skips[-1], x)
        if evidence is not None:
            tau = tau + upsample_trilinear(evidence.float(), x.shape[2:])
        return tau

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """SegResNet's ``encode``, stage by stage (each through its deltas, if it has any); no autograd up to
        the first stage with something trainable, so no backward pass runs through the frozen ones."""
        net = self.backbone
        stages = [("convInit", net.convInit), *((f"down_layers.{i}", m) for i, m in enumerate(net.down_layers))]
        trainable = [_key(name) in self.deltas or _any_trainable(m) for name, m in stages]
        first = trainable.index(True) if True in trainable else len(stages)
        outputs, h = [], x
        for n, (name, module) in enumerate(stages):
            with torch.set_grad_enabled(torch.is_grad_enabled() and n >= first):
                h = self._run(name, module, h)
                if name == "convInit" and net.dropout_prob is not None:
                    h = net.dropout(h)
            if n:
                outputs.append(h)
        return outputs

    def _run(self, name: str, module: nn.Module, h: torch.Tensor) -> torch.Tensor:
        delta = self.deltas[_key(name)] if _key(name) in self.deltas else None
        return delta(h) if delta is not None else module(h)

    def _prompt(self, i: int, feature: torch.Tensor, carried: torch.Tensor | None, b: int):
        size = feature.shape[2:]
        prompt = F.interpolate(self.prompts[str(i)], size=size, mode="trilinear", align_corners=False)
        prompt = prompt.repeat_interleave(b, dim=0)  # row k*B + b uses prompt set k
        if carried is not None:  # the previous stage's feature-aware prompt
            prompt = prompt + F.interpolate(carried, size=size, mode="trilinear", align_corners=False)
        return self.updaters[str(i)](feature, prompt)

    def _set_evidence(self, h: torch.Tensor, b: int) -> torch.Tensor:
        """``[K * B, C, *s]`` -> ``[B, K, *s]``: set ``k``'s 1x1x1 read-out of its own feature."""
        k = self.num_prompts
        w, bias = self.set_evidence[:, :-1], self.set_evidence[:, -1]
        per_set = torch.einsum("kbc...,kc->bk...", h.view(k, b, *h.shape[1:]), w.to(h.dtype))
        per_set = per_set + bias.to(per_set.dtype).view(1, k, *(1,) * (h.dim() - 2))
        return per_set * self.set_evidence_gain.to(per_set.dtype).view(1, k, *(1,) * (h.dim() - 2))

    # -- checkpoint state ----------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what is trained (no backbone tensor), as CPU copies."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.state_dict().items() if not is_backbone_key(k)}

    def train(self, mode: bool = True):
        """Train mode for the added parts; a frozen backbone always stays in eval mode (its dropout off)."""
        super().train(mode)
        self.backbone.train(mode and _any_trainable(self.backbone))
        if self.organ_backbone is not None:
            self.organ_backbone.eval()
        return self


def liver_margin(organ_logits: torch.Tensor, organ_channel: int) -> torch.Tensor:
    """Backbone organ logits ``[B, out, *S]`` -> ``[B, 1, *S]`` fp32: the organ's logit minus the strongest other
    class's. Positive exactly where the backbone's argmax is the organ."""
    logits = organ_logits.float()
    others = torch.cat([logits[:, :organ_channel], logits[:, organ_channel + 1:]], dim=1)
    return logits[:, organ_channel:organ_channel + 1] - others.amax(dim=1, keepdim=True)


def task_logits(liver_margin: torch.Tensor, tumour_log_odds: torch.Tensor) -> torch.Tensor:
    """The backbone's liver margin ``[B, 1, *S]`` and tumour log-odds ``[B, K, *S]`` -> ``[B, K * 3, *S]``.

    Background ``0``, liver ``m - softplus(tau)`` and tumour ``m - softplus(-tau)``: a softmax over the three
    gives the organ (liver or tumour) probability ``sigmoid(m)`` whatever ``tau``, split into tumour and
    healthy liver by ``sigmoid(tau)``. The organ is the backbone's, so tumour is carved out of it and never
    added beside it (with tumour ``m + tau``, a large ``tau`` beat background where ``m < 0``: on a real chest
    CT, a prompt checkpoint trained on phantoms painted 2,300 tumour voxels along the outside of the liver).
    Like nnU-Net's region-based outputs (kidney and tumour, then tumour), read by
    :func:`apps.slpt.inference.task_label` as organ first, then tumour within it.
    """
    m, tau = liver_margin.float(), tumour_log_odds.float()
    background = torch.zeros_like(m)
    return torch.cat([torch.cat([background, m - F.softplus(t), m - F.softplus(-t)], dim=1)
                      for t in tau.split(1, dim=1)], dim=1)


def keep_organ_evidence_frozen(model: PromptedSegmenter) -> PromptedSegmenter:
    """Before training ``model.backbone`` itself (full fine-tuning): a frozen copy keeps giving the organ
    evidence, so the organ stays the pre-trained one's, as for every other tuning method."""
    model.organ_backbone = copy.deepcopy(model.backbone)
    freeze(model.organ_backbone)
    return model


def prompted_stage_indices(stages: Sequence[str], n_up: int) -> tuple[int, ...]:
    """``("up_layers.0", "up_layers.1")`` -> ``(0, 1)``; anything else raises a ``ValueError`` naming the
    valid stages."""
    valid = [f"up_layers.{i}" for i in range(n_up)]
    unknown = [s for s in stages if s not in valid]
    if unknown:
        raise ValueError(f"unknown prompt stage(s) {unknown}: prompts go in the decoder, one of {valid}")
    indices = tuple(sorted(valid.index(s) for s in stages))
    if indices and indices != tuple(range(indices[0], indices[-1] + 1)):
        raise ValueError(f"prompt stages {list(stages)} must be consecutive decoder stages")
    return indices


def decoder_modules(network: nn.Module) -> dict[str, nn.Module]:
    """The decoder's modules that the tumour evidence passes through, in forward order: up-sampling, stage,
    ... (the final conv gives the organ logits, which are the frozen backbone's own)."""
    modules = {}
    for i in range(len(network.up_layers)):
        modules[f"up_samples.{i}"] = network.up_samples[i]
        modules[f"up_layers.{i}"] = network.up_layers[i]
    return modules


def feature_channels(network: nn.Module, size: int = 16) -> tuple[list[int], int]:
    """``(channels of each decoder stage, channels of the first encoder stage)``, found with one tiny dry
    run (any SegResNet width)."""
    out: list[int] = []
    modules = [*network.up_layers, network.down_layers[0]]
    handles = [m.register_forward_hook(lambda mod, i, o: out.append(o.shape[1])) for m in modules]
    try:
        with torch.no_grad():
            network(torch.zeros(1, network.convInit.conv.in_channels, size, size, size,
                                device=model_device(network)))
    finally:
        for h in handles:
            h.remove()
    return out[1:], out[0]  # the encoder's stage runs first


def _any_trainable(*modules: nn.Module) -> bool:
    return any(p.requires_grad for m in modules for p in m.parameters())


def _repeat(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.repeat(k, *(1,) * (t.dim() - 1))


def _key(name: str) -> str:
    # ParameterDict / ModuleDict keys cannot contain dots.
    return name.replace(".", "__")


def split_prompts(logits: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """``[B, K * C, *S]`` -> ``[K, B, C, *S]``."""
    if logits.shape[1] % num_prompts:
        raise ValueError(f"{logits.shape[1]} channels cannot hold K={num_prompts} predictions")
    return torch.stack(logits.chunk(num_prompts, dim=1))


def is_backbone_key(key: str) -> bool:
    """Whether a state-dict key of a prompted model belongs to the frozen backbone (the wrapper holds it as
    ``backbone``): such tensors are never trained and never written to a prompt checkpoint."""
    return key.startswith(("backbone.", "organ_backbone."))


def freeze(module: nn.Module) -> None:
    """The one place where the backbone is frozen."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` runs: callers move inputs there and bring results back to the CPU."""
    return next(model.parameters()).device


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# Trainable parameters by what they are, from their names (the first matching prefix wins).
GROUPS = (("prompts", ("prompts.",)), ("updaters", ("updaters.", "set_evidence")),
          ("norm_bias", ("deltas.*.shift",)), ("low_rank", ("deltas.*.lora_",)), ("head", ("head.",)),
          ("backbone", ("backbone.",)))


def parameter_group(name: str) -> str:
    """The group of a trainable parameter's name (see :data:`GROUPS`)."""
    for group, prefixes in GROUPS:
        for prefix in prefixes:
            if "*" in prefix:
                first, rest = prefix.split("*")
                if name.startswith(first) and rest in name:
                    return group
            elif name.startswith(prefix):
                return group
    raise ValueError(f"parameter {name!r} belongs to no group of {[g for g, _ in GROUPS]}")


def parameter_report(model: nn.Module) -> dict:
    """Counts in the spirit of PEFT's ``print_trainable_parameters``, per group, plus the ratio to the backbone."""
    trainable, total = count_parameters(model)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    groups = {g: 0 for g, _ in GROUPS}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[parameter_group(name)] += p.numel()
    return {
        "trainable": trainable,
        "all": total,
        "backbone": backbone,
        "groups": {g: n for g, n in groups.items() if n},
        "trainable_percent_of_all": round(100.0 * trainable / total, 4),
        "trainable_percent_of_backbone": round(100.0 * trainable / backbone, 4),
    }


def format_parameter_report(report: dict) -> str:
    groups = ", ".join(f"{g} {n:,}" for g, n in report["groups"].items())
    return (
        f"trainable params: {report['trainable']:,} ({groups}) || all params: {report['all']:,} || "
        f"trainable%: {report['trainable_percent_of_all']:.4f} "
        f"({report['trainable_percent_of_backbone']:.2f}% of the frozen backbone's {report['backbone']:,})"
    )
