"""TESLA's round policy: which stage a new round is in, which scans it picks, and why.

Pure: it reads per-scan scoring results as plain data and returns the round; the strategy adapter
gathers those results from its score cache and stores what comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from apps.slpt.active.selection import diversity_select, next_select, uncertain_diverse_select

STAGE_2 = "prompt uncertainty, most uncertain per k-means cluster of backbone embeddings"
STAGE_1 = "k-means on backbone embeddings, scan nearest each centroid"
GEOMETRY = "fallback: k-means on image geometry (embeddings not computed yet)"


@dataclass
class RoundPlan:
    """A new round: its stage, its picks in serving order, and each pick's reason."""

    stage: int
    basis: str
    picks: list[str]
    reasons: dict[str, dict]


@dataclass
class _Basis:
    """The scans one criterion can rank, with what it ranks them by."""

    stage: int
    basis: str
    ids: list[str]
    features: np.ndarray  # [N, D]
    scores: np.ndarray | None  # [N] prompt-based uncertainty (stage 2 only)


def _bases(candidates: Sequence[str], infos: Mapping[str, dict], version: int | None,
           geometry: Callable[[str], Sequence[float]]) -> Iterator[_Basis]:
    """The criteria, best first: stage 2 over scans scored by ``version``, stage 1 over embedded scans,
    image geometry over all. Each is yielded only if it covers some scan; geometry is read only when reached."""
    embedded = [i for i in candidates if infos.get(i, {}).get("embedding")]
    scored = [i for i in embedded if version is not None and infos[i].get("checkpoint_version") == version]
    if scored:
        yield _Basis(2, STAGE_2, scored, np.array([infos[i]["embedding"] for i in scored]),
                     np.array([infos[i]["uncertainty"] for i in scored]))
    if embedded:
        yield _Basis(1, STAGE_1, embedded, np.array([infos[i]["embedding"] for i in embedded]), None)
    if candidates:
        yield _Basis(1, GEOMETRY, list(candidates), np.array([geometry(i) for i in candidates]), None)


def _reason(basis: _Basis, image_id: str, cluster: int, infos: Mapping[str, dict], version: int | None,
            overflow: bool) -> dict:
    stage_2 = basis.stage == 2
    return {"stage": basis.stage, "basis": basis.basis, "cluster": cluster,
            "checkpoint_version": version if stage_2 else None,
            "uncertainty": infos[image_id].get("uncertainty") if stage_2 else None, "overflow": overflow}


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
    basis = next(_bases(candidates, infos, version, geometry))
    if basis.scores is not None:
        picks = [basis.ids[j] for j in uncertain_diverse_select(basis.features, basis.scores, k, rng)]
    else:
        picks = [basis.ids[j] for j in diversity_select(basis.features, k, rng)]
    reasons = {i: _reason(basis, i, n, infos, version, overflow=False) for n, i in enumerate(picks)}
    return RoundPlan(basis.stage, basis.basis, picks, reasons)


def extend_round(
    candidates: Sequence[str],
    taken: Sequence[str],
    infos: Mapping[str, dict],
    version: int | None,
    rng: np.random.Generator,
    geometry: Callable[[str], Sequence[float]],
) -> tuple[str, dict] | None:
    """One more scan for a round whose every unlabelled scan is taken, by the best criterion that still
    has a scan outside the round (:func:`~apps.slpt.active.selection.next_select`).

    Args:
        candidates: unlabelled scan ids, the round's own included.
        taken: the round's scans (those not in ``candidates`` are ignored).
        infos, version, rng, geometry: as for :func:`plan_round`.

    Returns:
        ``(id, reason)`` with ``reason["overflow"]`` set, or ``None`` when every candidate is taken.
    """
    taken = set(taken)
    if all(i in taken for i in candidates):
        return None
    for basis in _bases(candidates, infos, version, geometry):
        is_taken = np.array([i in taken for i in basis.ids])
        if is_taken.all():
            continue  # every scan this criterion ranks is in the round: a weaker one may rank the rest
        pick = basis.ids[next_select(basis.features, is_taken, rng, basis.scores)]
        return pick, _reason(basis, pick, int(is_taken.sum()), infos, version, overflow=True)
    return None
