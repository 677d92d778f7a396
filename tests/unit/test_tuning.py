from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import SegResNet

from apps.slpt.config import SLPTConfig
from apps.slpt.evaluation import evaluate
from apps.slpt.inference import checkpoint_inferer, sliding_window, task_inferer
from apps.slpt.model.build import checkpoint_config
from apps.slpt.model.prompts import PromptedSegmenter, count_parameters
from apps.slpt.training.loop import (
    PatchSampler,
    dvpt_loss,
    fit,
    fit_keeping_best,
    prompt_optimizer,
    task_loss,
    training_split,
)
from benchmarks.baselines import finetune_config


def tiny_net():
    torch.manual_seed(0)
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=4, init_filters=8,
                     blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)).eval()


def tiny_pair(seed):
    """A 32³ 'scan': a bright liver block with a dark tumour inside."""
    g = torch.Generator().manual_seed(seed)
    image = 0.1 * torch.rand(1, 32, 32, 32, generator=g)
    label = torch.zeros(1, 32, 32, 32, dtype=torch.long)
    image[:, 6:26, 6:26, 6:26] += 0.6
    label[:, 6:26, 6:26, 6:26] = 1
    image[:, 12:18, 12:18, 12:18] -= 0.4
    label[:, 12:18, 12:18, 12:18] = 2
    return image, label


CFG = SLPTConfig(stages=("up_layers.0",), epochs=3, iterations_per_epoch=2, patch_size=16,
                 batch_size=1, num_prompts=2, val_interval=1)


def prompted(net=None, **kw):
    return PromptedSegmenter(net or tiny_net(), organ_channel=1, stages=CFG.stages, num_prompts=2, **kw)


def test_dvpt_loss_has_no_diversity_for_one_prompt_and_rewards_it_for_several():
    label = torch.ones(1, 1, 4, 4, 4, dtype=torch.long)
    seg = DiceCELoss(to_onehot_y=True, softmax=True)
    same = torch.zeros(1, 6, 4, 4, 4)
    _, parts = dvpt_loss(same, label, 2, seg, 0.1)
    assert parts["diversity"] == pytest.approx(0.0, abs=1e-7)
    different = same.clone()
    different[:, 1], different[:, 3] = 3.0, -3.0
    total, parts = dvpt_loss(different, label, 2, seg, 0.1)
    assert parts["diversity"] > 0.1 and total.item() == pytest.approx(parts["seg"] - 0.1 * parts["diversity"], rel=1e-5)


def test_fit_without_validation_keeps_every_epoch_and_says_so():
    model = prompted()
    reports, best = [], []
    fit(model, [tiny_pair(0), tiny_pair(1)], [], CFG, sliding_window((32, 32, 32)), on_epoch=reports.append,
        on_best=best.append, log=lambda m: None)
    assert [r.epoch for r in reports] == [1, 2, 3] and all(r.val is None for r in reports)
    assert len(best) == 3


def test_fit_with_validation_reports_dice_and_only_improvements_are_best():
    model = prompted()
    reports, best = [], []
    fit(model, [tiny_pair(0)], [tiny_pair(2)], CFG, sliding_window((32, 32, 32)), on_epoch=reports.append,
        on_best=best.append, log=lambda m: None)
    assert all(0.0 <= r.val["dice_tumor"] <= 1.0 and r.val["cases"] == 1 for r in reports)
    metrics = [r.val["mean_dice"] for r in reports]
    improved = [r.epoch for i, r in enumerate(reports) if metrics[i] > max(metrics[:i], default=-1)]
    assert [r.epoch for r in best] == improved


def test_fit_keeping_best_leaves_the_model_at_its_best_validated_epoch():
    def model():
        return prompted()

    train, val, inferer = [tiny_pair(0)], [tiny_pair(2)], sliding_window((32, 32, 32))
    # The same seeded run twice: once watching every epoch's weights, once keeping the best.
    watched, states = model(), {}
    fit(watched, train, val, CFG, inferer, log=lambda m: None,
        on_epoch=lambda r: states.update({r.epoch: (r.val["mean_dice"], copy.deepcopy(watched.state_dict()))}))
    kept_model = model()
    kept, seconds = fit_keeping_best(kept_model, train, val, CFG, inferer, log=lambda m: None)
    best_epoch = max(states, key=lambda e: (states[e][0], -e))  # the first of equal best scores
    assert kept.epoch == best_epoch and seconds > 0
    assert all(torch.equal(v, states[best_epoch][1][k]) for k, v in kept_model.state_dict().items())


class Stop(Exception):
    pass


def test_a_killed_run_continues_from_its_progress_file_as_if_never_stopped(tmp_path):
    def model():
        return prompted()

    train, val, inferer = [tiny_pair(0), tiny_pair(1)], [tiny_pair(2)], sliding_window((32, 32, 32))
    whole = model()
    whole_kept, _ = fit_keeping_best(whole, train, val, CFG, inferer, log=lambda m: None)

    def stop_after_two(report):
        if report.epoch == 2:
            raise Stop

    progress = tmp_path / "run.progress.pt"
    with pytest.raises(Stop):
        fit(model(), train, val, CFG, inferer, on_epoch=stop_after_two, progress=progress, log=lambda m: None)
    messages = []
    resumed = model()
    kept, seconds = fit_keeping_best(resumed, train, val, CFG, inferer, log=messages.append, progress=progress)
    assert any("continuing after epoch 2/3" in m for m in messages)
    assert sum(m.startswith("epoch ") for m in messages) == 1  # only epoch 3 trained again
    assert kept == dataclasses.replace(whole_kept, seconds=kept.seconds) and seconds > 0
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in resumed.state_dict().items())


def test_training_split_trains_on_everything_or_holds_out_the_apps_fixed_validation_split():
    labelled = {f"img{i}": tiny_pair(i) for i in range(10)}
    cfg = SLPTConfig(seed=3)
    train, val = training_split(labelled, cfg, "last")
    assert len(train) == 10 and val == []  # fit keeps the last epoch when it has nothing to validate on
    train, val = training_split(labelled, cfg, "best")
    assert len(val) == round(cfg.val_fraction * 10) and len(train) + len(val) == 10
    assert not {id(p) for p in train} & {id(p) for p in val}
    again = training_split(labelled, cfg, "best")[1]
    assert [id(p) for p in again] == [id(p) for p in val]  # fixed for a seed
    with pytest.raises(ValueError, match="keep must be 'last' or 'best', not 'first'"):
        training_split(labelled, cfg, "first")


@pytest.mark.parametrize("train_backbone", [False, True])
def test_head_baselines_train_what_they_claim(train_backbone):
    model = PromptedSegmenter(tiny_net(), organ_channel=1, stages=(), num_prompts=1, decoder_rank=0,
                              decoder_shifts=False)
    for p in model.backbone.parameters():
        p.requires_grad_(train_backbone)
    trainable, total = count_parameters(model)
    head = sum(p.numel() for p in model.head.parameters())
    assert trainable == (total if train_backbone else head)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    cfg = SLPTConfig(epochs=1, iterations_per_epoch=2, patch_size=16, batch_size=1, stages=(), num_prompts=1)
    fit(model, [tiny_pair(0)], [], finetune_config(cfg, 1e-2), sliding_window((32, 32, 32)), log=lambda m: None)
    unchanged = all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert unchanged != train_backbone
    assert 0.0 <= evaluate(model, [tiny_pair(3)], sliding_window((32, 32, 32)))["dice_liver"] <= 1.0


def test_the_decoder_deltas_take_their_own_smaller_step():
    optimizer = prompt_optimizer(prompted(), SLPTConfig(learning_rate=1e-2, decoder_learning_rate=1e-3))
    rates = sorted(g["lr"] for g in optimizer.param_groups)
    assert rates == [1e-3, 1e-2]
    small = next(g for g in optimizer.param_groups if g["lr"] == 1e-3)
    assert len(small["params"]) == sum(1 for n, p in prompted().named_parameters()
                                       if p.requires_grad and n.startswith("deltas."))


def test_validation_runs_every_interval_and_after_the_last_epoch():
    model = prompted()
    reports = []
    cfg = SLPTConfig(**{**CFG.to_dict(), "epochs": 5, "iterations_per_epoch": 1, "val_interval": 2})
    fit(model, [tiny_pair(0)], [tiny_pair(2)], cfg, sliding_window((32, 32, 32)), on_epoch=reports.append,
        log=lambda m: None)
    assert [r.epoch for r in reports if r.val] == [2, 4, 5]
    assert not any(r.improved for r in reports if not r.val)


def test_patch_sampler_centres_on_tumour_as_often_as_asked():
    pairs = [tiny_pair(0)]
    margins = [torch.zeros_like(pairs[0][0])]
    never = PatchSampler(pairs, margins, 8, np.random.default_rng(0), tumour_ratio=0.0)
    always = PatchSampler(pairs, margins, 8, np.random.default_rng(0), tumour_ratio=1e6)
    # An 8³ patch centred on the 6³ tumour holds tumour; one centred elsewhere mostly does not.
    assert all((always(1)[2] == 2).any() for _ in range(10))
    assert sum(bool((never(1)[2] == 2).any()) for _ in range(20)) < 10


def test_patches_carry_the_backbones_liver_margin_cut_where_the_image_and_label_are():
    image, label = tiny_pair(0)
    margin = torch.arange(image.numel(), dtype=torch.float32).view_as(image)  # each voxel tells where it is
    x, m, y = PatchSampler([(image, label)], [margin], 8, np.random.default_rng(0))(4)
    for xi, mi, yi in zip(x, m, y):
        where = (margin[0] == mi[0, 0, 0, 0]).nonzero()[0]
        cut = tuple(slice(int(w), int(w) + 8) for w in where)
        assert torch.equal(mi[0], margin[0][cut]) and torch.equal(xi[0], image[0][cut])
        assert torch.equal(yi[0], label[0][cut])


def test_task_loss_weights_tumour_errors_more():
    label = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    label[:, :, 2:6, 2:6, 2:6] = 2
    miss = torch.zeros(2, 3, 8, 8, 8)
    miss[:, 0] = 4.0  # says background everywhere: misses the tumour
    light, heavy = SLPTConfig(tumour_weight=1.0), SLPTConfig(tumour_weight=5.0)
    assert task_loss(heavy)(miss, label) > task_loss(light)(miss, label)


def test_models_trained_by_fit_infer_in_windows_of_their_training_patch_size():
    cfg = SLPTConfig(patch_size=48, sw_overlap=0.5)
    assert task_inferer(cfg).roi_size == (48, 48, 48) and task_inferer(cfg).overlap == 0.5
    # A served checkpoint keeps the window it was trained for, whatever the app's setting is now.
    payload = {"metadata": {"config": SLPTConfig(patch_size=16).to_dict()}}
    assert checkpoint_inferer(payload, cfg).roi_size == (16, 16, 16)
    assert checkpoint_inferer({"metadata": {}}, cfg).roi_size == (48, 48, 48)


def test_a_checkpoint_is_rebuilt_with_its_own_architecture():
    app = SLPTConfig(decoder_rank=8, hidden_ratio=0.5)
    saved = {"metadata": {"config": {"hidden_ratio": 1.0, "stages": ["up_layers.0"], "decoder_rank": 2}}}
    rebuilt = checkpoint_config(saved, app)
    assert rebuilt.stages == ("up_layers.0",) and rebuilt.hidden_ratio == 1.0 and rebuilt.decoder_rank == 2
