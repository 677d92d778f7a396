"""Prompt-based uncertainty on hand-built predictions whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from apps.slpt.active.uncertainty import ensemble, lesion_region, mutual_information, scan_uncertainty


def probs_from(values):
    """``[K, C]`` per-voxel probabilities -> ``[K, 1, C, 1, 1, 1]``."""
    return torch.tensor(values, dtype=torch.float64)[:, None, :, None, None, None]


def test_zero_when_all_prompts_agree_even_if_each_is_unsure():
    assert mutual_information(probs_from([[0.5, 0.5]] * 3)).item() == pytest.approx(0.0, abs=1e-9)
    assert mutual_information(probs_from([[0.99, 0.01]] * 3)).item() == pytest.approx(0.0, abs=1e-9)


def test_disagreement_is_ranked_above_shared_uncertainty():
    disagree = mutual_information(probs_from([[1.0, 0.0], [0.0, 1.0]])).item()
    assert disagree == pytest.approx(math.log(2), rel=1e-6)  # maximal for two prompts, two classes
    partial = mutual_information(probs_from([[0.9, 0.1], [0.6, 0.4]])).item()
    assert 0 < partial < disagree


def test_ensemble_averages_the_k_softmaxes():
    logits = torch.zeros(1, 6, 2, 2, 2)
    logits[:, 0] = 10.0  # prompt 0 says class 0
    logits[:, 4] = 10.0  # prompt 1 says class 1
    mean, pu = ensemble(logits, num_prompts=2)
    assert mean.shape == (1, 3, 2, 2, 2) and pu.shape == (1, 2, 2, 2)
    torch.testing.assert_close(mean[0, :, 0, 0, 0], torch.tensor([0.5, 0.5, 0.0]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        ensemble(torch.zeros(1, 5, 2, 2, 2), num_prompts=2)


def _liver_scan(lesion_pu: float):
    """A 40³ volume: liver block, one small lesion whose prompts disagree with strength ``lesion_pu``."""
    pred = np.zeros((40, 40, 40), np.uint8)
    pred[5:35, 5:35, 5:35] = 1
    pu = np.full(pred.shape, 0.001, np.float32)
    pu[18:21, 18:21, 18:21] = lesion_pu
    return pu, pred


def test_scan_with_a_disagreeing_lesion_scores_higher():
    quiet, noisy = _liver_scan(0.001), _liver_scan(0.6)
    assert scan_uncertainty(*noisy) > 10 * scan_uncertainty(*quiet)


def test_small_lesion_is_not_drowned_by_the_volume():
    pu, pred = _liver_scan(0.6)
    whole_volume_mean = float(pu.mean())
    assert scan_uncertainty(pu, pred) > 20 * whole_volume_mean


def test_predicted_tumour_and_margin_form_the_region():
    pred = np.zeros((9, 9, 9), np.uint8)
    pred[1:8, 1:8, 1:8] = 1
    pred[4, 4, 4] = 2
    region = lesion_region(pred, margin=1)
    assert region.sum() == 7  # the voxel and its 6 face neighbours
    assert not lesion_region(np.zeros_like(pred)).any()
    with pytest.raises(ValueError, match="differ in shape"):
        scan_uncertainty(np.zeros((2, 2, 2)), pred)


def test_mc_dropout_switches_on_dropout_alone_and_restores_modes():
    from monai.networks.nets import SegResNet

    from apps.slpt.active.uncertainty import dropout_enabled, mc_dropout_probabilities

    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=3, init_filters=8, dropout_prob=0.5).eval()
    with dropout_enabled(net):
        modes = {type(m).__name__: m.training for m in net.modules()}
        assert modes["Dropout3d"] is True and modes["GroupNorm"] is False and not net.training
    assert not any(m.training for m in net.modules())

    probs = mc_dropout_probabilities(net, torch.randn(1, 16, 16, 16), lambda x, m: m(x), samples=3)
    assert probs.shape == (3, 1, 3, 16, 16, 16)
    assert not torch.allclose(probs[0], probs[1])  # the samples differ
    assert mutual_information(probs).mean() > 0
    with pytest.raises(ValueError):
        mc_dropout_probabilities(net, torch.randn(1, 16, 16, 16), lambda x, m: m(x), samples=1)


def test_disagreement_outside_the_predicted_liver_does_not_rank_a_scan():
    """TESLA's uncertainty is the lesion's: prompt sets that disagree in the spleen or the body wall say
    nothing about liver tumours, so they must not lift a scan in the ranking (with the whole volume as the
    pool of most uncertain voxels, they would)."""
    prediction = np.zeros((40, 40, 40), np.uint8)
    prediction[5:25, 5:25, 5:25] = 1  # a liver of 8,000 voxels, no tumour predicted
    pu = np.zeros(prediction.shape, np.float32)
    pu[prediction == 1] = np.random.default_rng(0).uniform(0.0, 0.1, int((prediction == 1).sum()))
    elsewhere = pu.copy()
    elsewhere[30:38, 30:38, 30:38] = 0.9  # 512 voxels outside it: most of the volume's top 1%
    assert scan_uncertainty(elsewhere, prediction) == scan_uncertainty(pu, prediction)
