"""PEFT-style invariants of prompt injection on a tiny SegResNet."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SegResNet

from apps.slpt.config import SEGRESNET_STAGES, SLPTConfig
from apps.slpt.model.prompts import (
    IMAGE,
    PromptedSegmenter,
    StageTap,
    TaskHead,
    count_parameters,
    format_parameter_report,
    parameter_report,
    resolve_stages,
    split_prompts,
    stage_channels,
)


def segresnet(init_filters=8, out_channels=8):
    torch.manual_seed(0)
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=out_channels, init_filters=init_filters,
                     blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)).eval()


def prompted(net=None, stages=SEGRESNET_STAGES, k=3, **kw):
    """The app's default prompt architecture on ``net``, with ``kw`` overriding it."""
    cfg = SLPTConfig()
    kw = {"hidden_ratio": cfg.hidden_ratio, "head_channels": cfg.head_channels, **kw}
    return PromptedSegmenter(net or segresnet(), stages, cfg.head_stages, num_classes=3, num_prompts=k, **kw)


def _perturb_updaters(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "to_feature" in name:
                p.normal_(0, 0.1)


@pytest.mark.parametrize("k", [1, 3])
def test_untrained_prompts_reproduce_the_frozen_network(k):
    net = segresnet()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        frozen = net(x)
    model = prompted(net, k=k)  # every stage prompted
    torch.testing.assert_close(model.backbone_output(x), frozen, rtol=0, atol=1e-6)
    _perturb_updaters(model)  # sanity: the comparison above can fail
    assert not torch.allclose(model.backbone_output(x), frozen, atol=1e-3)


def test_backbone_state_dict_keys_are_unchanged_and_hooks_come_off():
    net = segresnet()
    keys = list(net.state_dict())
    model = prompted(net)
    assert [k[len("backbone."):] for k in model.state_dict() if k.startswith("backbone.")] == keys
    x = torch.randn(1, 1, 16, 16, 16)
    _perturb_updaters(model)
    model.remove_hooks()
    with torch.no_grad():
        torch.testing.assert_close(net(x), segresnet()(x))


def test_unknown_stage_lists_the_valid_names():
    with pytest.raises(ValueError,
                       match=r"unknown backbone stage\(s\) \['down_layers.9'\].*down_layers.3.*up_layers.2"):
        prompted(stages=("down_layers.9",))


def test_only_prompt_parts_change_during_training():
    model = prompted()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    assert not model.backbone.training
    for _ in range(3):
        loss = model(torch.randn(1, 1, 32, 32, 32)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))  # bit-identical
    assert any(k.startswith("prompts.") for k in changed)
    assert any(k.startswith("updaters.") for k in changed)
    assert any(k.startswith("head.") for k in changed)
    assert set(model.trainable_state_dict()) == {k for k in before if not k.startswith("backbone.")}


def test_output_layout_and_prompt_sets_differ():
    model = prompted(k=3)
    _perturb_updaters(model)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32, 32))
    assert out.shape == (2, 9, 32, 32, 32)
    per_prompt = split_prompts(out, 3)
    assert per_prompt.shape == (3, 2, 3, 32, 32, 32)
    assert not torch.allclose(per_prompt[0], per_prompt[1])  # different initialisations


def test_unshared_updaters_hold_k_copies():
    shared, separate = prompted(k=3), prompted(k=3, share_updaters=False)
    assert count_parameters(separate)[0] > count_parameters(shared)[0]
    with torch.no_grad():
        assert separate(torch.randn(1, 1, 16, 16, 16)).shape == (1, 9, 16, 16, 16)


@pytest.mark.parametrize(
    "init_filters, out_channels",
    [(8, 8),  # our default backbone
     (32, 105)],  # wholeBody_ct_segmentation's SegResNet
)
def test_trainable_parameters_stay_under_six_percent_of_the_backbone(init_filters, out_channels):
    model = prompted(segresnet(init_filters, out_channels))
    report = parameter_report(model)
    assert report["trainable"] == count_parameters(model)[0] > 0
    assert report["backbone"] == sum(p.numel() for p in model.backbone.parameters())
    assert report["trainable_percent_of_backbone"] <= 6.0
    assert format_parameter_report(report).startswith(f"trainable params: {report['trainable']:,} || all params:")


def test_count_parameters_counts_requires_grad():
    layer = torch.nn.Linear(3, 2)  # 8 parameters
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == (6, 8)


def test_task_head_reads_every_head_stage_and_sees_the_prompted_feature():
    model = prompted(stages=("down_layers.0", "up_layers.0"), k=1)  # down_layers.0 is also a head stage
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        before = model(x)
        _perturb_updaters(model)  # changes the prompted down_layers.0 output the head reads
        assert not torch.allclose(model(x), before, atol=1e-4)


def test_task_head_brings_coarser_features_onto_the_first_stage_grid():
    head = TaskHead(in_channels=5, num_classes=3)
    logits = head([torch.randn(2, 3, 16, 16, 16), torch.randn(2, 2, 8, 8, 8)])
    assert logits.shape == (2, 3, 16, 16, 16)


def test_the_image_head_stage_is_the_network_input_itself():
    net = segresnet()
    tap = StageTap(resolve_stages(net, [IMAGE, "down_layers.0"]))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        net(x)
    assert tap.outputs[IMAGE] is x
    assert stage_channels(net, [IMAGE, "down_layers.0"]) == {IMAGE: 1, "down_layers.0": 8}


def test_a_head_reading_the_image_gets_one_more_input_channel():
    with_image = PromptedSegmenter(segresnet(), SEGRESNET_STAGES, ("up_layers.2", IMAGE), num_classes=3)
    without = PromptedSegmenter(segresnet(), SEGRESNET_STAGES, ("up_layers.2",), num_classes=3)
    assert with_image.head.layers[0].in_channels == without.head.layers[0].in_channels + 1
    assert with_image(torch.randn(2, 1, 16, 16, 16)).shape == (2, 9, 16, 16, 16)


def test_the_image_cannot_be_prompted():
    with pytest.raises(ValueError, match="cannot be prompted"):
        PromptedSegmenter(segresnet(), (IMAGE, "down_layers.1"), ("up_layers.2",), num_classes=3)


@pytest.mark.parametrize("layers, reach", [(1, 1), (2, 3), (3, 7)])
def test_each_head_layer_doubles_its_dilation_and_widens_what_a_voxel_sees(layers, reach):
    torch.manual_seed(0)
    head = TaskHead(in_channels=2, num_classes=3, hidden_channels=8, layers=layers).eval()
    x = torch.randn(1, 2, 33, 33, 33)
    assert head([x]).shape == (1, 3, 33, 33, 33)

    def centre_change(offset: int) -> float:
        y = x.clone()
        y[0, :, 16 + offset, 16, 16] += 10.0
        with torch.no_grad():
            return float((head([x]) - head([y]))[0, :, 16, 16, 16].abs().max())

    # GroupNorm couples every voxel faintly (a voxel far outside the reach shows that level); inside the
    # reach of the 3x3x3 convs with dilations 1, 2, 4, ... the change is an order of magnitude larger.
    coupling = centre_change(15)
    assert centre_change(reach) > 10 * coupling
    assert centre_change(reach + 1) < 5 * coupling
