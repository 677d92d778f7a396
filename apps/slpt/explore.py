"""Try SLPT settings on a validation range of phantoms that no benchmark tests on.

Hyperparameters are chosen here, never on compare's or the benchmark's test sets. Training data is
compare's labelled set and its seed-0 training split; validation phantoms are seeds 600000 onwards.
Each variant is a JSON object of ``SLPTConfig`` overrides plus ``name``, optional ``method`` (``slpt``
or ``ft`` for full fine-tuning with the same head) and ``evals`` (epochs to evaluate at; the last one
is the training length). One JSON line per evaluation goes to stdout:

    python -m apps.slpt.explore '[{"name": "default"}, {"name": "ft", "method": "ft"}]'
    python -m apps.slpt.explore '[{"name": "all stages", "stages": ["down_layers.0", ..., "up_layers.2"]}]'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from .backbone import load_backbone
from .baselines import full_finetune
from .compare import LABELLED_POOL, SELECTION_SEED
from .config import SLPTConfig
from .data import image_id, load_phantom_pair
from .phantom import make_phantom, phantom_header
from .postprocess import task_label
from .splits import update_split
from .tuning import build_model, dice_per_case, fit, predict, sliding_window

VALIDATION_FIRST_SEED = 600_000


def _case_rows(model, val, types, inferer) -> list[dict]:
    rows = []
    for (image, label), kind in zip(val, types):
        probs, _ = predict(model, image, inferer)
        pred, truth = task_label(probs) == 2, label[0] == 2
        rows.append({"type": kind, "dice": round(float(dice_per_case(pred.long(), truth.long(), 2)[0]), 4),
                     "predicted": int(pred.sum()), "true": int(truth.sum()), "overlap": int((pred & truth).sum())})
    return rows


def run(variants: list[dict], n_val: int, backbone_dir: str) -> None:
    backbone = load_backbone(backbone_dir)
    pool = np.random.default_rng(SELECTION_SEED).choice(np.arange(*LABELLED_POOL), 10, replace=False)
    labelled = {image_id(int(s)): load_phantom_pair(make_phantom(int(s)), backbone.preprocessing, target="task")
                for s in sorted(pool)}
    split = update_split(labelled, {}, 0.2, 1, 2, 0)
    train = [labelled[i] for i, side in sorted(split.items()) if side == "train"]
    seeds = range(VALIDATION_FIRST_SEED, VALIDATION_FIRST_SEED + n_val)
    val = [load_phantom_pair(make_phantom(s), backbone.preprocessing, target="task") for s in seeds]
    types = [phantom_header(s)["tumor_type"] for s in seeds]
    inferer = sliding_window(backbone.roi_size)
    for variant in variants:
        variant = dict(variant)
        name, method, evals = variant.pop("name"), variant.pop("method", "slpt"), variant.pop("evals", [30, 60])
        cfg = dataclasses.replace(SLPTConfig(epochs=max(evals), val_interval=10**6), **variant)
        torch.manual_seed(cfg.seed)
        if method == "ft":
            model = full_finetune(backbone, cfg.head_stages, head_channels=cfg.head_channels)
            cfg = dataclasses.replace(cfg, learning_rate=1e-3, diversity_weight=0.0)  # as compare does
        else:
            model = build_model(backbone, cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        start = time.time()

        def report(epoch_report, model=model, name=name, trainable=trainable, start=start):
            if epoch_report.epoch not in evals:
                return
            rows = _case_rows(model, val, types, inferer)
            overlap = sum(r["overlap"] for r in rows)
            total = sum(r["predicted"] + r["true"] for r in rows)
            print(json.dumps({"name": name, "epoch": epoch_report.epoch, "trainable": trainable,
                              "seconds": round(time.time() - start), "loss": round(epoch_report.loss, 4),
                              "tumour_dice_per_case": round(float(np.mean([r["dice"] for r in rows])), 4),
                              "tumour_dice_global": round(2 * overlap / max(total, 1), 4), "cases": rows}),
                  flush=True)

        fit(model, train, [], cfg, inferer, on_epoch=report, log=lambda message: None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", help="JSON list of variants")
    parser.add_argument("--val", type=int, default=12, help="validation phantoms (seeds 600000 onwards)")
    parser.add_argument("--backbone", default="models/backbone")
    args = parser.parse_args(argv)
    run(json.loads(args.variants), args.val, args.backbone)


if __name__ == "__main__":
    main()
