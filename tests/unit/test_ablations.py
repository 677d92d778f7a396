"""The benchmark's model variants: prompts without FPU, from-scratch training, the ensemble-mean view."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SegResNet

from apps.slpt.active.uncertainty import dropout_enabled, ensemble
from apps.slpt.model.prompts import FeatureAwarePromptUpdater, PromptedSegmenter, count_parameters, liver_margin
from benchmarks.ablations import EnsembleMean, PlainPromptUpdater, reinitialise, without_fpu


def segresnet(dropout=None):
    torch.manual_seed(0)
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=8, init_filters=8, blocks_down=(1, 2, 2, 4),
                     blocks_up=(1, 1, 1), dropout_prob=dropout).eval()


def slpt(net, k=3):
    return PromptedSegmenter(net, organ_channel=1, num_prompts=k)


def test_plain_prompts_have_no_feature_aware_updater_and_start_as_a_no_op():
    net = segresnet()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        frozen = net(x)
    model = without_fpu(slpt(net))
    assert not any(isinstance(m, FeatureAwarePromptUpdater) for m in model.modules())
    assert sum(isinstance(m, PlainPromptUpdater) for m in model.modules()) == len(model.stages)
    untrained = model.tumour_log_odds(x)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "to_feature" in name:
                p.normal_(0, 0.1)
            if "head.out.weight" in name:
                p.normal_(0, 0.1)  # so that the features reach the tumour log-odds
    torch.testing.assert_close(model.organ_network(x), frozen, rtol=0, atol=0)  # the organ stays the backbone's
    assert not torch.allclose(model.tumour_log_odds(x), untrained, atol=1e-3)  # the prompts do reach the features


def test_plain_prompts_train_fewer_parameters_than_slpt_and_never_the_backbone():
    model = without_fpu(slpt(segresnet()))
    assert count_parameters(model)[0] < count_parameters(slpt(segresnet()))[0]
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert model(torch.randn(1, 1, 32, 32, 32), torch.zeros(1, 1, 32, 32, 32)).shape == (1, 9, 32, 32, 32)


def test_reinitialise_draws_new_seeded_weights_and_leaves_the_original_alone():
    net = segresnet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a, b, c = reinitialise(net, 1), reinitialise(net, 1), reinitialise(net, 2)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    weights = [k for k in before if k.endswith("weight") and before[k].dim() > 1]
    assert all(not torch.equal(a.state_dict()[k], before[k]) for k in weights)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in weights)
    assert any(not torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in weights)


@pytest.mark.parametrize("k", [1, 3])
def test_ensemble_mean_softmax_is_the_prompt_ensemble_and_mc_dropout_reaches_the_backbone(k):
    model = slpt(segresnet(dropout=0.5), k).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    wrapped = EnsembleMean(model).eval()
    with torch.no_grad():
        margin = liver_margin(model.organ_network(x), model.organ_channel)
        torch.testing.assert_close(wrapped(x).softmax(1), ensemble(model(x, margin), k)[0], rtol=0, atol=1e-5)
        with dropout_enabled(wrapped):
            torch.manual_seed(0)
            first = wrapped(x)
            second = wrapped(x)
    assert not torch.allclose(first, second)
    assert not any(m.training for m in wrapped.modules())  # modes restored
