"""TESLA's round policy on hand-built pools whose right answer is known."""

from __future__ import annotations

import numpy as np

from apps.slpt.active.policy import extend_round, plan_round

# Two tight clusters; in each, the scan at the centroid is the least uncertain one.
EMBEDDINGS = {"a0": [0.0, 0.0], "a1": [-1.0, 0.0], "a2": [1.0, 0.0],
              "b0": [20.0, 20.0], "b1": [20.0, 19.0], "b2": [20.0, 21.0]}
UNCERTAINTY = {"a0": 0.1, "a1": 0.2, "a2": 0.9, "b0": 0.05, "b1": 0.8, "b2": 0.3}
IDS = sorted(EMBEDDINGS)


def infos(version: int | None = 1) -> dict[str, dict]:
    return {i: {"embedding": EMBEDDINGS[i], "uncertainty": UNCERTAINTY[i], "checkpoint_version": version}
            for i in IDS}


def no_geometry(image_id: str):
    raise AssertionError("geometry is read only when nothing is embedded")


def test_stage_two_takes_the_most_uncertain_scan_of_each_cluster_most_uncertain_first():
    plan = plan_round(IDS, infos(), 1, 2, np.random.default_rng(0), no_geometry)
    assert plan.stage == 2 and plan.picks == ["a2", "b1"]
    assert plan.reasons["a2"] == {"stage": 2, "basis": plan.basis, "cluster": 0, "checkpoint_version": 1,
                                  "uncertainty": 0.9, "overflow": False}


def test_stage_one_takes_the_scan_nearest_each_centroid_and_ignores_uncertainty():
    plan = plan_round(IDS, infos(), None, 2, np.random.default_rng(0), no_geometry)
    assert plan.stage == 1 and sorted(plan.picks) == ["a0", "b0"]
    assert all(r["uncertainty"] is None and r["checkpoint_version"] is None for r in plan.reasons.values())


def test_scores_of_an_older_checkpoint_do_not_make_stage_two():
    plan = plan_round(IDS, infos(version=1), 2, 2, np.random.default_rng(0), no_geometry)
    assert plan.stage == 1 and sorted(plan.picks) == ["a0", "b0"]


def test_before_any_embedding_the_round_is_diverse_in_image_geometry():
    geometry = {"a0": [1, 1], "a1": [1, 1.1], "b0": [9, 9], "b1": [9, 9.1]}
    plan = plan_round(sorted(geometry), {}, None, 2, np.random.default_rng(0), geometry.__getitem__)
    assert plan.stage == 1 and "geometry" in plan.basis
    assert {p[0] for p in plan.picks} == {"a", "b"}


def test_a_full_round_grows_by_the_most_uncertain_scan_of_a_cluster_it_does_not_cover():
    # a2 (0.9) is taken; a1 (0.2) is the next most uncertain of its cluster, but b1 (0.8) covers the other.
    grown = extend_round(IDS, ["a2"], infos(), 1, np.random.default_rng(0), no_geometry)
    assert grown[0] == "b1"
    assert grown[1]["overflow"] and grown[1]["stage"] == 2 and grown[1]["uncertainty"] == 0.8


def test_stage_one_grows_by_the_centre_of_the_uncovered_cluster():
    grown = extend_round(IDS, ["a0", "a1"], infos(), None, np.random.default_rng(0), no_geometry)
    assert grown[0] == "b0" and grown[1]["stage"] == 1 and grown[1]["overflow"]


def test_when_every_ranked_scan_is_taken_a_weaker_criterion_ranks_the_rest_and_then_nothing_is_left():
    embedded = {i: {"embedding": EMBEDDINGS[i]} for i in ("a0", "b0")}
    geometry = {"a0": [1.0], "b0": [9.0], "c0": [5.0]}
    grown = extend_round(["a0", "b0", "c0"], ["a0", "b0"], embedded, None, np.random.default_rng(0),
                         geometry.__getitem__)
    assert grown[0] == "c0" and "geometry" in grown[1]["basis"]
    assert extend_round(["a0", "b0"], ["a0", "b0"], embedded, None, np.random.default_rng(0), no_geometry) is None
