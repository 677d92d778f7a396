"""PEFT-style invariants of the SLPT v2 model on small SegResNets."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SegResNet

from apps.slpt.active.uncertainty import ensemble
from apps.slpt.config import SLPTConfig
from apps.slpt.inference import task_label
from apps.slpt.model.deltas import ParameterDeltas
from apps.slpt.model.prompts import (
    GROUPS,
    PromptedSegmenter,
    count_parameters,
    format_parameter_report,
    parameter_group,
    parameter_report,
    TUMOUR_PRIOR,
    liver_margin,
    split_prompts,
    task_logits,
)

LIVER = 1


def run(model, x):
    """``model``'s task logits on ``x``, against the frozen backbone's liver in the same window."""
    with torch.no_grad():
        margin = liver_margin(model.organ_network(x), model.organ_channel)
    return model(x, margin)


def segresnet(init_filters=8, out_channels=9):
    torch.manual_seed(0)
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=out_channels, init_filters=init_filters,
                     blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), dropout_prob=0.2).eval()


def prompted(net=None, k=3, **kw):
    """The app's default SLPT v2 architecture on ``net``, with ``kw`` overriding it."""
    cfg = SLPTConfig()
    kw = {"stages": cfg.stages, "hidden_ratio": cfg.hidden_ratio, "decoder_rank": cfg.decoder_rank,
          "decoder_shifts": cfg.decoder_shifts, "encoder_stages": cfg.encoder_stages,
          "head_channels": cfg.head_channels, "head_kernel": cfg.head_kernel, **kw}
    return PromptedSegmenter(net or segresnet(), organ_channel=LIVER, num_prompts=k, **kw)


def _train(model, steps=3, size=32):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    torch.manual_seed(1)
    for _ in range(steps):
        x = torch.randn(2, 1, size, size, size)
        logits = split_prompts(run(model, x), model.num_prompts)
        # Push the sets apart and towards tumour, so that every group gets a gradient.
        loss = -logits[..., 2, :, :, :].mean() - sum(logits[k].std() for k in range(model.num_prompts))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("k", [1, 3])
def test_untrained_the_task_is_the_backbones_liver_without_tumour_and_training_moves_only_the_tumour(k):
    net = segresnet()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        frozen = net(x)
    model = prompted(net, k=k)
    with torch.no_grad():
        tau = model.tumour_log_odds(x)
        sets = split_prompts(run(model, x), k)
    assert (tau < TUMOUR_PRIOR / 2).all()  # far below the tumour-vs-liver tie, for every set
    for logits in sets:  # liver exactly where the backbone's argmax is liver, and no tumour anywhere
        served = torch.stack([task_label(probs) for probs in logits.softmax(1)])
        assert torch.equal(served, (frozen.argmax(1) == LIVER).long())
    _train(model)  # sanity: the comparison above can fail
    with torch.no_grad():
        assert not torch.allclose(model.tumour_log_odds(x), tau, atol=1e-3)
        torch.testing.assert_close(model.organ_network(x), frozen, rtol=0, atol=0)  # what the backbone knows


def test_training_changes_only_the_declared_groups_and_leaves_every_frozen_tensor_bit_identical():
    model = prompted()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    _train(model)
    assert all(torch.equal(backbone_before[k], v) for k, v in model.backbone.state_dict().items())
    after = model.trainable_state_dict()
    changed = {parameter_group(k) for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"prompts", "updaters", "norm_bias", "low_rank", "head"}
    assert set(model.state_dict()) == {f"backbone.{k}" for k in backbone_before} | set(before)


@pytest.mark.parametrize("encoder_stages, graph", [(0, [False] * 5), (2, [False, True, True, True, True])])
def test_no_autograd_runs_through_frozen_stages_before_the_first_trainable_one(encoder_stages, graph):
    model = prompted(encoder_stages=encoder_stages).train()
    assert not model.backbone.training
    seen = []
    for module in (model.backbone.convInit, *model.backbone.down_layers):
        module.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    model(torch.randn(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16)).sum().backward()
    assert seen == graph  # no graph, and so no backward pass, through the frozen prefix of the encoder


def test_the_k_sets_share_one_pass_and_part_only_at_the_prompted_stages():
    model = prompted(k=3)
    sizes = {}
    for name in ("down_layers.0", "up_layers.0", "up_layers.1", "up_layers.2"):
        module = model.backbone.get_submodule(name)
        module.register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, o.shape[0]))
    with torch.no_grad():
        out = run(model, torch.randn(2, 1, 32, 32, 32))
    assert out.shape == (2, 9, 32, 32, 32)
    assert sizes == {"down_layers.0": 2, "up_layers.0": 2, "up_layers.1": 2, "up_layers.2": 2}


def test_prompt_stages_must_be_consecutive_decoder_stages():
    with pytest.raises(ValueError, match=r"prompts go in the decoder, one of \['up_layers.0'"):
        prompted(stages=("down_layers.1",))
    with pytest.raises(ValueError, match="consecutive"):
        prompted(stages=("up_layers.0", "up_layers.2"))
    with pytest.raises(ValueError, match="need at least one prompted stage"):
        prompted(stages=())


def test_a_backbone_that_is_not_a_segresnet_is_refused_with_its_name():
    with pytest.raises(ValueError, match="SegResNet.*Conv3d"):
        PromptedSegmenter(torch.nn.Conv3d(1, 2, 1), organ_channel=1)


def test_the_k_predictions_differ_from_the_start_and_after_training():
    model = prompted(k=3)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        untrained = model.tumour_log_odds(x)  # each set's tumour-vs-liver log-odds
    assert (untrained[:, 0] - untrained[:, 1]).abs().max() > 1e-3  # the sets differ from the start
    _train(model, steps=5)
    with torch.no_grad():
        tau = model.tumour_log_odds(x)
    assert (tau[:, 0] - tau[:, 1]).abs().max() > 1e-2 and (tau[:, 1] - tau[:, 2]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "init_filters, out_channels",
    [(8, 9),  # our default backbone
     (32, 105)],  # wholeBody_ct_segmentation's SegResNet
)
def test_parameter_groups_sum_to_the_trainable_total_and_stay_under_six_percent(init_filters, out_channels):
    model = prompted(segresnet(init_filters, out_channels))
    report = parameter_report(model)
    assert report["trainable"] == count_parameters(model)[0] == sum(report["groups"].values()) > 0
    assert set(report["groups"]) == {"prompts", "updaters", "norm_bias", "low_rank", "head"}
    assert set(report["groups"]) <= {g for g, _ in GROUPS}
    assert report["backbone"] == sum(p.numel() for p in model.backbone.parameters())
    assert report["trainable_percent_of_backbone"] <= 6.0
    assert format_parameter_report(report).startswith(f"trainable params: {report['trainable']:,} (prompts ")


def test_bf16_and_fp32_predictions_agree():
    net = segresnet()
    fp32, bf16 = prompted(net, precision="fp32"), prompted(net, precision="bf16")
    _train(fp32)
    bf16.load_state_dict(fp32.state_dict())
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        p32, p16 = (split_prompts(run(m, x), 3).softmax(2) for m in (fp32, bf16))
    assert p16.dtype == torch.float32  # logits come back in fp32 whatever ran inside
    # bf16 keeps 8 bits of mantissa: probabilities agree to a few hundredths, labels almost everywhere.
    assert (p32 - p16).abs().max() < 0.05
    assert (p32.mean(0).argmax(1) == p16.mean(0).argmax(1)).float().mean() > 0.99


def test_the_stitched_scan_composes_the_frozen_backbones_organ_with_the_tumour_in_the_liver_box():
    from apps.slpt.inference import liver_box, sliding_window, stitched_logits

    model = _train(prompted())
    x = torch.randn(1, 1, 64, 64, 32)
    tiles = sliding_window((32, 32, 32), overlap=0.0, batch_voxels=2 * 32**3)
    with torch.no_grad():
        task, organ = stitched_logits(model, x, tiles)
        torch.testing.assert_close(organ, model.backbone(x), rtol=0, atol=0)  # the whole input, as built here
        margin = liver_margin(organ, LIVER)
        box = (..., *liver_box(margin[0] > 0))
        tau = torch.full((1, 3, *x.shape[2:]), TUMOUR_PRIOR)
        tau[box] = tiles(x[box], model.tumour_log_odds)
        torch.testing.assert_close(task, task_logits(margin, tau), rtol=0, atol=0)


def test_the_pointwise_head_is_its_1x1x1_convs():
    from apps.slpt.model.kernels import pointwise

    conv = torch.nn.Conv3d(17, 5, kernel_size=1)
    x = torch.randn(2, 17, 6, 5, 4)
    torch.testing.assert_close(pointwise(conv, x), conv(x), rtol=1e-5, atol=1e-5)


def test_separable_upsampling_is_trilinear_interpolation():
    from apps.slpt.model.kernels import upsample_trilinear

    x = torch.randn(2, 3, 8, 5, 4)
    expected = torch.nn.functional.interpolate(x, size=(32, 17, 9), mode="trilinear", align_corners=False)
    torch.testing.assert_close(upsample_trilinear(x, (32, 17, 9)), expected, rtol=1e-5, atol=1e-5)


def test_the_merged_decoder_upsamples_separably_with_the_same_values():
    from apps.slpt.model.kernels import SeparableUpsample

    up = segresnet().up_samples[0].requires_grad_(False)
    deltas = ParameterDeltas(up, rank=2)
    x = torch.randn(2, up[0].conv.in_channels, 4, 5, 6)
    with torch.no_grad():
        assert any(isinstance(m, SeparableUpsample) for m in deltas.merged().modules())
        assert not any(isinstance(m, SeparableUpsample) for m in up.modules())  # the backbone is untouched
        torch.testing.assert_close(deltas(x), up(x), rtol=1e-5, atol=1e-5)


def test_a_pass_without_autograd_runs_the_merged_module_and_follows_every_update():
    conv = torch.nn.Conv3d(4, 6, 3, padding=1).requires_grad_(False)
    deltas = ParameterDeltas(conv, rank=2)
    optimizer = torch.optim.SGD(deltas.parameters(), lr=0.1)
    x = torch.randn(1, 4, 6, 6, 6)
    for _ in range(2):
        deltas(x).square().mean().backward()  # with autograd: the frozen conv, re-bound to parameter + delta
        optimizer.step()
        with torch.no_grad():
            torch.testing.assert_close(deltas(x), torch.func.functional_call(conv, deltas.shifted_parameters(), x))
    with torch.no_grad():
        merged = deltas.merged()
        assert deltas.merged() is merged  # made once per state of the deltas
        deltas.shift["bias"].add_(1.0)
        assert deltas.merged() is not merged
        torch.testing.assert_close(deltas(x), torch.func.functional_call(conv, deltas.shifted_parameters(), x))


def test_low_rank_deltas_start_at_zero_and_fold_into_the_kernel():
    conv = torch.nn.Conv3d(4, 6, 3, padding=1)
    deltas = ParameterDeltas(conv, rank=2)
    x = torch.randn(1, 4, 8, 8, 8)
    torch.testing.assert_close(deltas(x), conv(x), rtol=0, atol=0)
    with torch.no_grad():
        deltas.lora_b["weight"].normal_()
    merged = conv.weight + deltas.scale["weight"] * (deltas.lora_b["weight"] @ deltas.lora_a["weight"]).view_as(conv.weight)
    torch.testing.assert_close(deltas(x), torch.nn.functional.conv3d(x, merged, conv.bias, padding=1))
    assert set(deltas.shift) == {"bias"} and tuple(deltas.lora_a["weight"].shape) == (2, 4 * 27)


def test_task_logits_give_the_organ_where_its_margin_is_positive_and_make_tau_the_tumour_vs_liver_log_odds():
    organ_logits = torch.randn(2, 5, 4, 4, 4)
    tau = 8 * torch.randn(2, 3, 4, 4, 4)  # far beyond the margins, either way
    margin = liver_margin(organ_logits, organ_channel=2)
    probs = task_logits(margin, tau).view(2, 3, 3, 4, 4, 4).softmax(2)
    organ = organ_logits.argmax(1)[:, None].expand(-1, 3, -1, -1, -1) == 2
    torch.testing.assert_close(probs[:, :, 1] + probs[:, :, 2], margin.sigmoid().expand_as(organ))
    assert torch.equal(probs[:, :, 1] + probs[:, :, 2] > probs[:, :, 0], organ)
    torch.testing.assert_close(probs[:, :, 2] / probs[:, :, 1], tau.exp(), rtol=1e-4, atol=1e-4)


def test_the_served_label_is_the_backbones_organ_whatever_the_tumour_log_odds():
    """A trained head's ``tau`` may be large anywhere, also outside the liver: the label's liver and tumour
    together stay the backbone's liver, voxel for voxel, and tumour is only ever inside it."""
    organ_logits = torch.randn(1, 5, 12, 12, 12)
    organ_logits[:, 2, 3:9, 3:9, 3:9] += 4  # one liver, so that the largest-piece rule leaves tumour alone
    tau = 8 * torch.randn(1, 3, 12, 12, 12)
    margin = liver_margin(organ_logits, organ_channel=2)
    probs, _ = ensemble(task_logits(margin, tau), num_prompts=3)
    label = task_label(probs[0])
    assert torch.equal(label > 0, margin[0, 0] > 0)
    assert (label == 2).any() and not ((label == 2) & (margin[0, 0] <= 0)).any()


def test_count_parameters_counts_requires_grad():
    layer = torch.nn.Linear(3, 2)  # 8 parameters
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == (6, 8)
