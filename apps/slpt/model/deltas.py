"""Trainable deltas on a frozen module's own parameters: low-rank for kernels, shifts for biases and norms.

The frozen module is never edited. Its forward runs through :func:`torch.func.functional_call` with
``parameter + delta`` in place of each parameter, so:

* the backbone's tensors (and state-dict keys) stay bit-identical, and a checkpoint holds only deltas;
* a low-rank update costs no extra convolution: ``B @ A`` is folded into the kernel before the conv runs
  (LoRA's merge, done on every call; it is a few thousand multiply-adds);
* every delta starts at zero (LoRA's ``B = 0``; zero shifts), so an untrained module is the frozen one;
* the module runs as a copy whose trilinear upsampling takes its faster separable form
  (:mod:`apps.slpt.model.kernels`); a pass without autograd runs a copy with the deltas folded into its
  parameters, made once per state of the deltas (LoRA's merge for inference), instead of re-binding
  every parameter on every call.

Two groups, reported apart by :func:`apps.slpt.model.prompts.parameter_groups`:

* ``norm_bias``: additive shifts of every 1-D parameter (GroupNorm scale and shift, conv biases), in the
  spirit of BitFit and SSF, the strongest cheap levers for CNNs;
* ``low_rank``: ``W + (alpha / r) B A`` for every conv kernel, with ``A`` spanning the kernel's inputs
  and taps (ConvLoRA).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import functional_call

from apps.slpt.model.kernels import with_separable_upsampling

LOW_RANK_ALPHA = 1.0


class ParameterDeltas(nn.Module):
    """Zero-initialised deltas for the parameters of ``module`` (held by reference, never registered here).

    Args:
        module: the frozen module whose forward is run with shifted parameters.
        rank: rank of the kernel updates (0: none).
        shifts: shift the 1-D parameters (norm scales and shifts, biases).
        seed: initialises ``A`` reproducibly.
    """

    def __init__(self, module: nn.Module, rank: int, shifts: bool = True, seed: int = 0):
        super().__init__()
        self._module = [module]  # a list, so the frozen module is not registered as a child (no duplicate keys)
        self._copies: dict = {}  # kind -> (stamp, copy of the module); a dict, so likewise unregistered
        generator = torch.Generator().manual_seed(seed)
        self.shift = nn.ParameterDict()
        self.lora_a = nn.ParameterDict()
        self.lora_b = nn.ParameterDict()
        self.scale: dict[str, float] = {}
        for name, p in module.named_parameters():
            key = name.replace(".", "__")
            if p.dim() == 1 and shifts:
                self.shift[key] = nn.Parameter(torch.zeros_like(p))
            elif p.dim() >= 3 and rank > 0:  # a conv kernel [out, in, *k]
                fan_in = p[0].numel()
                r = min(rank, p.shape[0], fan_in)
                # A as LoRA draws it (Kaiming-uniform bound), B zero: the product starts at zero.
                bound = 1.0 / math.sqrt(fan_in)
                a = (torch.rand(r, fan_in, generator=generator) * 2 - 1) * bound
                self.lora_a[key] = nn.Parameter(a.to(p.dtype))
                self.lora_b[key] = nn.Parameter(torch.zeros(p.shape[0], r, dtype=p.dtype))
                self.scale[key] = LOW_RANK_ALPHA / r

    @property
    def module(self) -> nn.Module:
        return self._module[0]

    def shifted_parameters(self) -> dict[str, torch.Tensor]:
        """``{name: parameter + delta}`` for every parameter that has a delta."""
        out = {}
        for name, p in self.module.named_parameters():
            key = name.replace(".", "__")
            if key in self.shift:
                out[name] = p + self.shift[key]
            elif key in self.lora_a:
                update = (self.lora_b[key] @ self.lora_a[key]).view_as(p)
                out[name] = p + self.scale[key] * update
        return out

    def forward(self, *args):
        if torch.is_grad_enabled():  # autograd reaches the deltas through the re-bound parameters
            return functional_call(self.working_copy(), self.shifted_parameters(), args)
        return self.merged()(*args)

    def working_copy(self) -> nn.Module:
        """The frozen module as it runs here: a copy of it whose trilinear upsampling is separable
        (:func:`~apps.slpt.model.kernels.with_separable_upsampling`, same values, faster)."""
        return self._copy("working", self.module.parameters(),
                          lambda: with_separable_upsampling(copy.deepcopy(self.module)))

    def merged(self) -> nn.Module:
        """The working copy with the deltas folded into its parameters."""
        def merge():
            merged = copy.deepcopy(self.working_copy())
            with torch.no_grad():
                for name, value in self.shifted_parameters().items():
                    merged.get_parameter(name).copy_(value)
            return merged

        return self._copy("merged", (*self.parameters(), *self.module.parameters()), merge)

    def _copy(self, kind: str, tensors, make) -> nn.Module:
        """A copy of the module made by ``make``, made again whenever one of ``tensors`` has changed (an
        optimiser step, ``load_state_dict``, a move to another device) or a submodule's train/eval mode has."""
        stamp = (tuple((t.data_ptr(), t._version) for t in tensors), tuple(m.training for m in self.module.modules()))
        kept = self._copies.get(kind)
        if kept is None or kept[0] != stamp:
            kept = self._copies[kind] = (stamp, make())
        return kept[1]
