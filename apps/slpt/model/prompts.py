"""Prompts with feature-aware prompt updaters (FPU) injected into a frozen backbone by forward hooks.

SLPT (Bai et al., MICCAI 2023, arXiv 2308.04911) tunes only a few prompt parameters on a frozen,
task-agnostic segmentation network. Our reconstruction of the paper (only its abstract is public):

* At each configured stage ``s`` (e.g. SegResNet's ``down_layers.i`` / ``up_layers.i``), a learnable
  prompt ``P_s`` (``prompt_channels`` x ``prompt_size``³, resized to the feature's size) meets the
  frozen stage output ``F_s``. The FPU mixes ``[F_s, P_s]`` with a depthwise + pointwise conv and returns
  ``F_s + ΔF_s`` and a feature-aware prompt that is carried, resized, into the next stage.
* ``ΔF_s``'s last conv is zero-initialised (as LoRA's ``B``), so an untrained prompt set reproduces the
  frozen network exactly.
* ``K`` prompt sets (diversified visual prompt tuning) share the FPU weights by default; they differ by
  initialisation and by the augmented view each sees in training. All ``K`` run in one batched pass:
  the batch is laid out ``[K * B, ...]`` and each hook adds prompt set ``k`` to rows ``k*B:(k+1)*B``.
* A new task head (:class:`TaskHead`) reads the features of ``head_stages``: by default the last decoder
  stage and the first encoder stage. The backbone was pre-trained with tumour counted as liver, so its
  decoder learnt to ignore the faint tumour-liver contrast; the first encoder stage still carries it. The
  head may also read the image itself (:data:`IMAGE`).

The backbone's code is never copied or edited: its state-dict keys stay unchanged, and hook handles
are removed by :meth:`PromptedSegmenter.remove_hooks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FeatureAwarePromptUpdater(nn.Module):
    """Mixes a stage feature with its prompt; returns the modulated feature and the updated prompt.

    Args:
        feature_channels: channels ``C`` of the stage output.
        prompt_channels: channels ``Cp`` of the prompt.
        hidden_channels: width of the pointwise mixing layer.
    """

    def __init__(self, feature_channels: int, prompt_channels: int, hidden_channels: int):
        super().__init__()
        c = feature_channels + prompt_channels
        self.depthwise = nn.Conv3d(c, c, kernel_size=3, padding=1, groups=c)
        self.pointwise = nn.Conv3d(c, hidden_channels, kernel_size=1)
        self.norm = nn.GroupNorm(1, hidden_channels)
        self.to_feature = nn.Conv3d(hidden_channels, feature_channels, kernel_size=1)
        self.to_prompt = nn.Conv3d(hidden_channels, prompt_channels, kernel_size=1)
        nn.init.zeros_(self.to_feature.weight)  # a fresh updater is an exact no-op on the feature
        nn.init.zeros_(self.to_feature.bias)

    def forward(self, feature: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feature [N, C, *S]``, ``prompt [N, Cp, *S]`` -> ``([N, C, *S], [N, Cp, *S])``."""
        h = F.gelu(self.norm(self.pointwise(self.depthwise(torch.cat([feature, prompt], dim=1)))))
        return feature + self.to_feature(h), prompt + self.to_prompt(h)


class TaskHead(nn.Module):
    """The new task head: stage features, resized to the first one's grid and stacked, -> class logits.

    3x3x3 convs (not 1x1x1) let the head compare a voxel with its neighbours, which is what tells a
    low-contrast lesion from noise. Each further layer doubles its dilation, widening the context the head
    sees (e.g. whether a dark voxel lies inside the liver or on its partial-volume edge) at the cost of
    one more conv.

    Args:
        in_channels: channels of the stacked stage features.
        num_classes: task classes, background included.
        hidden_channels: width of the 3x3x3 convs.
        layers: number of 3x3x3 convs (dilations 1, 2, 4, ...).
    """

    def __init__(self, in_channels: int, num_classes: int, hidden_channels: int = 16, layers: int = 1):
        super().__init__()
        blocks = []
        for i in range(layers):
            blocks += [
                nn.Conv3d(in_channels if i == 0 else hidden_channels, hidden_channels, kernel_size=3,
                          padding=2**i, dilation=2**i),
                nn.GroupNorm(min(8, hidden_channels), hidden_channels),
                nn.ReLU(),
            ]
        self.layers = nn.Sequential(*blocks, nn.Conv3d(hidden_channels, num_classes, kernel_size=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        resized = [f if f.shape[2:] == size else F.interpolate(f, size=size, mode="trilinear", align_corners=False)
                   for f in features]
        return self.layers(torch.cat(resized, dim=1))


# A head "stage" that is the network's own input: the image itself, where a lesion's contrast to the
# liver is undiluted by layers that were trained to count tumour as liver.
IMAGE = "image"


class StageTap:
    """Forward hooks that keep the outputs of named modules (the input, for :data:`IMAGE`) for one pass."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [
            m.register_forward_pre_hook(lambda mod, args, name=name: self.outputs.__setitem__(name, args[0]))
            if name == IMAGE else
            m.register_forward_hook(lambda mod, i, o, name=name: self.outputs.__setitem__(name, o))
            for name, m in modules.items()
        ]

    def take(self, names: Sequence[str]) -> list[torch.Tensor]:
        """The kept outputs in ``names`` order, forgetting them (no activation outlives its pass)."""
        try:
            return [self.outputs[n] for n in names]
        finally:
            self.clear()

    def clear(self) -> None:
        self.outputs.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.clear()


def resolve_stages(network: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Named submodules of ``network`` (the network itself for :data:`IMAGE`); an unknown name raises a
    ``ValueError`` listing valid ones."""
    modules = {**dict(network.named_modules()), IMAGE: network}
    unknown = [n for n in names if n not in modules or n == ""]
    if unknown:
        # Only list containers of blocks, the plausible stage names, to keep the message readable.
        candidates = [n for n, m in network.named_children() if isinstance(m, (nn.ModuleList, nn.Sequential))]
        stages = [f"{c}.{i}" for c in candidates for i, _ in enumerate(modules[c])]
        raise ValueError(f"unknown backbone stage(s) {unknown}; valid stage names include: {', '.join(stages)} "
                         f"(and {IMAGE!r}, the input, for the head)")
    return {n: modules[n] for n in names}


def stage_channels(network: nn.Module, stages: Sequence[str], in_channels: int = 1, size: int = 32) -> dict[str, int]:
    """Output channels of each stage, found with one tiny dry run (works for any backbone)."""
    tap = StageTap(resolve_stages(network, stages))
    try:
        with torch.no_grad():
            network(torch.zeros(1, in_channels, size, size, size, device=model_device(network)))
        return {name: out.shape[1] for name, out in tap.outputs.items()}
    finally:
        tap.remove()


class PromptedSegmenter(nn.Module):
    """Frozen backbone + ``K`` prompt sets with FPUs at named stages + a task head.

    Args:
        backbone: the frozen network (its parameters are frozen here, in one place).
        stages: names of the modules whose outputs are prompted, in forward order.
        head_stages: modules whose outputs feed the task head; the first one sets its grid.
        num_classes: task classes, background included.
        num_prompts: ``K``, the number of diversified prompt sets.
        prompt_channels: channels of each prompt tensor.
        prompt_size: spatial size of each learnable prompt (a cube), resized to each feature.
        hidden_ratio: FPU hidden width as a fraction of the stage channels (at least 4).
        head_channels: width of the task head's 3x3x3 convs.
        head_layers: number of the task head's 3x3x3 convs.
        share_updaters: one FPU per stage shared by all prompt sets, or one per set.
        seed: initialises the prompt sets differently but reproducibly.
    """

    def __init__(
        self,
        backbone: nn.Module,
        stages: Sequence[str],
        head_stages: Sequence[str],
        num_classes: int,
        num_prompts: int = 3,
        prompt_channels: int = 4,
        prompt_size: int = 4,
        hidden_ratio: float = 1.0,
        head_channels: int = 16,
        head_layers: int = 1,
        share_updaters: bool = True,
        seed: int = 0,
        in_channels: int = 1,
    ):
        super().__init__()
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        if not stages:
            raise ValueError("at least one prompted stage is required")
        if isinstance(head_stages, str) or not head_stages:
            raise ValueError(f"head_stages must be a non-empty sequence of stage names, got {head_stages!r}")
        if IMAGE in stages:
            raise ValueError(f"{IMAGE!r} (the network's input) can feed the head but cannot be prompted")
        self.backbone = backbone
        freeze(self.backbone)
        self.stages = list(stages)
        self.head_stages = list(head_stages)
        self.num_prompts = num_prompts
        channels = stage_channels(backbone, [*self.stages, *self.head_stages], in_channels)

        generator = torch.Generator().manual_seed(seed)
        self.prompts = nn.ParameterDict({
            _key(stage): nn.Parameter(
                0.02 * torch.randn(num_prompts, prompt_channels, *(prompt_size,) * 3, generator=generator)
            )
            for stage in self.stages
        })

        def updater(c: int) -> FeatureAwarePromptUpdater:
            return FeatureAwarePromptUpdater(c, prompt_channels, max(4, int(round(c * hidden_ratio))))

        copies = 1 if share_updaters else num_prompts
        self.updaters = nn.ModuleDict({
            _key(stage): nn.ModuleList(updater(channels[stage]) for _ in range(copies)) for stage in self.stages
        })
        self.head = TaskHead(sum(channels[s] for s in self.head_stages), num_classes, head_channels, head_layers)
        self._handles: list = []
        self._carried: torch.Tensor | None = None
        self._active = True
        modules = resolve_stages(backbone, [*self.stages, *self.head_stages])
        for stage in self.stages:
            self._handles.append(modules[stage].register_forward_hook(self._prompt_hook(stage)))
        # Registered after the prompt hooks, so a prompted head stage is read with its prompt applied.
        self._tap = StageTap({s: modules[s] for s in self.head_stages})

    # -- hooks ---------------------------------------------------------------------------------------
    def _prompt_hook(self, stage: str):
        def hook(module, inputs, feature):
            if not self._active:
                return None
            n = feature.shape[0]
            if n % self.num_prompts:
                raise RuntimeError(f"prompted batch of {n} is not a multiple of K={self.num_prompts}")
            per_set = n // self.num_prompts
            size = feature.shape[2:]
            prompt = F.interpolate(self.prompts[_key(stage)], size=size, mode="trilinear", align_corners=False)
            prompt = prompt.repeat_interleave(per_set, dim=0)  # row k*B + b uses prompt set k
            if self._carried is not None:  # the previous stage's feature-aware prompt
                prompt = prompt + F.interpolate(self._carried, size=size, mode="trilinear", align_corners=False)
            updaters = self.updaters[_key(stage)]
            if len(updaters) == 1:
                feature, self._carried = updaters[0](feature, prompt)
            else:
                outs = [u(f, p) for u, f, p in zip(updaters, feature.split(per_set), prompt.split(per_set))]
                feature, self._carried = (torch.cat(t) for t in zip(*outs))
            return feature

        return hook

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._tap.remove()

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, Cin, *S]`` -> task logits of every prompt set, ``[B, K * num_classes, *S]``.

        The ``K`` predictions sit side by side on the channel axis so that MONAI's sliding-window
        inferer (which stitches ``[B, C, *S]``) handles them unchanged; :func:`split_prompts` undoes it.
        """
        return self.forward_views(x.repeat(self.num_prompts, *(1,) * (x.dim() - 1)))

    def forward_views(self, views: torch.Tensor) -> torch.Tensor:
        """``views [K * B, Cin, *S]`` (row ``k*B + b`` seen by prompt set ``k``) -> ``[B, K * classes, *S]``.

        Training feeds each prompt set its own augmented view of the batch through this entry point.
        """
        self._carried = None
        try:
            self.backbone(views)
            logits = self.head(self._tap.take(self.head_stages))
        finally:
            self._carried = None
        b = views.shape[0] // self.num_prompts
        return torch.cat(logits.split(b), dim=1)

    @torch.no_grad()
    def backbone_output(self, x: torch.Tensor, prompted: bool = True) -> torch.Tensor:
        """The frozen network's own output, with prompt set 0 applied or with prompts switched off."""
        self._active = prompted
        try:
            if prompted:
                x = x.repeat(self.num_prompts, *(1,) * (x.dim() - 1))
            out = self.backbone(x)
        finally:
            self._active, self._carried = True, None
            self._tap.clear()
        return out[: out.shape[0] // self.num_prompts] if prompted else out

    # -- checkpoint state ----------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what is trained: prompts, updaters and head (no backbone tensor), as CPU copies."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.state_dict().items() if not is_backbone_key(k)}

    def train(self, mode: bool = True):
        """Train mode for the prompt parts only; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self


def split_prompts(logits: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """``[B, K * C, *S]`` -> ``[K, B, C, *S]``."""
    if logits.shape[1] % num_prompts:
        raise ValueError(f"{logits.shape[1]} channels cannot hold K={num_prompts} predictions")
    return torch.stack(logits.chunk(num_prompts, dim=1))


def is_backbone_key(key: str) -> bool:
    """Whether a state-dict key of a prompted model belongs to the frozen backbone (the wrapper holds it as
    ``backbone``): such tensors are never trained and never written to a prompt checkpoint."""
    return key.startswith("backbone.")


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


def parameter_report(model: PromptedSegmenter) -> dict:
    """Counts in the spirit of PEFT's ``print_trainable_parameters``, plus the ratio to the backbone."""
    trainable, total = count_parameters(model)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    return {
        "trainable": trainable,
        "all": total,
        "backbone": backbone,
        "trainable_percent_of_all": round(100.0 * trainable / total, 4),
        "trainable_percent_of_backbone": round(100.0 * trainable / backbone, 4),
    }


def format_parameter_report(report: dict) -> str:
    return (
        f"trainable params: {report['trainable']:,} || all params: {report['all']:,} || "
        f"trainable%: {report['trainable_percent_of_all']:.4f} "
        f"({report['trainable_percent_of_backbone']:.2f}% of the frozen backbone's {report['backbone']:,})"
    )


def _key(stage: str) -> str:
    # ParameterDict / ModuleDict keys cannot contain dots.
    return stage.replace(".", "__")
