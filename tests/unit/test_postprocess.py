"""The served label keeps tumour to one liver: a "tumour" outside the largest connected region of liver and
tumour is liver (the organ is the backbone's, untouched), and liver pieces stay."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from apps.slpt.inference import channel_argmax, channel_max, task_label


def probabilities(label: torch.Tensor) -> torch.Tensor:
    return F.one_hot(label, 3).permute(3, 0, 1, 2).float()


def test_tumour_inside_the_liver_stays_and_strays_outside_it_are_liver():
    label = torch.zeros(20, 20, 20, dtype=torch.long)
    label[2:12, 2:12, 2:12] = 1        # the liver
    label[5:8, 5:8, 5:8] = 2           # a lesion inside it
    label[11:14, 11:14, 11:14] = 2     # a lesion on the liver's edge, touching it: still this liver's
    label[16:19, 2:5, 2:5] = 2         # a "tumour" on its own, away from the liver
    label[2:4, 16:19, 16:19] = 1       # a second, smaller "liver" piece

    result = task_label(probabilities(label))

    expected = label.clone()
    expected[16:19, 2:5, 2:5] = 1  # where the backbone said liver, the organ stays liver
    assert torch.equal(result, expected)


def test_no_liver_means_an_empty_label():
    assert not task_label(probabilities(torch.zeros(8, 8, 8, dtype=torch.long))).any()


def test_channel_argmax_is_torchs_argmax_ties_included():
    probs = torch.rand(3, 9, 8, 7)
    probs[:, 0] = 0.5  # a tie everywhere on one slab: the first channel wins, as in torch.argmax
    probs[1:, 1] = probs[0, 1]
    assert torch.equal(channel_argmax(probs), probs.argmax(0))
    values, indices = channel_max(probs)
    assert torch.equal(values, probs.max(0).values) and torch.equal(indices, probs.max(0).indices)
