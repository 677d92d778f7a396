"""Data-parallel prompt training over ``torch.distributed``: what :func:`apps.slpt.training.loop.fit` adds when
a default process group is initialised (MONAI Label's multi-GPU training spawns one process per GPU).

Why not ``DistributedDataParallel``: it wraps the whole module, so it would broadcast every parameter and
buffer of the frozen backbone at start-up (and buffers before every forward), and it hides the
:class:`~apps.slpt.model.prompts.PromptedSegmenter` attributes that training and checkpoints read
(``num_prompts``, ``trainable_state_dict``). The trained parameters are scattered through the backbone
(norm shifts, low-rank deltas), so there is no submodule to wrap on its own. Instead:

* every rank draws the same global batch from the same seeded stream and runs only its shard of it
  (:func:`shard`); the patches are cut on each rank, which costs little beside a forward pass;
* :class:`GlobalBatch` places this rank's logits among the other ranks' (gathered without grad), so the
  loss is the global batch's: the DVPT loss is not a mean over patches (Dice summed over the batch, the
  diversity averaged over the batch's organ voxels), so averaging per-shard gradients, as DDP does, would
  train a different objective for each number of GPUs;
* :func:`sum_gradients_before_step` adds up, in one all-reduce per step, the gradients of the optimiser's
  parameters, which are the trainable ones only (``prompt_optimizer``): each rank's backward reaches only
  its own shard, so their sum is the single-process gradient;
* validation scans are sharded too, and :func:`reduce_metrics` pools the per-case means.

So ``N`` processes train what one process would with the same seed and global batch, up to the order of
floating-point sums. Nothing here runs without a process group: :func:`world` is ``(0, 1)`` then.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch_size: int, rank: int, world_size: int) -> tuple[slice, int]:
    """This rank's contiguous share of a global batch, and the share every rank runs (the largest).

    Ranks whose share is shorter (``batch_size`` not a multiple of ``world_size``) pad theirs to the same
    length, because a gather needs equal parts; the padding lands after the global batch's last patch, where
    :class:`GlobalBatch` cuts it off.
    """
    per_rank = -(-batch_size // world_size)
    start = min(rank * per_rank, batch_size)
    return slice(start, min(start + per_rank, batch_size)), per_rank


def padded(x: torch.Tensor, part: slice, per_rank: int) -> torch.Tensor:
    """``x [B, *]`` -> ``x[part]``, padded to ``per_rank`` items with copies of ``x[0]`` (cut off later)."""
    own = x[part]
    if len(own) == per_rank:
        return own
    return torch.cat([own, x[:1].expand(per_rank - len(own), *x.shape[1:])])


class GlobalBatch(nn.Module):
    """``model`` run on this rank's shard, answering with the logits of the whole global batch.

    The other ranks' logits are gathered without grad and this rank's own stay live, so a loss on the output
    is the global batch's, and its backward reaches this rank's parameters through its own patches only.

    Args:
        model: the prompted model; ``num_prompts`` is passed through for the DVPT loss.
        batch_size: the global batch's size ``B``; the gathered ``[world * per_rank, ...]`` is cut to it.
    """

    def __init__(self, model: nn.Module, batch_size: int):
        super().__init__()
        self.model, self.batch_size = model, batch_size
        self.num_prompts = model.num_prompts

    def forward(self, x: torch.Tensor, liver_margin: torch.Tensor) -> torch.Tensor:
        """``x``, ``liver_margin`` ``[per_rank, 1, *P]`` -> ``[B, K * C, *P]``."""
        live = self.model(x, liver_margin)
        rank, size = world()
        parts = [torch.empty_like(live, dtype=torch.float32) for _ in range(size)]
        dist.all_gather(parts, live.detach().float().contiguous())  # float: not every backend gathers bf16
        parts = [p.to(live.dtype) for p in parts]  # bf16 -> fp32 -> bf16 is exact
        parts[rank] = live
        return torch.cat(parts)[: self.batch_size]


def sum_gradients_before_step(optimizer: torch.optim.Optimizer):
    """Before each ``optimizer.step()``, replace each of its parameters' gradients by their sum over ranks.

    One flat all-reduce of the trainable parameters only: the frozen backbone is not in the optimiser. A
    parameter this rank's backward did not reach counts as zero. Returns the hook's handle (``.remove()``).
    """

    def hook(opt, args, kwargs):
        params = [p for group in opt.param_groups for p in group["params"]]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p))

    return optimizer.register_step_pre_hook(hook)


@torch.no_grad()
def broadcast_trainable(model: nn.Module, src: int = 0) -> None:
    """Give every rank ``src``'s trainable parameters (the frozen backbone is loaded alike everywhere and
    never sent). Ranks build the model from the same seed or checkpoint; this makes sure of it."""
    for p in model.parameters():
        if p.requires_grad:
            dist.broadcast(p.data, src)


def reduce_metrics(metrics: dict | None, device: torch.device) -> dict | None:
    """Pool each rank's validation means over its own cases into the means over every case.

    Args:
        metrics: :func:`apps.slpt.evaluation.evaluate`'s answer for this rank's shard (``cases`` > 0), or
            ``None`` for a rank with no validation scan.
        device: where the collective runs (the model's device: NCCL reduces CUDA tensors only).
    """
    keys = ("dice_liver", "dice_tumor")
    cases = metrics["cases"] if metrics else 0
    totals = torch.tensor([cases, *[metrics[k] * cases if metrics else 0.0 for k in keys]],
                          dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    total_cases = int(totals[0].item())
    if total_cases == 0:
        return None
    liver, tumour = (float(v) / total_cases for v in totals[1:].tolist())
    return {"dice_liver": liver, "dice_tumor": tumour, "mean_dice": (liver + tumour) / 2, "cases": total_cases}


def on_rank_zero(callback: Callable, rank: int) -> Callable:
    """``callback`` on rank 0, nothing elsewhere: publishing, progress files and logs are written once."""
    return callback if rank == 0 else (lambda *args, **kwargs: None)


def from_rank_zero(obj):
    """``obj`` as rank 0 holds it, on every rank (itself without a process group)."""
    if world()[1] == 1:
        return obj
    kept = [obj]
    dist.broadcast_object_list(kept, src=0)
    return kept[0]


def validation_shard(pairs: Sequence, rank: int, world_size: int) -> list:
    """Every ``world_size``-th validation scan from ``rank``: an even share of the scans to run."""
    return list(pairs[rank::world_size])


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for the CPU (and for tests)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@contextmanager
def process_group(rank: int, world_size: int, device: torch.device | str, init_method: str | None = None,
                  backend: str | None = None):
    """The default process group for one rank of a spawned run, destroyed on the way out.

    Args:
        init_method: where the ranks meet; ``None``: ``env://`` (``MASTER_ADDR``/``MASTER_PORT``).
        backend: ``None``: :func:`backend_for` the device.
    """
    if world_size < 2:
        yield
        return
    dist.init_process_group(backend or backend_for(device), init_method=init_method or "env://",
                            world_size=world_size, rank=rank)
    try:
        yield
    finally:
        dist.destroy_process_group()


def rendezvous_file(folder: str | Path, run_id: str) -> str:
    """A ``file://`` init method every rank of run ``run_id`` agrees on without talking first.

    The ranks are spawned by one parent process, whose pid and run id name the file; ``torch.distributed``'s
    file store removes it once the last rank is done.
    """
    return f"file://{Path(folder).resolve() / f'.ddp-{run_id}-{os.getppid()}'}"
