"""Does the sliding-window size change what a trained SLPT model predicts?

Trains the app's default SLPT on compare's seed-0 training split (32-voxel patches), then predicts the 40
validation phantoms 600000-600039 (never a test set) in windows of the backbone's own size (64), of the
training patch size (32) and in between (48). The backbone's GroupNorm normalises each window over its
whole extent, so the features the prompts and head were trained on only recur in windows of the training
size; this is why ``apps.slpt.inference.task_inferer`` exists. One JSON line per window:

    python -m benchmarks.window_probe > docs/results/explore/window_probe.jsonl
"""

import dataclasses
import json
import time

import torch

from apps.slpt.config import SLPTConfig
from apps.slpt.inference import sliding_window
from apps.slpt.model.build import build_model
from apps.slpt.training.loop import fit
from benchmarks.explore import case_rows, exploration_data, tumour_dice

WINDOWS = (64, 32, 48)


def main() -> None:
    backbone, train, val, types = exploration_data(40, "models/backbone", "cpu")
    cfg = dataclasses.replace(SLPTConfig(val_interval=10**6), seed=0)
    torch.manual_seed(0)
    model = build_model(backbone, cfg)
    t = time.time()
    fit(model, train, [], cfg, sliding_window(backbone.roi_size), log=lambda m: None)  # no validation: unused
    print(json.dumps({"trained_seconds": round(time.time() - t), "patch_size": cfg.patch_size}), flush=True)
    for roi in WINDOWS:
        t = time.time()
        cases = case_rows(model, val, types, sliding_window((roi,) * 3, cfg.sw_overlap))
        dice = tumour_dice(cases)
        print(json.dumps({
            "roi": roi, "seconds": round(time.time() - t),
            "per_case": dice["tumour_dice_per_case"], "global": dice["tumour_dice_global"],
            "hits": sum(c["overlap"] > 0 for c in cases if c["true"]),
            "free_clean": sum(c["predicted"] == 0 for c in cases if not c["true"]),
            "predicted": sum(c["predicted"] for c in cases), "cases": cases,
        }), flush=True)


if __name__ == "__main__":
    main()
