"""TESLA's labelling rounds and per-annotator leases, as a plain, JSON-serialisable state machine.

A round is a ranked queue of scans chosen together (stage 1: diversity; stage 2: uncertainty +
diversity). Next Sample serves the queue in rank order; a scan handed to one annotator is leased to them
until the lease expires or the scan is labelled, and nobody else gets it meanwhile. When every scan of the
round is labelled, the next round can be chosen. The caller persists the state (atomically) and supplies
the clock, so everything here is deterministic and testable.
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
                checkpoint_version: int | None, now: float) -> None:
    """Replace the finished round's queue with ``picks`` (best first)."""
    if state.queue:
        state.history.append({"round": state.round, "stage": state.stage, "queue": state.queue,
                              "checkpoint_version": state.checkpoint_version, "ended": now})
    state.round += 1
    state.stage = stage
    state.queue = list(picks)
    state.reasons = {i: reasons.get(i, {}) for i in picks}
    state.selected_total += len(picks)
    state.checkpoint_version = checkpoint_version
    state.leases = {}


def serve(state: RoundState, client: str, labelled: set[str], now: float, lease_seconds: float) -> str | None:
    """The scan for ``client``: their own live lease first, else the best free scan of the round.

    Returns ``None`` when every unlabelled scan of the round is leased to someone else.
    """
    # Leases end when they expire or the scan is labelled.
    state.leases = {i: lease for i, lease in state.leases.items() if lease["expires"] > now and i not in labelled}
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
