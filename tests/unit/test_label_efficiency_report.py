"""TESLA minus a baseline, paired by seed and test case, on hand-built per-case Dice."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.label_efficiency_report import bar_lines, bars, paired_difference, selection_notes


def runs(per_seed_dice: list[list[float]]) -> list[dict]:
    return [{"seed": s, "cases": [{"seed": 900 + n, "dice_tumor": d} for n, d in enumerate(dice)]}
            for s, dice in enumerate(per_seed_dice)]


def test_a_consistent_gain_is_better_and_its_interval_brackets_it():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, size=(3, 40))
    d = paired_difference(runs((base + 0.1).tolist()), runs(base.tolist()))
    assert d["difference"] == pytest.approx(0.1) and d["per_seed"] == pytest.approx([0.1] * 3)
    assert d["low"] == pytest.approx(0.1) and d["high"] == pytest.approx(0.1) and d["better"]


def test_noise_around_zero_is_not_called_better():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.6, size=(3, 40))
    d = paired_difference(runs((base + rng.normal(0, 0.2, size=base.shape)).tolist()), runs(base.tolist()))
    assert d["low"] < 0 < d["high"] and not d["better"]


def test_unpaired_runs_are_refused():
    with pytest.raises(ValueError, match="paired by seed"):
        paired_difference(runs([[0.5, 0.5]]), runs([[0.5, 0.5], [0.5, 0.5]])[1:])
    with pytest.raises(ValueError, match="paired by test case"):
        paired_difference(runs([[0.5, 0.5]]), runs([[0.5, 0.5, 0.5]]))


def test_the_bars_judge_tesla_by_the_interval_not_the_means():
    def strategy(mean):
        return {"rounds": [{"dice_tumor": {"mean": mean}}]}
    full = {"slpt_k3": {"dice_tumor": {"mean": 0.5}}}
    comparisons = {"random": {"difference": 0.02, "per_seed": [0.02], "low": -0.01, "high": 0.05, "better": False},
                   "status_quo": {"difference": 0.1, "per_seed": [0.1], "low": 0.05, "high": 0.15, "better": True}}
    b = bars({"tesla": strategy(0.50), "random": strategy(0.48)}, {}, full, comparisons)
    assert not b["tesla_beats"]["random"]["holds"]  # higher mean, but the interval holds 0
    assert b["tesla_slpt_beats_status_quo"]["holds"]
    text = "\n".join(bar_lines(b, quick=False))
    assert "random 0.4800, difference +0.0200 (95% interval -0.0100 to +0.0500): does NOT hold" in text


def test_the_report_says_which_strategies_picked_alike():
    def strategy(label, per_seed):
        return {"label": label, "selected_seeds": per_seed}
    result = {"pool_size": 4, "pool_with_liver": 4, "strategies": {
        "random": strategy("random", [[1, 2], [3, 4]]),
        "foreground_random": strategy("foreground random", [[2, 1], [3, 4]]),  # the same sets, drawn in another order
        "coreset": strategy("coreset", [[1, 3], [1, 3]]),
        "tesla": strategy("TESLA", [[1, 4], [2, 4]])}}
    notes = selection_notes(result)
    assert notes == [
        "- random and foreground random picked the same scans as each other, seed by seed: their last rows are the "
        "same trainings.",
        "- coreset picked the same scans under every seed (it draws nothing at random): its seeds differ only in "
        "training.",
        "- The backbone finds a liver in 4 of the 4 pool scans, and foreground-aware random draws among those: on "
        "this pool it is uniform random."]
    result["pool_with_liver"] = 3
    assert selection_notes(result)[-1].endswith("draws among those.")
