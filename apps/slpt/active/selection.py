"""Which scans to label next: TESLA's two stages and the baselines, as pure functions.

Every function takes arrays and a ``numpy.random.Generator`` and returns indices into the unlabelled
pool, best first. No datastore, no I/O, no global RNG (the shape of Baal's heuristics).

TESLA (tandem selective labelling):

* stage 1, before any label: k-means on frozen-backbone scan embeddings, and the scan nearest each
  centroid (:func:`diversity_select`);
* stage 2, after prompt tuning: the most prompt-uncertain scan of each k-means cluster, so one round never
  spends its budget on near-duplicates (:func:`uncertain_diverse_select`);
* one more scan for a round whose scans are all taken, by the same criterion (:func:`next_select`).
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans


def _check(features: np.ndarray, k: int) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {features.shape}")
    if not 1 <= k:
        raise ValueError(f"k must be >= 1, got {k}")
    return features


def _kmeans(features: np.ndarray, k: int, rng: np.random.Generator) -> KMeans:
    # One k-means++ run (scikit-learn's own default, n_init="auto"): with ten restarts, stage 2 over 10,000
    # embeddings missed a 5-second target on 2 cores, for a partition that only groups near-duplicates.
    k = min(k, len(features))
    return KMeans(n_clusters=k, n_init="auto", random_state=int(rng.integers(2**31))).fit(_standardise(features))


def _standardise(features: np.ndarray) -> np.ndarray:
    # Embedding dimensions differ in scale by orders of magnitude; k-means should not care.
    std = features.std(0)
    return (features - features.mean(0)) / np.where(std > 0, std, 1.0)


def diversity_select(features: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """Stage 1: k-means with ``k`` clusters, then the member nearest each centroid.

    Args:
        features: ``[N, D]`` scan embeddings.

    Returns:
        ``min(k, N)`` distinct indices, ordered by cluster size (largest cluster first).
    """
    features = _check(features, k)
    km = _kmeans(features, k, rng)
    z = _standardise(features)
    picks = []
    for c in np.argsort(-np.bincount(km.labels_, minlength=km.n_clusters), kind="stable"):
        members = np.flatnonzero(km.labels_ == c)
        if len(members):
            d = np.linalg.norm(z[members] - km.cluster_centers_[c], axis=1)
            picks.append(int(members[np.argmin(d)]))
    return picks


def uncertain_diverse_select(
    features: np.ndarray, scores: np.ndarray, k: int, rng: np.random.Generator
) -> list[int]:
    """Stage 2: k-means with ``k`` clusters, then the most uncertain member of each cluster.

    Args:
        features: ``[N, D]`` scan embeddings.
        scores: ``[N]`` prompt-based uncertainty (higher = more informative).

    Returns:
        ``min(k, N)`` distinct indices, most uncertain first.
    """
    features = _check(features, k)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(features),):
        raise ValueError(f"scores must be [N={len(features)}], got shape {scores.shape}")
    km = _kmeans(features, k, rng)
    picks = [int(members[np.argmax(scores[members])])
             for c in range(km.n_clusters) if len(members := np.flatnonzero(km.labels_ == c))]
    return sorted(picks, key=lambda i: -scores[i])


def next_select(
    features: np.ndarray, taken: np.ndarray, rng: np.random.Generator, scores: np.ndarray | None = None
) -> int:
    """One more pick, diverse from the ``taken`` ones, by the criterion that chose them.

    k-means with one cluster more than there are taken scans leaves at least one cluster without a taken
    scan; the pick comes from such a cluster: its most uncertain member over all of them (stage 2, with
    ``scores``), or the member nearest the centroid of the largest one (stage 1). A round that needs more
    scans than it was planned with grows this way without taking near-duplicates of its own scans.

    Args:
        features: ``[N, D]`` scan embeddings (or header features).
        taken: ``[N]`` bool, the scans the round already holds.
        scores: ``[N]`` prompt-based uncertainty, or ``None`` for stage 1.

    Returns:
        The index of a scan that is not taken.
    """
    features = _check(features, 1)
    taken = np.asarray(taken, dtype=bool)
    if taken.shape != (len(features),) or taken.all():
        raise ValueError(f"taken must be [N={len(features)}] with at least one scan free, got {taken.shape}")
    free = np.flatnonzero(~taken)
    labels = _kmeans(features, int(taken.sum()) + 1, rng).labels_
    open_clusters = np.setdiff1d(labels[free], labels[taken])
    if not len(open_clusters):  # identical features can leave every cluster holding a taken scan
        open_clusters = np.unique(labels[free])
    candidates = free[np.isin(labels[free], open_clusters)]
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        return int(candidates[np.argmax(scores[candidates])])
    sizes = np.bincount(labels)
    largest = open_clusters[np.argmax(sizes[open_clusters])]
    members = candidates[labels[candidates] == largest]
    z = _standardise(features)
    return int(members[np.argmin(np.linalg.norm(z[members] - z[members].mean(0), axis=1))])


def random_select(n: int, k: int, rng: np.random.Generator) -> list[int]:
    """Baseline: ``min(k, n)`` indices uniformly without replacement."""
    return [int(i) for i in rng.permutation(n)[:k]]


def foreground_random_select(has_foreground, k: int, rng: np.random.Generator) -> list[int]:
    """Baseline (nnActive's foreground-aware random): ``min(k, n)`` indices uniformly among the scans whose
    organ mask is non-empty, topped up uniformly from the others only when those run out."""
    has_foreground = np.asarray(has_foreground, dtype=bool)
    first = rng.permutation(np.flatnonzero(has_foreground))
    rest = rng.permutation(np.flatnonzero(~has_foreground))
    return [int(i) for i in np.concatenate([first, rest])[:k]]


def top_select(scores: np.ndarray, k: int) -> list[int]:
    """Baseline: the ``k`` highest scores (e.g. entropy, MC-dropout variance), ties by index."""
    scores = np.asarray(scores, dtype=np.float64)
    return [int(i) for i in np.lexsort((np.arange(len(scores)), -scores))[:k]]


def coreset_select(features: np.ndarray, labelled: np.ndarray, k: int) -> list[int]:
    """Baseline (Sener & Savarese 2018): k-center greedy, each pick the farthest from all chosen so far.

    Args:
        features: ``[N, D]`` embeddings of the unlabelled pool.
        labelled: ``[M, D]`` embeddings of scans already labelled (may be empty).
    """
    z = _check(features, k)
    labelled = np.asarray(labelled, dtype=np.float64).reshape(-1, z.shape[1])
    if len(labelled):
        nearest = np.min(np.linalg.norm(z[:, None] - labelled[None], axis=2), axis=1)
    else:  # nothing labelled yet: the pool mean stands in for the labelled set
        nearest = np.linalg.norm(z - z.mean(0), axis=1)
    picks: list[int] = []
    for _ in range(min(k, len(z))):
        i = int(np.argmax(nearest))
        picks.append(i)
        nearest = np.minimum(nearest, np.linalg.norm(z - z[i], axis=1))
        nearest[picks] = -np.inf
    return picks
