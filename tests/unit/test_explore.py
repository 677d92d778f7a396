"""The rule that picks a default from exploration rows (benchmarks.explore.pick), on hand-made rows."""

import pytest

from benchmarks.explore import lesion_auroc, overlap_name, pick, table


def row(name, seed, per_case, global_=0.0, epoch=60, final=True, method="slpt", **overrides):
    return {"name": f"{name}@{seed}", "method": method, "overrides": {**overrides, "seed": seed}, "epoch": epoch,
            "final": final, "tumour_dice_per_case": per_case, "tumour_dice_global": global_}


def test_pick_averages_the_seeds_every_variant_finished():
    rows = [row("a", 0, 0.30), row("a", 1, 0.00),  # mean 0.15
            row("b", 0, 0.20, hidden_ratio=1.0), row("b", 1, 0.20, hidden_ratio=1.0)]  # mean 0.20
    chosen = pick(rows)
    assert chosen["name"] == "b" and chosen["seeds"] == [0, 1]
    assert chosen["overrides"] == {"hidden_ratio": 1.0, "epochs": 60}  # the seed is not a setting


def test_pick_ignores_full_finetuning_unfinished_runs_and_missing_seed_0():
    rows = [row("slow", 0, 0.90, epoch=20, final=False), row("ft", 0, 0.99, method="ft"),
            row("late", 1, 0.95), row("a", 0, 0.10), row("a", 1, 0.10)]
    chosen = pick(rows)
    assert chosen["name"] == "a" and chosen["seeds"] == [0, 1]


def test_pick_uses_global_dice_to_break_ties_and_refuses_an_empty_table():
    assert pick([row("a", 0, 0.1, 0.2), row("b", 0, 0.1, 0.3)])["name"] == "b"
    with pytest.raises(ValueError, match="seed 0"):
        pick([row("ft", 0, 0.5, method="ft")])


def test_table_counts_tumour_cases_found_and_names_the_pick():
    cases = [{"true": 10, "overlap": 3}, {"true": 10, "overlap": 0}, {"true": 0, "overlap": 0}]
    rows = [dict(row("a", 0, 0.25, 0.5), trainable=1234, cases=cases)]
    text = table(rows)
    assert "| a@0 (slpt) | 60 | 1,234 | 0.2500 | 0.5000 | 1 of 2 | not recorded |" in text
    assert "**a**" in text


def test_pu_auroc_ranks_lesion_scans_against_tumour_free_ones():
    cases = [{"true": 10, "overlap": 1, "pu": 0.3}, {"true": 5, "overlap": 0, "pu": 0.1},
             {"true": 0, "overlap": 0, "pu": 0.2}, {"true": 0, "overlap": 0, "pu": 0.0}]
    assert lesion_auroc(cases) == 0.75  # 3 of the 4 (lesion, tumour-free) pairs ordered right
    assert lesion_auroc(cases[:2]) is None  # no tumour-free scan to rank against
    assert lesion_auroc([{"true": 1}, {"true": 0}]) is None  # rows written before PU was recorded
    rows = [dict(row("a", 0, 0.25, 0.5), trainable=1, cases=cases)]
    assert "| 1 of 2 | 0.75 |" in table(rows)


def test_ablations_without_two_prompt_sets_are_never_picked():
    rows = [row("a", 0, 0.30), row("no-prompts", 0, 0.90, stages=[], num_prompts=1), row("k1", 0, 0.80, num_prompts=1)]
    assert pick(rows)["name"] == "a"


def test_overlap_rows_keep_their_seed_suffix_for_the_pick():
    assert overlap_name("default", 0.125) == "default sw0.125"
    assert overlap_name("default@1", 0.0) == "default sw0@1"
    assert overlap_name("default@1", 0.25).split("@")[0] == overlap_name("default", 0.25)
