"""Pre-train the default task-agnostic backbone on organ-labelled phantoms.

The network never sees a tumour label: tumours are painted into the images but counted as liver in
the organ maps (``phantom.ORGAN_NAMES``). The result is written as a MONAI bundle directory
(``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``), the same layout a
model-zoo backbone has, so ``backbone.load_backbone`` treats both alike.

    python -m benchmarks.pretrain --out models/backbone
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.transforms import RandCropByPosNegLabel, SpatialPad
from monai.utils import set_determinism

from apps.slpt.model.backbone import (
    INFERENCE_CONFIG,
    METADATA,
    WEIGHTS,
    file_sha256,
    image_preprocessing,
    load_backbone,
    read_bundle_config,
)
from phantoms.io import load_phantom_pair
from phantoms.phantom import ORGAN_NAMES, make_phantom
from phantoms.torso import make_torso


@dataclass
class PretrainConfig:
    """Everything that determines the default backbone; stored in its metadata."""

    init_filters: int = 8
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    dropout_prob: float = 0.2
    pixdim: float = 3.0
    intensity_window: tuple[float, float] = (-200.0, 300.0)
    # Training patches and the inference window are one size: a larger window pads short scans with
    # more constant slices than training ever showed, and the network then calls that padding liver.
    patch_size: int = 64
    train_seeds: tuple[int, int] = (100_000, 100_080)  # [start, stop): disjoint from demo/pool seeds
    val_seeds: tuple[int, int] = (200_000, 200_016)
    # Torso scans (phantoms.torso: chest to pelvis, randomised intensities) and the share of training
    # patches cut from them; the rest come from the task phantoms. None: task phantoms only.
    torso_seeds: tuple[int, int] | None = None
    torso_val_seeds: tuple[int, int] | None = None
    torso_share: float = 0.75
    # The intensity window before the resampling to ``pixdim`` (see ``bundle_config``); the stages before the
    # torso scans resampled first.
    window_first: bool = True
    iterations: int = 700
    batch_size: int = 2
    lr: float = 3e-3
    seed: int = 0
    init_from: str | None = None  # a bundle whose weights start this run (a second, lower-lr stage)
    labels: dict[str, int] = field(default_factory=lambda: dict(ORGAN_NAMES))


def bundle_config(cfg: PretrainConfig) -> dict:
    """The ``configs/inference.json`` of the bundle, in model-zoo style."""
    lo, hi = cfg.intensity_window
    window = {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": lo, "a_max": hi, "b_min": 0.0,
              "b_max": 1.0, "clip": True}
    # Window first: scanners store the outside of the reconstruction circle as -1024, -2048 or -3024 HU, and
    # each, interpolated with the tissue beside it, would give the network another edge.
    resample = {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"}
    return {
        "bundle_root": ".",
        "pixdim": [cfg.pixdim] * 3,
        "network_def": {
            "_target_": "SegResNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": len(cfg.labels),
            "init_filters": cfg.init_filters,
            "blocks_down": list(cfg.blocks_down),
            "blocks_up": list(cfg.blocks_up),
            "dropout_prob": cfg.dropout_prob,
        },
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                *((window, resample) if cfg.window_first else (resample, window)),
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [cfg.patch_size] * 3, "sw_batch_size": 1,
                    "overlap": 0.25},
    }


def _prepare(seeds: tuple[int, int] | None, preprocessing, make=make_phantom) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [load_phantom_pair(make(s), preprocessing) for s in range(*seeds)] if seeds else []


def evaluate(network, pairs, roi_size, n_classes) -> dict[str, float]:
    """Mean Dice per organ on whole volumes (sliding window), background excluded."""
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    network.eval()
    with torch.no_grad():
        for image, label in pairs:
            logits = sliding_window_inference(image[None], roi_size, 1, network, overlap=0.25)
            pred = one_hot(logits.argmax(1, keepdim=True), n_classes)
            metric(pred, one_hot(label[None], n_classes))
    per_class = metric.aggregate().tolist()
    return {name: round(float(d), 4) for name, d in zip(list(ORGAN_NAMES)[1:], per_class)}


def pretrain(cfg: PretrainConfig, out: Path, log=functools.partial(print, flush=True)) -> dict:
    set_determinism(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out.mkdir(parents=True, exist_ok=True)
    (out / INFERENCE_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    (out / WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
    (out / INFERENCE_CONFIG).write_text(json.dumps(bundle_config(cfg), indent=2))
    # Build the network and preprocessing through the same loader inference uses.
    parser = read_bundle_config(out)
    network = parser.get_parsed_content("network_def", instantiate=True)
    preprocessing = image_preprocessing(parser)
    previous = None
    if cfg.init_from:
        start = load_backbone(cfg.init_from)  # strict: it must be this very architecture
        network.load_state_dict(start.network.state_dict())
        previous = start.metadata
        log(f"initialised from {cfg.init_from} (sha256 {start.identity['sha256'][:12]})")

    t0 = time.time()
    train, val = _prepare(cfg.train_seeds, preprocessing), _prepare(cfg.val_seeds, preprocessing)
    torso, torso_val = (_prepare(seeds, preprocessing, make_torso) for seeds in (cfg.torso_seeds, cfg.torso_val_seeds))
    log(f"prepared {len(train)} train / {len(val)} val phantoms and {len(torso)} / {len(torso_val)} torso scans "
        f"in {time.time() - t0:.0f}s")

    n_classes = len(cfg.labels)
    rng = np.random.default_rng(cfg.seed)
    padder = SpatialPad([cfg.patch_size] * 3)
    cropper = RandCropByPosNegLabel(spatial_size=[cfg.patch_size] * 3, pos=2, neg=1, num_samples=1)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.iterations)

    network.train()
    t0 = time.time()
    for it in range(cfg.iterations):
        images, labels = [], []
        for _ in range(cfg.batch_size):
            source = torso if torso and rng.random() < cfg.torso_share else train
            image, label = source[rng.integers(len(source))]
            cropper.set_random_state(int(rng.integers(2**31)))
            stacked = padder(torch.cat([image, label.float()]))  # short scans get zero (air) slices
            patch = cropper(stacked, label=stacked[1:])[0]
            # Intensity jitter mimics other scanners/kernels without changing anatomy.
            img = patch[:1] * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
            images.append(img)
            labels.append(patch[1:].round().long())
        x, y = torch.stack(images).as_tensor(), torch.stack(labels).as_tensor()
        loss = loss_fn(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (it + 1) % 50 == 0:
            log(f"iter {it + 1}/{cfg.iterations} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")

    train_seconds = time.time() - t0
    dice = evaluate(network, val, (cfg.patch_size,) * 3, n_classes)
    log(f"held-out organ Dice: {dice}")
    torso_dice = evaluate(network, torso_val, (cfg.patch_size,) * 3, n_classes) if torso_val else None
    if torso_dice:
        log(f"held-out torso organ Dice: {torso_dice}")
    torch.save(network.state_dict(), out / WEIGHTS)
    metadata = {
        "name": "slpt_default_backbone",
        "description": "Task-agnostic SegResNet pre-trained on organ-labelled synthetic CT phantoms "
        "(python -m benchmarks.pretrain), and on synthetic torso CTs from chest to pelvis with randomised intensities "
        "when its config names torso seeds. Tumours are labelled as liver; no tumour class exists.",
        "labels": cfg.labels,
        "out_channels": n_classes,
        "num_parameters": sum(p.numel() for p in network.parameters()),
        "pretrain_config": asdict(cfg),
        "heldout_dice": dice,
        "heldout_dice_torso": torso_dice,
        "train_seconds": round(train_seconds, 1),
        "torch_version": torch.__version__,
        "sha256": file_sha256(out / WEIGHTS),
        "initialised_from": previous,  # the earlier stage's full metadata (config, seeds, Dice, hash)
    }
    (out / METADATA).write_text(json.dumps(metadata, indent=2))
    load_backbone(out)  # the written bundle must load strictly, or this run failed
    return metadata


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models/backbone"))
    parser.add_argument("--iterations", type=int, default=PretrainConfig.iterations)
    parser.add_argument("--init-filters", type=int, default=PretrainConfig.init_filters)
    parser.add_argument("--patch-size", type=int, default=PretrainConfig.patch_size)
    parser.add_argument("--batch-size", type=int, default=PretrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=PretrainConfig.lr)
    parser.add_argument("--init-from", help="bundle directory whose weights start this run")
    parser.add_argument("--torso-seeds", type=int, nargs=2, metavar=("START", "STOP"),
                        help="also train on these torso scans (phantoms.torso)")
    parser.add_argument("--torso-val-seeds", type=int, nargs=2, metavar=("START", "STOP"))
    parser.add_argument("--torso-share", type=float, default=PretrainConfig.torso_share)
    parser.add_argument("--resample-first", action="store_true",
                        help="resample before the intensity window (the order of the stages before the torso scans)")
    parser.add_argument("--train-seeds", type=int, nargs=2, metavar=("START", "STOP"), default=PretrainConfig.train_seeds)
    parser.add_argument("--val-seeds", type=int, nargs=2, metavar=("START", "STOP"), default=PretrainConfig.val_seeds)
    args = parser.parse_args(argv)
    cfg = PretrainConfig(iterations=args.iterations, init_filters=args.init_filters, patch_size=args.patch_size,
                         batch_size=args.batch_size, lr=args.lr, init_from=args.init_from,
                         train_seeds=tuple(args.train_seeds), val_seeds=tuple(args.val_seeds),
                         torso_seeds=tuple(args.torso_seeds) if args.torso_seeds else None,
                         torso_val_seeds=tuple(args.torso_val_seeds) if args.torso_val_seeds else None,
                         torso_share=args.torso_share, window_first=not args.resample_first)
    meta = pretrain(cfg, args.out)
    print(json.dumps({k: meta[k] for k in ("heldout_dice", "heldout_dice_torso", "num_parameters")}))


if __name__ == "__main__":
    main()
