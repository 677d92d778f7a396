"""Where the out-of-distribution limits (``apps/slpt/ood.py``) come from: the organ-layout features of
abdominal phantoms (full and half field of view, as the demo and the tests use) against non-abdominal
volumes (``phantoms/non_abdominal.py``) and, given ``--atlas``, a real CT head. Real abdominal CTs given with
``--real`` are scored beside them, to show where real inputs fall; they are test scans, never used to pick.

    python -m tools.ood_calibration --out docs/results/ood [--atlas ct_brain_atlas_1mm.nii.gz] [--real CT ...]

The atlas is the CT brain atlas in the ``totalsegmentator`` wheel on PyPI (not shipped here):
``pip download totalsegmentator --no-deps -d /tmp/ts && unzip -j /tmp/ts/*.whl
totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz -d /tmp/ts``. Each volume is scored as
``/infer/backbone`` sees it (its own windows and precision, :func:`apps.slpt.inference.organ_logits`) and as
TESLA scoring does (one whole-scan pass).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose

from apps.slpt.config import SLPTConfig
from apps.slpt.inference import organ_inferer, organ_logits
from apps.slpt.model.backbone import load_backbone
from apps.slpt.ood import LayoutLimits, check_layout, layout_features
from apps.slpt.training.data import to_meta_tensor
from phantoms import non_abdominal
from phantoms.phantom import PhantomSpec, make_phantom

REAL = "real abdominal CT (held out)"
KINDS = ("abdominal", REAL, "not abdominal")
FEATURES = ("confidence", "liver_share", "liver_connected", "spleen_per_liver", "kidney_left_per_liver",
            "kidney_right_per_liver", "aorta_per_liver", "bone_per_liver")


def cases(args):
    for seed in range(args.seed, args.seed + args.phantoms):
        ph = make_phantom(seed)
        yield f"phantom {seed}", "abdominal", ph.image, ph.affine
    for seed in range(args.seed + 1000, args.seed + 1000 + args.phantoms):
        ph = make_phantom(seed, PhantomSpec(z_extent=(96.0, 96.0)))
        yield f"phantom {seed}, half field of view", "abdominal", ph.image, ph.affine
    for name, make in non_abdominal.VOLUMES.items():
        hu, affine = make(0)
        yield name, "not abdominal", hu, affine
    if args.atlas:
        img = nib.load(args.atlas)
        yield "CT brain atlas (totalsegmentator)", "not abdominal", img.get_fdata(dtype=np.float32), img.affine
    for path in args.real:
        img = nib.load(path)
        hu = np.maximum(img.get_fdata(dtype=np.float32), -1024.0)  # padding outside the scan circle, as air
        yield Path(path).name.split(".")[0], REAL, hu, img.affine


@torch.no_grad()
def probabilities(backbone, hu, affine, whole: bool) -> torch.Tensor:
    x = Compose(backbone.preprocessing)({"image": to_meta_tensor(np.asarray(hu), np.asarray(affine, float))})["image"]
    x = x.as_tensor()[None].float()
    if not whole:
        cfg = SLPTConfig()
        logits = organ_logits(backbone.network, x, organ_inferer(backbone.roi_size, cfg), cfg.precision)
        return torch.softmax(logits, 1)[0]
    spatial = x.shape[2:]
    x = F.pad(x, [v for s in reversed(spatial) for v in (0, (-s) % 16)])
    logits = backbone.network.eval()(x)[(..., *[slice(0, s) for s in spatial])]
    return torch.softmax(logits.float(), 1)[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backbone", default="models/backbone")
    parser.add_argument("--phantoms", type=int, default=8, help="phantoms of each field of view")
    parser.add_argument("--seed", type=int, default=300000)
    parser.add_argument("--atlas", help="ct_brain_atlas_1mm.nii.gz from the totalsegmentator wheel (optional)")
    parser.add_argument("--real", nargs="*", default=[], help="real abdominal CTs (NIfTI): shown, never used to pick")
    args = parser.parse_args(argv)
    backbone, limits = load_backbone(args.backbone), LayoutLimits()
    rows = []
    for name, kind, hu, affine in cases(args):
        for passes in ("windows", "whole scan"):
            start = time.time()
            features = layout_features(probabilities(backbone, hu, affine, passes == "whole scan"), backbone.labels)
            verdict = check_layout(features, limits)
            rows.append({"case": name, "kind": kind, "pass": passes, "flagged": verdict.flagged,
                         "reasons": list(verdict.reasons), "features": features,
                         "seconds": round(time.time() - start, 2)})
            print(name, passes, verdict.flagged, verdict.reasons, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps({"limits": dataclasses.asdict(limits), "rows": rows}, indent=1))
    (args.out / "result.md").write_text(report(rows, limits, args))


def confidence_rule(rows, limits: LayoutLimits) -> tuple[float, str] | None:
    """The confidence limit the rule picks: just above (0.01, rounded up) the most confident non-abdominal volume
    that no other sign flags. Real CTs take no part. None when every such volume is flagged by another sign."""
    alone = [r for r in rows if r["kind"] == "not abdominal"
             and not check_layout(r["features"], dataclasses.replace(limits, min_confidence=0.0)).flagged]
    if not alone:
        return None
    top = max(alone, key=lambda r: r["features"]["confidence"])
    return math.ceil(top["features"]["confidence"] * 100 + 1) / 100, f"{top['case']} ({top['pass']})"


def report(rows, limits: LayoutLimits, args) -> str:
    def span(kind, feature):
        values = [r["features"].get(feature, float("nan")) for r in rows if r["kind"] == kind]
        return f"{min(values):.4f} - {max(values):.4f}" if values else "-"

    wrong = [r for r in rows if r["flagged"] != (r["kind"] == "not abdominal")]
    lines = [
        "# Out-of-distribution check: where its limits come from",
        "",
        f"`python -m tools.ood_calibration --out {args.out} --phantoms {args.phantoms}"
        + (" --atlas <ct_brain_atlas_1mm.nii.gz>" if args.atlas else "")
        + "".join(f" --real <{Path(p).name}>" for p in args.real) + "`",
        "",
        f"Limits (`LayoutLimits`, `apps/slpt/ood.py`): {dataclasses.asdict(limits)}.",
        f"Misclassified: {len(wrong)} of {len(rows)} (case x pass)"
        + (": " + ", ".join(f"{r['case']} ({r['pass']})" for r in wrong) if wrong else "."),
        "",
        "Each limit sits between the abdominal phantoms and the non-abdominal volumes its sign is meant to catch.",
        "The confidence limit sits just above the most confident volume that this sign alone catches, rather",
        "than just under the abdominal phantoms: real CTs leave the backbone less sure than phantoms do. The real",
        "CTs are test scans: shown, never used to pick.",
        "",
        "The rule's confidence limit on this backbone: " + (
            f"{rule[0]:.2f}, above {rule[1]}" if (rule := confidence_rule(rows, limits)) else
            "none needed (every non-abdominal volume is flagged by another sign)") + ".",
        "",
        "| feature | abdominal phantoms (min - max) | real abdominal CTs, held out | not abdominal (min - max) |",
        "| --- | --- | --- | --- |",
        *(f"| {f} | " + " | ".join(span(kind, f) for kind in KINDS) + " |" for f in FEATURES),
        "",
        "| case | pass | flagged | reasons | " + " | ".join(FEATURES) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in FEATURES) + " |",
    ]
    for r in rows:
        values = " | ".join(f"{r['features'].get(f, float('nan')):.4f}" for f in FEATURES)
        lines.append(f"| {r['case']} ({r['kind']}) | {r['pass']} | {'**yes**' if r['flagged'] else 'no'} | "
                     f"{'; '.join(r['reasons']) or '-'} | {values} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
