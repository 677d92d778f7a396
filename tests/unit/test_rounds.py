from __future__ import annotations

from apps.slpt.active.rounds import (
    RoundState,
    budget_plan,
    drop_missing,
    join_round,
    queue_view,
    round_complete,
    serve,
    start_round,
    training_due,
)


def state_with(queue):
    state = RoundState()
    start_round(state, queue, {i: {"cluster": n} for n, i in enumerate(queue)}, stage=1, checkpoint_version=None, now=0)
    return state


def test_budget_is_five_percent_in_two_rounds():
    assert budget_plan(200, 0.05, 2) == (10, 5)
    assert budget_plan(12, 0.05, 2, min_round_size=2) == (1, 2)


def test_no_scan_goes_to_two_clients_inside_a_lease():
    state = state_with(["a", "b", "c"])
    got = [serve(state, f"client{n}", set(), now=10, lease_seconds=60) for n in range(4)]
    assert got == ["a", "b", "c", None]
    assert serve(state, "client1", set(), now=20, lease_seconds=60) == "b"  # asking again: same scan


def test_expired_or_labelled_leases_free_the_scan():
    state = state_with(["a", "b"])
    assert serve(state, "x", set(), now=0, lease_seconds=60) == "a"
    assert serve(state, "y", set(), now=30, lease_seconds=60) == "b"
    assert serve(state, "z", set(), now=61, lease_seconds=60) == "a"  # x's lease ran out
    assert serve(state, "x", {"a"}, now=62, lease_seconds=60) is None  # a labelled, b still leased to y
    assert serve(state, "w", {"a", "b"}, now=63, lease_seconds=60) is None  # a labelled scan is never served


def test_queue_view_and_state_round_trip():
    state = state_with(["a", "b"])
    serve(state, "x", set(), now=0, lease_seconds=60)
    rows = queue_view(RoundState.from_dict(state.to_dict()), {"b"}, now=1)
    assert ([(r["id"], r["rank"], r["status"], r["client"]) for r in rows]
            == [("a", 1, "leased", "x"), ("b", 2, "labelled", None)])
    assert rows[0]["cluster"] == 0


def test_training_is_due_once_per_completed_round_or_every_n_labels():
    state = state_with(["a", "b"])
    assert not training_due(state, {"a"}, 0, every=0)
    assert training_due(state, {"a", "b"}, 0, every=0)
    assert not training_due(state, {"a", "b"}, 0, every=0)  # once per round
    assert training_due(state, {"a", "b", "c"}, 1, every=2) and not training_due(state, {"a", "b"}, 1, every=2)


def test_a_new_round_archives_the_old_one():
    state = state_with(["a"])
    start_round(state, ["b", "c"], {}, stage=2, checkpoint_version=3, now=5)
    assert state.round == 2 and state.stage == 2 and state.queue == ["b", "c"] and state.selected_total == 3
    assert state.history[0]["queue"] == ["a"] and state.leases == {}


def test_a_scan_that_left_the_datastore_is_dropped_so_the_round_can_complete():
    state = state_with(["a", "gone", "b"])
    assert serve(state, "x", set(), now=0, lease_seconds=60) == "a"
    assert serve(state, "y", set(), now=0, lease_seconds=60) == "gone"
    assert drop_missing(state, {"a", "b"}, now=5) == ["gone"]
    assert state.queue == ["a", "b"] and "gone" not in state.leases and "gone" not in state.reasons
    assert state.history[-1] == {"round": 1, "dropped": ["gone"], "reason": "no longer in the datastore", "at": 5}
    assert round_complete(state, {"a", "b"}) and drop_missing(state, {"a", "b"}, now=6) == []  # recorded once


def test_a_grown_round_serves_its_new_scan_and_counts_it():
    state = state_with(["a"])
    serve(state, "x", set(), now=0, lease_seconds=60)
    assert serve(state, "y", set(), now=0, lease_seconds=60) is None
    join_round(state, "b", {"overflow": True})
    assert serve(state, "y", set(), now=0, lease_seconds=60) == "b"
    assert state.selected_total == 2 and queue_view(state, set(), now=1)[1]["overflow"]


def test_a_new_round_keeps_the_scans_still_leased_from_the_old_one():
    state = RoundState()
    join_round(state, "p", {"provisional": True})
    join_round(state, "q", {"provisional": True})
    serve(state, "x", set(), now=0, lease_seconds=60)  # x holds p; q is free
    start_round(state, ["a", "b"], {}, stage=1, checkpoint_version=None, now=10, pool_size=9)
    assert state.round == 1 and state.queue == ["a", "b", "p"] and state.pool_size == 9
    assert serve(state, "x", set(), now=11, lease_seconds=60) == "p" and state.reasons["p"] == {"provisional": True}
