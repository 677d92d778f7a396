"""A validation split that stays fixed across labelling rounds.

MONAI Label reshuffles its validation split on every retrain, so metrics from different rounds are not
comparable and tiny sets change meaning each time. Here a scan, once assigned, keeps its side forever;
new labels join validation only while it is below its target share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def val_target(n_labelled: int, val_fraction: float, min_val: int, min_train: int) -> int:
    """How many of ``n_labelled`` scans should be in validation (0 when too few to mean anything)."""
    target = int(n_labelled * val_fraction)
    if target < min_val or n_labelled - target < min_train:
        return 0
    return target


def update_split(
    labelled: Iterable[str],
    previous: dict[str, str],
    val_fraction: float,
    min_val: int = 1,
    min_train: int = 2,
    seed: int = 0,
) -> dict[str, str]:
    """Assign every labelled id to ``"train"`` or ``"val"``, keeping all earlier assignments.

    New ids fill validation up to its target in a seeded hash order, so the choice is deterministic
    and does not depend on the order labels arrived in. Ids no longer labelled are dropped.
    """
    ids = sorted(set(labelled))
    split = {i: previous[i] for i in ids if previous.get(i) in ("train", "val")}
    n_val = sum(side == "val" for side in split.values())
    need = val_target(len(ids), val_fraction, min_val, min_train) - n_val
    fresh = sorted((i for i in ids if i not in split), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    for i in fresh:
        split[i] = "val" if need > 0 else "train"
        need -= split[i] == "val"
    return split


def describe_split(split: dict[str, str], val_fraction: float, min_val: int, min_train: int) -> str:
    n_val = sum(side == "val" for side in split.values())
    n_train = len(split) - n_val
    if n_val:
        return f"{n_train} train / {n_val} validation scans (validation split fixed across rounds)"
    need = next(n for n in range(1, 10_000) if val_target(n, val_fraction, min_val, min_train))
    return (f"{n_train} train scans, no validation: too few labelled scans to validate "
            f"(have {len(split)}, need {need}); the last epoch is kept")


def split_scans(scans: Mapping[str, T], split: Mapping[str, str]) -> tuple[list[T], list[T]]:
    """``(train, val)``: the ``scans`` on each side of ``split``, in id order."""
    return ([scans[i] for i, side in sorted(split.items()) if side == "train"],
            [scans[i] for i, side in sorted(split.items()) if side == "val"])
