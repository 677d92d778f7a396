"""Selection functions on hand-built pools whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from apps.slpt.active.selection import (
    coreset_select,
    diversity_select,
    foreground_random_select,
    next_select,
    random_select,
    top_select,
    uncertain_diverse_select,
)


def three_clusters(rng, per=(10, 6, 3)):
    """Tight blobs at far-apart centres; returns features and each point's cluster."""
    centres = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]])
    feats = np.concatenate([c + 0.5 * rng.standard_normal((n, 2)) for c, n in zip(centres, per)])
    return feats, np.repeat(np.arange(3), per)


def test_kmeans_picks_one_per_cluster_nearest_its_centre():
    feats, cluster = three_clusters(np.random.default_rng(0))
    picks = diversity_select(feats, 3, np.random.default_rng(1))
    assert sorted(cluster[picks]) == [0, 1, 2]
    for i in picks:
        members = feats[cluster == cluster[i]]
        nearest_member_distance = np.min(np.linalg.norm(members - members.mean(0), axis=1))
        assert np.linalg.norm(feats[i] - members.mean(0)) <= nearest_member_distance + 0.3
    assert cluster[picks[0]] == 0  # largest cluster first


def test_uncertainty_with_diversity_never_takes_two_from_one_tight_cluster():
    feats, cluster = three_clusters(np.random.default_rng(0))
    scores = np.where(cluster == 0, 1.0, 0.1)  # cluster 0 is the most uncertain everywhere
    scores[cluster == 0] += np.linspace(0, 0.1, 10)
    picks = uncertain_diverse_select(feats, scores, 3, np.random.default_rng(2))
    assert sorted(cluster[picks]) == [0, 1, 2]
    assert picks[0] == int(np.argmax(scores))  # most uncertain first
    assert top_select(scores, 3) == [9, 8, 7]  # the naive ranking would spend the round on cluster 0


def test_coreset_is_greedy_farthest():
    feats = np.array([[0.0], [1.0], [10.0], [4.0], [7.0]])
    labelled = np.array([[0.0]])
    # farthest from {0}: 10; then farthest from {0, 10}: 4 (distance 4) beats 7 (3) and 1 (1).
    assert coreset_select(feats, labelled, 2) == [2, 3]
    assert coreset_select(feats, np.empty((0, 1)), 1) == [2]  # nothing labelled: farthest from the mean


def test_random_is_seed_stable_and_distinct():
    a = random_select(100, 10, np.random.default_rng(7))
    assert a == random_select(100, 10, np.random.default_rng(7)) and len(set(a)) == 10
    assert a != random_select(100, 10, np.random.default_rng(8))


def test_k_larger_than_pool_returns_the_pool():
    feats = np.random.default_rng(0).standard_normal((3, 4))
    assert sorted(diversity_select(feats, 5, np.random.default_rng(0))) == [0, 1, 2]
    assert sorted(uncertain_diverse_select(feats, np.ones(3), 5, np.random.default_rng(0))) == [0, 1, 2]


def test_next_pick_comes_from_a_cluster_the_taken_scans_do_not_cover():
    feats, cluster = three_clusters(np.random.default_rng(0), per=(10, 6, 0))
    taken = cluster == 0
    taken[1:] = False
    taken[0] = True  # one scan of cluster 0 taken
    scores = np.where(cluster == 0, 1.0, 0.1) + np.arange(len(feats)) * 1e-3
    pick = next_select(feats, taken, np.random.default_rng(0), scores)
    assert cluster[pick] == 1 and pick == int(np.flatnonzero(cluster == 1)[-1])  # most uncertain of cluster 1
    centre_pick = next_select(feats, taken, np.random.default_rng(0))
    z = (feats - feats.mean(0)) / feats.std(0)  # k-means runs on standardised features
    members = z[cluster == 1]
    assert cluster[centre_pick] == 1
    assert np.linalg.norm(z[centre_pick] - members.mean(0)) == np.min(np.linalg.norm(members - members.mean(0), axis=1))


def test_next_pick_on_identical_features_is_any_free_scan_and_refuses_when_none_is_free():
    feats = np.ones((3, 2))
    assert next_select(feats, np.array([True, False, False]), np.random.default_rng(0)) in (1, 2)
    with pytest.raises(ValueError, match="at least one scan free"):
        next_select(feats, np.ones(3, bool), np.random.default_rng(0))


def test_foreground_random_picks_scans_with_an_organ_first_and_tops_up_from_the_rest():
    has = np.array([True, False, True, False, True, False])
    picks = foreground_random_select(has, 2, np.random.default_rng(0))
    assert len(set(picks)) == 2 and has[picks].all()
    picks = foreground_random_select(has, 5, np.random.default_rng(0))
    assert set(picks[:3]) == {0, 2, 4} and len(set(picks)) == 5
    assert foreground_random_select(has, 2, np.random.default_rng(3)) == foreground_random_select(
        has, 2, np.random.default_rng(3))
