"""TESLA's round policy: which stage a new round is in, which scans it picks, and why.

Pure: it reads per-scan scoring results as plain data and returns the round; the strategy adapter
gathers those results from the datastore and stores what comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from apps.slpt.active.selection import diversity_select, uncertain_diverse_select


@dataclass
class RoundPlan:
    """A new round: its stage, its picks in serving order, and each pick's reason."""

    stage: int
    basis: str
    picks: list[str]
    reasons: dict[str, dict]


def plan_round(
    candidates: Sequence[str],
    infos: Mapping[str, dict],
    version: int | None,
    k: int,
    rng: np.random.Generator,
    geometry: Callable[[str], Sequence[float]],
) -> RoundPlan:
    """Choose a round of ``k`` scans among ``candidates``.

    * Stage 2, once scans carry the prompt-based uncertainty of checkpoint ``version``: the most uncertain
      scan of each k-means cluster of backbone embeddings, most uncertain first.
    * Stage 1, before any checkpoint (or before it has scored anything): k-means on backbone embeddings,
      the scan nearest each centroid.
    * Before anything is embedded: k-means on image geometry (``geometry(id)``, header features), so the
      strategy answers without a fake score.

    Args:
        candidates: unlabelled scan ids.
        infos: per id, the scoring method's results (``embedding``, ``uncertainty``, ``checkpoint_version``).
        version: the served prompt checkpoint, or ``None``.
        k: round size.
        rng: the round's random stream (k-means initialisation).
        geometry: id -> header features, called only for the fallback.
    """
    embedded = [i for i in candidates if infos.get(i, {}).get("embedding")]
    scored = [i for i in embedded if version is not None and infos[i].get("checkpoint_version") == version]
    if scored:
        features = np.array([infos[i]["embedding"] for i in scored])
        scores = np.array([infos[i]["uncertainty"] for i in scored])
        picks = [scored[j] for j in uncertain_diverse_select(features, scores, k, rng)]
        stage, basis = 2, "prompt uncertainty, most uncertain per k-means cluster of backbone embeddings"
    elif embedded:
        picks = [embedded[j] for j in diversity_select(np.array([infos[i]["embedding"] for i in embedded]), k, rng)]
        stage, basis = 1, "k-means on backbone embeddings, scan nearest each centroid"
    else:
        picks = [candidates[j] for j in diversity_select(np.array([geometry(i) for i in candidates]), k, rng)]
        stage, basis = 1, "fallback: k-means on image geometry (embeddings not computed yet)"
    reasons = {
        i: {"stage": stage, "basis": basis, "cluster": n, "checkpoint_version": version if stage == 2 else None,
            "uncertainty": infos[i].get("uncertainty") if stage == 2 else None}
        for n, i in enumerate(picks)
    }
    return RoundPlan(stage, basis, picks, reasons)
