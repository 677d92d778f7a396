"""Prompt-only training: the DVPT loss, patch sampling, one optimiser step and the epoch loop.

Plain PyTorch + MONAI: no datastore, no server. ``lib/trainers/slpt.py`` feeds it labelled scans and
persists what it reports; the benchmark calls the same functions.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.inferers import Inferer
from monai.losses import DiceCELoss
from monai.transforms import RandCropByLabelClasses, SpatialPad
from monai.transforms.utils import map_classes_to_indices

from apps.slpt import labels
from apps.slpt.active.uncertainty import mutual_information, prompt_probabilities
from apps.slpt.config import SLPTConfig
from apps.slpt.evaluation import evaluate
from apps.slpt.inference import KNOWN_LIVER_MARGIN, backbone_liver_margin
from apps.slpt.labels import NUM_CLASSES
from apps.slpt.model.checkpoints import atomic_write_bytes
from apps.slpt.model.prompts import (
    PromptedSegmenter,
    format_parameter_report,
    model_device,
    parameter_group,
    parameter_report,
)
from apps.slpt.training import distributed
from apps.slpt.training.splits import split_scans, update_split

Pair = tuple[torch.Tensor, torch.Tensor]  # ([1, *S] image, [1, *S] long label), backbone space


def dvpt_loss(
    logits: torch.Tensor, label: torch.Tensor, num_prompts: int, seg_loss: Callable, diversity_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Diversified visual prompt tuning loss.

    Args:
        logits: ``[B, K * C, *S]`` from :meth:`PromptedSegmenter.forward`.
        label: ``[B, 1, *S]`` class indices.

    Returns:
        ``mean_k seg_loss(logits_k) - diversity_weight * diversity`` and its parts, where diversity is
        the prompts' mutual information averaged over the organ (:func:`labels.organ`): it keeps the K
        predictions from collapsing where disagreement is informative, and leaves background alone.
    """
    per_prompt = logits.chunk(num_prompts, dim=1)
    seg = torch.stack([seg_loss(lg, label) for lg in per_prompt]).mean()
    diversity = logits.new_zeros(())
    if num_prompts > 1 and diversity_weight > 0:
        # On every other voxel per axis: an unbiased estimate of the organ mean at an eighth of the cost
        # (the K sets part at a coarse stage, so their disagreement varies slowly anyway).
        coarse = (slice(None), slice(None), *(slice(None, None, 2),) * (logits.dim() - 2))
        organ = labels.organ(label[coarse][:, 0])
        if organ.any():
            diversity = mutual_information(prompt_probabilities(logits[coarse], num_prompts))[organ].mean()
    total = seg - diversity_weight * diversity
    return total, {"seg": seg.item(), "diversity": diversity.item()}


def task_loss(cfg: SLPTConfig) -> DiceCELoss:
    """Dice + cross-entropy with the tumour class up-weighted.

    Dice is summed over the whole batch: per-patch Dice would punish any tumour guess in each patch
    without tumour, and the network would learn never to predict one.
    """
    weight = torch.tensor([1.0, 1.0, cfg.tumour_weight])
    return DiceCELoss(to_onehot_y=True, softmax=True, batch=True, weight=weight)


class PatchSampler:
    """Random training patches centred on background : liver : tumour in the ratio ``1 : 1 : tumour_ratio``.

    Each patch is cut from a scan's image, its label and the frozen backbone's liver margin there
    (:func:`~apps.slpt.inference.backbone_liver_margin`, one per pair), and returned as ``(image, margin,
    label)``, each ``[B, 1, *P]``.
    """

    def __init__(self, pairs: Sequence[Pair], margins: Sequence[torch.Tensor], patch_size: int,
                 rng: np.random.Generator, tumour_ratio: float = 2.0):
        if not pairs:
            raise ValueError("no labelled scans to train on")
        if len(margins) != len(pairs):
            raise ValueError(f"{len(margins)} liver margins for {len(pairs)} labelled scans")
        pad, pad_margin = SpatialPad([patch_size] * 3), SpatialPad([patch_size] * 3, value=-KNOWN_LIVER_MARGIN)
        self.stacks = [torch.cat([pad(img), pad(lab.float()), pad_margin(torch.as_tensor(m).float())])
                       for (img, lab), m in zip(pairs, margins)]
        # Padding outside a small scan is surely background. The voxels of each class are found once per scan.
        self.indices = [map_classes_to_indices(stack[1:2].long(), num_classes=NUM_CLASSES) for stack in self.stacks]
        self.crop = RandCropByLabelClasses([patch_size] * 3, ratios=[1, 1, tumour_ratio], num_classes=NUM_CLASSES,
                                           num_samples=1, warn=False)
        self.rng = rng

    def __call__(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        patches = []
        for _ in range(batch_size):
            n = self.rng.integers(len(self.stacks))
            stack = self.stacks[n]
            self.crop.set_random_state(int(self.rng.integers(2**31)))
            patches.append(torch.as_tensor(self.crop(stack, label=stack[1:2].long(), indices=self.indices[n])[0]))
        batch = torch.stack(patches)
        return batch[:, :1].float(), batch[:, 2:].float(), batch[:, 1:2].round().long()


def prompt_optimizer(model: torch.nn.Module, cfg: SLPTConfig) -> torch.optim.Optimizer:
    """AdamW over the parameters that require grad, and only those (the backbone is frozen): the decoder's
    deltas at ``cfg.decoder_learning_rate``, the rest at ``cfg.learning_rate``. Added parts start at zero
    or at random and need large steps; deltas on trained weights need small ones (FSEFT's per-group rates)."""
    groups: dict[str, list] = {"decoder": [], "added": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups["decoder" if parameter_group(name) in ("norm_bias", "low_rank") else "added"].append(p)
    rates = {"decoder": cfg.decoder_learning_rate, "added": cfg.learning_rate}
    return torch.optim.AdamW([{"params": ps, "lr": rates[g]} for g, ps in groups.items() if ps], weight_decay=1e-4)


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    loss: float
    seg_loss: float
    diversity: float
    val: dict | None
    best_metric: float | None
    improved: bool
    seconds: float


def fit(
    model: PromptedSegmenter,
    train: Sequence[Pair],
    val: Sequence[Pair],
    cfg: SLPTConfig,
    inferer: Inferer,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    seg_loss: Callable | None = None,
    on_epoch: Callable[[EpochReport], None] = lambda r: None,
    on_best: Callable[[EpochReport], None] = lambda r: None,
    log: Callable[[str], None] = print,
    progress: Path | None = None,
) -> EpochReport:
    """Train prompts, updaters and head only; call ``on_best`` whenever the model improves.

    Without a validation set every epoch counts as an improvement (the last epoch is kept), and the
    reports say ``val=None`` so nobody mistakes training loss for validation.

    ``progress``: a file where each epoch's whole training state is kept (weights, optimiser, schedule,
    random streams, and the best weights so far), so that a run stopped by a kill continues from its last
    finished epoch when started again with the same file, as the uninterrupted run would have.

    Randomness is seeded by ``cfg.seed`` and scoped: torch's global random state is the same afterwards.

    Under an initialised ``torch.distributed`` process group (MONAI Label's multi-GPU training), each rank
    runs its shard of every global batch of ``cfg.batch_size`` patches and of the validation scans, and the
    ranks train what one process would (:mod:`apps.slpt.training.distributed`). ``on_epoch``, ``on_best``,
    ``log`` and ``progress`` writes happen on rank 0 only; every rank returns the same report.
    """
    # Why this loop and not MONAI's SupervisedTrainer/SupervisedEvaluator: the round needs each improvement
    # published the moment it is found (a killed run keeps it), a progress file a stopped benchmark resumes
    # from bit for bit, bf16 autocast inside the model, K prompt sets sharing one pass with a loss over the
    # whole batch, and patches drawn from one seeded stream. Rebuilding those as ignite handlers would
    # cost more than the few collectives that make this loop data-parallel; the ignite handlers it would
    # bring (TensorBoard, MLflow) are the ones this app leaves off anyway.
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return _fit(model, train, val, cfg, inferer, optimizer, seg_loss, on_epoch, on_best, log, progress)


def train_step(model: PromptedSegmenter, x: torch.Tensor, margin: torch.Tensor, y: torch.Tensor, cfg: SLPTConfig,
               seg_loss: Callable, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, dict]:
    """One DVPT optimiser step on a CPU batch (:class:`PatchSampler`'s image ``x``, the backbone's liver
    ``margin`` and label ``y``, each ``[B, 1, *P]``): the K prompt sets share one pass
    (:class:`PromptedSegmenter`). Returns the loss and its parts (segmentation, diversity)."""
    device = model_device(model)
    logits = model(x.to(device), margin.to(device))
    loss, parts = dvpt_loss(logits, y.to(device), model.num_prompts, seg_loss, cfg.diversity_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, parts


def _fit(model, train, val, cfg, inferer, optimizer, seg_loss, on_epoch, on_best, log, progress) -> EpochReport:
    rank, size = distributed.world()
    log, on_epoch, on_best = (distributed.on_rank_zero(f, rank) for f in (log, on_epoch, on_best))
    rng = np.random.default_rng(cfg.seed)  # the same stream on every rank: they draw the same global batches
    log(format_parameter_report(parameter_report(model)))
    optimizer = optimizer or prompt_optimizer(model, cfg)
    seg_loss = seg_loss or task_loss(cfg)
    device = model_device(model)  # patches are cut on the CPU and trained on wherever the model is
    if isinstance(seg_loss, torch.nn.Module):
        seg_loss = seg_loss.to(device)  # its class weights
    steps = cfg.epochs * cfg.iterations_per_epoch
    # Warm-up over the first tenth, then cosine decay, each group to its own peak rate.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                    total_steps=steps, pct_start=0.1)
    margins = [backbone_liver_margin(model, image) for image, _ in train]  # one frozen pass per scan, up front
    sampler = PatchSampler(train, margins, cfg.patch_size, rng, cfg.tumour_patch_ratio)
    best: float | None = None
    report = None
    best_weights, best_report, seconds = None, None, 0.0  # kept in ``progress`` only
    if progress is not None and progress.exists():
        state = _restore_progress(progress, model, optimizer, scheduler, rng)
        report, best_weights, seconds = EpochReport(**state["report"]), state["best_model"], state["seconds"]
        best_report = EpochReport(**state["best_report"]) if state["best_report"] else None
        best = report.best_metric
        log(f"continuing after epoch {report.epoch}/{cfg.epochs}, kept in {progress}")
    step_model, part, per_rank, unhook = model, slice(None), cfg.batch_size, None
    if size > 1:
        distributed.broadcast_trainable(model)
        unhook = distributed.sum_gradients_before_step(optimizer)
        step_model = distributed.GlobalBatch(model, cfg.batch_size)
        part, per_rank = distributed.shard(cfg.batch_size, rank, size)
        val_shard = distributed.validation_shard(val, rank, size)
        log(f"data-parallel over {size} processes: {per_rank} of each {cfg.batch_size} patches per process")
    try:
        done = report.epoch if report else 0
        for epoch in range(done + 1, cfg.epochs + 1):
            start = time.time()
            model.train()
            losses, segs, divs = [], [], []
            for _ in range(cfg.iterations_per_epoch):
                x, m, y = sampler(cfg.batch_size)
                if size > 1:  # y stays whole: the loss is the global batch's
                    x, m = distributed.padded(x, part, per_rank), distributed.padded(m, part, per_rank)
                loss, parts = train_step(step_model, x, m, y, cfg, seg_loss, optimizer)
                scheduler.step()
                losses.append(loss.item()), segs.append(parts["seg"]), divs.append(parts["diversity"])
            validate = bool(val) and (epoch % cfg.val_interval == 0 or epoch == cfg.epochs)
            if not validate:
                metrics = None
            elif size == 1:
                metrics = evaluate(model, val, inferer)
            else:
                mine = evaluate(model, val_shard, inferer) if val_shard else None
                metrics = distributed.reduce_metrics(mine, device)
            key = metrics["mean_dice"] if metrics else None
            # Without validation data every epoch is kept; between validations nothing is.
            improved = (not val) or (validate and (best is None or key > best))
            if improved and key is not None:
                best = key
            report = EpochReport(epoch, cfg.epochs, float(np.mean(losses)), float(np.mean(segs)),
                                 float(np.mean(divs)), metrics, best, improved, round(time.time() - start, 2))
            val_text = (f"val Dice liver {metrics['dice_liver']:.4f} tumor {metrics['dice_tumor']:.4f}" if metrics
                        else "not validated this epoch" if val else "no validation set, last epoch kept")
            log(f"epoch {epoch}/{cfg.epochs} loss {report.loss:.4f} (seg {report.seg_loss:.4f}, "
                f"diversity {report.diversity:.4f}) {val_text}{' *best*' if improved and metrics else ''} "
                f"[{report.seconds:.1f}s]")
            if progress is not None and rank == 0:
                if improved:
                    best_weights, best_report = copy.deepcopy(model.state_dict()), report
                seconds += report.seconds
                _keep_progress(progress, model, optimizer, scheduler, rng, report, best_weights, best_report, seconds)
            on_epoch(report)
            if improved:
                on_best(report)
    finally:
        if unhook is not None:
            unhook.remove()
    return report


def _keep_progress(path: Path, model, optimizer, scheduler, rng: np.random.Generator, report: EpochReport,
                   best_weights: dict | None, best_report: EpochReport | None, seconds: float) -> None:
    state = {"report": dataclasses.asdict(report), "model": model.state_dict(), "best_model": best_weights,
             "best_report": dataclasses.asdict(best_report) if best_report else None,
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "numpy": rng.bit_generator.state, "torch": torch.get_rng_state(), "seconds": seconds}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _restore_progress(path: Path, model, optimizer, scheduler, rng: np.random.Generator) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file, from _keep_progress
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    return state


def _kept_progress(path: Path) -> tuple[EpochReport, dict, float]:
    """A ``progress`` file's best epoch so far: its report, its weights, and the training seconds counted."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    return EpochReport(**state["best_report"]), state["best_model"], state["seconds"]


def fit_keeping_best(
    model: PromptedSegmenter,
    train: Sequence[Pair],
    val: Sequence[Pair],
    cfg: SLPTConfig,
    inferer: Inferer,
    log: Callable[[str], None] = print,
    progress: Path | None = None,
) -> tuple[EpochReport, float]:
    """:func:`fit`, then put the best epoch's weights back into ``model``.

    Returns the best epoch's report and the training seconds. The epoch kept says whether the schedule was
    long enough: the last one means the model was still improving. With ``progress`` (see :func:`fit`) a
    stopped run continues, and the seconds are the sum of its epochs' over every start.
    """
    best = {}
    start = time.perf_counter()
    fit(model, train, val, cfg, inferer, progress=progress,
        on_best=lambda r: best.update(report=r, state=copy.deepcopy(model.state_dict())), log=log)
    seconds = time.perf_counter() - start
    best = distributed.from_rank_zero(best)  # on_best ran there only; after it, the progress file is complete
    if progress is not None:
        best["report"], best["state"], seconds = _kept_progress(progress)
    model.load_state_dict(best["state"])
    return best["report"], seconds


def training_split(labelled: dict, cfg: SLPTConfig, keep: str) -> tuple[list[Pair], list[Pair]]:
    """``{id: pair}`` labelled scans -> ``(train, val)`` for :func:`fit_keeping_best`.

    ``keep="last"``: train on every scan, no validation, so the last epoch is kept. ``keep="best"``: the app
    trainer's protocol, holding out its fixed validation split (``cfg.val_fraction``, seeded by ``cfg.seed``)
    and keeping the best epoch on it. With 10 labels that split is 2 scans, too few to pick an epoch reliably
    (``docs/results/explore``: the schedule's last epoch beats the epoch a 2-scan split keeps).
    """
    if keep == "last":
        return [labelled[i] for i in sorted(labelled)], []
    if keep != "best":
        raise ValueError(f"keep must be 'last' or 'best', not {keep!r}")
    split = update_split(labelled, {}, cfg.val_fraction, cfg.min_val_scans, cfg.min_train_scans, cfg.seed)
    return split_scans(labelled, split)
