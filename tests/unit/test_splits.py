from __future__ import annotations

from apps.slpt.training.splits import describe_split, update_split, val_target


def test_too_few_scans_get_no_validation_and_say_so():
    split = update_split(["a", "b", "c"], {}, val_fraction=0.2, min_val=1, min_train=2)
    assert set(split.values()) == {"train"}
    assert "too few labelled scans to validate (have 3, need 5)" in describe_split(split, 0.2, 1, 2)


def test_split_is_fixed_across_rounds():
    first = update_split([f"s{i}" for i in range(5)], {}, 0.2)
    assert sum(v == "val" for v in first.values()) == val_target(5, 0.2, 1, 2) == 1
    second = update_split([f"s{i}" for i in range(12)], first, 0.2)
    assert all(second[k] == v for k, v in first.items())  # nobody changed sides
    assert sum(v == "val" for v in second.values()) == 2
    assert "10 train / 2 validation" in describe_split(second, 0.2, 1, 2)


def test_order_of_arrival_does_not_matter():
    ids = [f"s{i}" for i in range(10)]
    assert update_split(ids, {}, 0.3) == update_split(list(reversed(ids)), {}, 0.3)
    assert update_split(ids, {}, 0.3, seed=1) != update_split(ids, {}, 0.3, seed=2)
