"""The served label keeps one liver: stray liver or tumour outside its largest connected region goes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from apps.slpt.inference import _ONE_LIVER, foreground_box, task_label


def probabilities(label: torch.Tensor) -> torch.Tensor:
    return F.one_hot(label, 3).permute(3, 0, 1, 2).float()


def test_tumour_inside_the_liver_stays_and_strays_outside_it_go():
    label = torch.zeros(20, 20, 20, dtype=torch.long)
    label[2:12, 2:12, 2:12] = 1        # the liver
    label[5:8, 5:8, 5:8] = 2           # a lesion inside it
    label[11:14, 11:14, 11:14] = 2     # a lesion on the liver's edge, touching it: still this liver's
    label[16:19, 2:5, 2:5] = 2         # a "tumour" on its own, away from the liver
    label[2:4, 16:19, 16:19] = 1       # a second, smaller "liver" piece

    result = task_label(probabilities(label))

    expected = label.clone()
    expected[16:19, 2:5, 2:5] = 0
    expected[2:4, 16:19, 16:19] = 0
    assert torch.equal(result, expected)


def test_no_liver_means_an_empty_label():
    assert not task_label(probabilities(torch.zeros(8, 8, 8, dtype=torch.long))).any()


def test_a_liver_in_a_corner_of_a_large_scan_gets_the_whole_scans_answer():
    label = torch.zeros(64, 48, 40, dtype=torch.long)
    label[40:60, 30:44, 20:36] = 1     # the liver, far from the origin
    label[45:50, 33:38, 25:30] = 2     # its lesion
    label[41:43, 2:5, 2:5] = 1         # a stray piece, inside the scan but outside the liver's box
    expected = torch.as_tensor(_ONE_LIVER(label[None]))[0].long()  # connected regions over the whole scan
    assert torch.equal(task_label(probabilities(label)), expected)
    assert expected[41:43, 2:5, 2:5].sum() == 0


def test_foreground_box_is_tight_and_grows_within_the_array():
    mask = torch.zeros(10, 12, 14, dtype=torch.bool)
    mask[3, 4:6, 13] = True
    assert foreground_box(mask) == (slice(3, 4), slice(4, 6), slice(13, 14))
    assert foreground_box(mask, margin=2) == (slice(1, 6), slice(2, 8), slice(11, 14))
    assert foreground_box(torch.zeros(4, 4, 4, dtype=torch.bool)) is None
