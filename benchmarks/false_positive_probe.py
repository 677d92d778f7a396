"""Can post-processing remove the false tumours of SLPT with all seven stages prompted?

Trains that variant (hidden_ratio 1) on compare's seed-0 training split, predicts the 40 validation phantoms
600000-600039 (never a test set), and scores tumour Dice with tumour components smaller than ``min_size``
voxels removed and/or voxels below a tumour-probability ``threshold`` dropped. One JSON line per setting:

    python -m benchmarks.false_positive_probe > docs/results/explore/false_positive_probe.jsonl
"""

import dataclasses
import json
import time

import numpy as np
import torch
from monai.transforms import RemoveSmallObjects

from apps.slpt import labels
from apps.slpt.config import SLPTConfig
from apps.slpt.evaluation import dice_per_case
from apps.slpt.inference import predict, sliding_window, task_label
from apps.slpt.model.build import build_model
from apps.slpt.training.loop import fit
from benchmarks.explore import exploration_data

ALL7 = ("down_layers.0", "down_layers.1", "down_layers.2", "down_layers.3", "up_layers.0", "up_layers.1", "up_layers.2")


def main() -> None:
    backbone, train, val, types = exploration_data(40, "models/backbone", "cpu")
    cfg = dataclasses.replace(SLPTConfig(val_interval=10**6), stages=ALL7, hidden_ratio=1.0, seed=0)
    torch.manual_seed(0)
    model = build_model(backbone, cfg)
    t = time.time()
    fit(model, train, [], cfg, sliding_window(backbone.roi_size), log=lambda m: None)
    print(json.dumps({"trained_seconds": round(time.time() - t)}), flush=True)
    # The backbone's window, as when the committed output was measured (before apps.slpt.inference.task_inferer).
    inferer = sliding_window(backbone.roi_size)
    probs = [predict(model, image, inferer)[0] for image, _ in val]
    for threshold in (0.0, 0.5, 0.7, 0.9):
        for min_size in (0, 10, 30, 100):
            dices, tf_empty = [], 0
            for p, (image, label), kind in zip(probs, val, types):
                lab = task_label(p)
                tumour = labels.tumour(lab)
                if threshold:
                    tumour &= p[2] > threshold
                if min_size:
                    tumour = RemoveSmallObjects(min_size)(tumour[None])[0].bool()
                truth = labels.tumour(label[0])
                dices.append(float(dice_per_case(tumour.long(), truth.long(), 2)[0]))
                tf_empty += kind == "none" and not tumour.any()
            with_tumour = [d for d, k in zip(dices, types) if k != "none"]
            print(json.dumps({"threshold": threshold, "min_size": min_size, "per_case": round(float(np.mean(dices)), 4),
                              "tumour_cases": round(float(np.mean(with_tumour)), 4),
                              "tumour_free_empty": int(tf_empty)}), flush=True)


if __name__ == "__main__":
    main()
