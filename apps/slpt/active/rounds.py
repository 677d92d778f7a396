"""TESLA's labelling rounds and per-annotator leases, as a plain, JSON-serialisable state machine.

A round is a ranked queue of scans chosen together (stage 1: diversity; stage 2: uncertainty +
diversity). Next Sample serves the queue in rank order; a scan handed to one annotator is leased to them
until the lease expires or the scan is labelled, and nobody else gets it meanwhile. When every scan of the
round is free of the queue (labelled, or gone from the datastore), the next round can be chosen; when more
annotators ask than the round has free scans, the round grows by one scan each (overflow). Round 0 is the
provisional round before the pool is embedded: it grows one scan per annotator, and round 1 is chosen as
soon as the embeddings exist. The state belongs to one datastore (``datastore``, its location). The caller
persists the state (atomically) and supplies the clock, so everything here is deterministic and testable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RoundState:
    round: int = 0
    stage: int = 0
    queue: list[str] = field(default_factory=list)
    reasons: dict[str, dict[str, Any]] = field(default_factory=dict)
    leases: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {"client", "expires"}
    selected_total: int = 0
    checkpoint_version: int | None = None
    trained_round: int = 0  # the last round whose completion already triggered training
    history: list[dict[str, Any]] = field(default_factory=list)
    datastore: str = ""  # the studies folder or DICOMweb URL the rounds were chosen from
    pool_size: int = 0  # unlabelled scans the current round was chosen from

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def budget_plan(pool_size: int, budget_fraction: float, rounds: int, min_round_size: int = 1) -> tuple[int, int]:
    """``(total budget, round size)``: the paper's 5% of the pool in two rounds by default."""
    budget = max(1, math.ceil(pool_size * budget_fraction))
    return budget, max(min_round_size, math.ceil(budget / max(1, rounds)))


def round_complete(state: RoundState, labelled: set[str]) -> bool:
    return all(i in labelled for i in state.queue)


def training_due(state: RoundState, labelled: set[str], labelled_when_trained: int, every: int) -> bool:
    """Whether new final labels call for prompt training; marks the round so it triggers only once.

    ``every > 0``: after that many new labels since the last training. ``every == 0``: when the current
    round is fully labelled (the paper's label -> prompt-tune -> re-score loop).
    """
    if every:
        return len(labelled) - labelled_when_trained >= every
    if state.queue and round_complete(state, labelled) and state.trained_round < state.round:
        state.trained_round = state.round
        return True
    return False


def start_round(state: RoundState, picks: list[str], reasons: dict[str, dict], stage: int,
                checkpoint_version: int | None, now: float, pool_size: int = 0) -> None:
    """Replace the finished round's queue with ``picks`` (best first).

    Scans of the old round still leased (the provisional round's, when round 1 starts) stay with their
    annotators: they join the new round after its picks, with their old reasons.
    """
    if state.queue:
        state.history.append({"round": state.round, "stage": state.stage, "queue": state.queue,
                              "pool_size": state.pool_size, "checkpoint_version": state.checkpoint_version,
                              "ended": now})
    kept = {i: lease for i, lease in state.leases.items() if lease["expires"] > now and i in state.queue}
    carried = [i for i in state.queue if i in kept and i not in picks]
    state.round += 1
    state.stage = stage
    state.reasons = {**{i: state.reasons.get(i, {}) for i in carried}, **{i: reasons.get(i, {}) for i in picks}}
    state.queue = list(picks) + carried
    state.selected_total += len(picks)
    state.checkpoint_version = checkpoint_version
    state.pool_size = pool_size
    state.leases = kept


def join_round(state: RoundState, image_id: str, reason: dict[str, Any]) -> None:
    """Add one more scan to the current round (an overflow pick, or a provisional one in round 0)."""
    state.queue.append(image_id)
    state.reasons[image_id] = reason
    state.selected_total += 1


def drop_missing(state: RoundState, present: set[str], now: float) -> list[str]:
    """Remove queued scans that are no longer in the datastore, so the round can still complete; the
    history keeps which and why. Returns the dropped ids (empty when nothing changed)."""
    gone = [i for i in state.queue if i not in present]
    if gone:
        state.queue = [i for i in state.queue if i in present]
        for i in gone:
            state.reasons.pop(i, None)
            state.leases.pop(i, None)
        state.history.append({"round": state.round, "dropped": gone, "reason": "no longer in the datastore",
                              "at": now})
    return gone


def release_leases(state: RoundState, labelled: set[str], now: float) -> None:
    """End the leases that expired or whose scan is labelled."""
    state.leases = {i: lease for i, lease in state.leases.items() if lease["expires"] > now and i not in labelled}


def serve(state: RoundState, client: str, labelled: set[str], now: float, lease_seconds: float) -> str | None:
    """The scan for ``client``: their own live lease first, else the best free scan of the round.

    Returns ``None`` when every unlabelled scan of the round is leased to someone else (the caller may then
    let the round grow by :func:`join_round`).
    """
    release_leases(state, labelled, now)
    for i in state.queue:
        lease = state.leases.get(i)
        if lease and lease["client"] == client:
            lease["expires"] = now + lease_seconds  # asking again renews, never hands out a second scan
            return i
    for i in state.queue:
        if i not in labelled and i not in state.leases:
            state.leases[i] = {"client": client, "expires": now + lease_seconds}
            return i
    return None


def queue_view(state: RoundState, labelled: set[str], now: float) -> list[dict[str, Any]]:
    """Read-only view of the round for an annotation lead: rank, status, holder and why each scan is here."""
    rows = []
    for rank, i in enumerate(state.queue, 1):
        lease = state.leases.get(i)
        status = "labelled" if i in labelled else "leased" if lease and lease["expires"] > now else "free"
        rows.append({"id": i, "rank": rank, "status": status,
                     "client": lease["client"] if status == "leased" else None, **state.reasons.get(i, {})})
    return rows
