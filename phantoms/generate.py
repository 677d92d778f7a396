"""Generate a phantom study set in MONAI Label's local datastore layout.

    python -m phantoms.generate --studies data/demo --count 12
    python -m phantoms.generate --studies data/pool --count 200 --first-seed 1000 \\
        --ground-truth data/pool_gt            # hidden oracle for benchmarks
    python -m phantoms.generate --studies data/labelled --count 10 --with-labels
    python -m phantoms.generate --studies data/demo --count 3 --dicom data/demo_dicom

Seeds are ``first_seed .. first_seed + count - 1``; the same seed always gives the same scan.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from phantoms.dicom import write_ct_series
from phantoms.io import image_id, write_studies
from phantoms.phantom import make_phantom


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=Path, required=True, help="output studies folder")
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--with-labels", action="store_true", help="also write labels/final/ (labelled set)")
    parser.add_argument("--ground-truth", type=Path, help="folder for hidden labels + manifest (benchmarks)")
    parser.add_argument("--dicom", type=Path, help="also write each scan as a CT DICOM series here")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")

    seeds = range(args.first_seed, args.first_seed + args.count)
    manifest = write_studies(args.studies, seeds, with_labels=args.with_labels, ground_truth=args.ground_truth)
    if args.dicom:
        for seed in seeds:
            ph = make_phantom(seed)
            write_ct_series(ph.image, ph.affine, args.dicom / image_id(seed), patient_id=image_id(seed))
    counts: dict[str, int] = {}
    for item in manifest:
        counts[item["tumor_type"]] = counts.get(item["tumor_type"], 0) + 1
    print(json.dumps({"studies": str(args.studies), "count": len(manifest), "tumor_types": counts}))


if __name__ == "__main__":
    main()
