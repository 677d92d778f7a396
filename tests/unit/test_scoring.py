from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import SegResNet

from monai.inferers import SlidingWindowInferer

from apps.slpt.active.scoring import embed_scan, prompt_uncertainty
from apps.slpt.inference import LIVER_BOX_MARGIN, sliding_window
from apps.slpt.windows import OrganWindows
from apps.slpt.model.prompts import PromptedSegmenter


def tiny_net():
    torch.manual_seed(0)
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=3, init_filters=8,
                     blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)).eval()


def test_embedding_is_pooled_bottleneck_and_content_dependent():
    net = tiny_net()
    image = torch.rand(1, 40, 36, 20)
    emb, organ = embed_scan(net, image, stage="down_layers.3", organ_channel=None)
    assert emb.shape == (3 * 64,) and organ is None  # mean, std in organ, global mean of 64 channels
    again, _ = embed_scan(net, image, stage="down_layers.3", organ_channel=None)
    assert np.array_equal(emb, again)
    other, _ = embed_scan(net, image * 0.5, stage="down_layers.3", organ_channel=None)
    assert not np.allclose(emb, other)
    assert not net._forward_hooks and not any(m._forward_hooks for m in net.modules())  # hook removed


def test_large_scans_are_downsampled_but_the_organ_mask_keeps_the_input_shape():
    net = tiny_net()
    with torch.no_grad():
        net.conv_final[2].conv.bias[1] = 100.0  # the organ channel wins everywhere: a mask must come back
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[2:])))
    image = torch.rand(1, 48, 48, 48)
    emb, organ = embed_scan(net, image, organ_channel=1, max_voxels=24**3)
    assert emb.shape == (192,)
    assert max(seen[0]) < 48  # the backbone ran on the downsampled scan (padded to a multiple of 16)
    assert organ is not None and organ.shape == (48, 48, 48) and organ.all()


def disagreeing_model():
    model = PromptedSegmenter(tiny_net(), organ_channel=1, num_prompts=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "to_feature" in name or "set_evidence_gain" in name:
                p.normal_(0, 0.2)  # make the prompt sets disagree
    return model.eval()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_organ_windows_skip_windows_without_organ_and_keep_organ_voxels_exact(batch_size):
    model, inferer = disagreeing_model(), sliding_window((32, 32, 32), batch_voxels=batch_size * 32**3)
    image = torch.rand(1, 1, 64, 56, 48)
    organ = np.zeros(image.shape[2:], bool)
    organ[50:60, 40:50, 30:40] = True  # the far corner: one window of the grid holds it
    windows = OrganWindows(inferer, organ)
    with torch.no_grad():
        full, only_organ = inferer(image, model.backbone), windows(image, model.backbone)
    total = windows.computed + windows.skipped
    assert windows.computed < total / 2
    assert windows.count(image) == (windows.computed, total)  # counted without a network
    # Same grid, same windows for every organ voxel: the logits there are the full pass's.
    inside = torch.as_tensor(organ)
    torch.testing.assert_close(only_organ[:, :, inside], full[:, :, inside])
    assert not torch.allclose(only_organ, full)  # elsewhere windows were skipped


def test_windows_run_together_give_what_they_give_one_at_a_time():
    model, image = disagreeing_model(), torch.rand(1, 1, 64, 56, 48)
    with torch.no_grad():
        alone = sliding_window((32, 32, 32))(image, model.tumour_log_odds)
        together = sliding_window((32, 32, 32), batch_voxels=8 * 32**3)(image, model.tumour_log_odds)
    torch.testing.assert_close(together, alone)  # GroupNorm never mixes the windows of a batch


def test_without_an_organ_every_window_is_computed():
    model, inferer = disagreeing_model(), sliding_window((32, 32, 32))
    image = torch.rand(1, 1, 40, 40, 40)
    windows = OrganWindows(inferer, None)
    with torch.no_grad():
        torch.testing.assert_close(windows(image, model.backbone), inferer(image, model.backbone))


def test_an_organ_mask_of_another_shape_is_refused():
    windows = OrganWindows(sliding_window((32, 32, 32)), np.ones((8, 8, 8), bool))
    with pytest.raises(ValueError, match="organ mask"):
        windows(torch.rand(1, 1, 16, 16, 16), disagreeing_model().backbone)


def test_prompt_uncertainty_in_the_organ_windows_is_a_non_negative_score():
    image = torch.rand(1, 32, 32, 32)
    organ = np.zeros((32, 32, 32), bool)
    organ[8:24, 8:24, 8:24] = True
    assert prompt_uncertainty(disagreeing_model(), image, organ, sliding_window((32, 32, 32))) > 0.0


def test_prompt_uncertainty_takes_the_liver_mask_as_given_and_looks_for_tumour_only_in_its_box():
    model, inferer = disagreeing_model(), sliding_window((32, 32, 32))
    image = torch.rand(1, 64, 56, 48)
    organ = np.zeros(image.shape[1:], bool)
    organ[50:60, 40:50, 30:40] = True
    windows, organ_passes = [], []
    model.head.register_forward_pre_hook(lambda module, args: windows.append(tuple(args[0].shape)))
    model.backbone.conv_final.register_forward_hook(lambda module, args, out: organ_passes.append(1))
    prompt_uncertainty(model, image, organ, inferer)
    assert not organ_passes  # no organ pass: the mask is the liver
    # The 10-voxel cube, LIVER_BOX_MARGIN wider on each side (cut at the scan's edge), fits one window.
    assert 10 + 2 * LIVER_BOX_MARGIN <= 32
    assert [w[0] for w in windows] == [1] and windows[0][2:] == (32, 32, 32)


def test_a_scan_needs_scoring_without_an_embedding_or_with_an_older_checkpoints_uncertainty():
    from lib.activelearning.tesla_scoring import needs_scoring

    assert needs_scoring({}, None) and needs_scoring({"embedding": []}, None)
    assert not needs_scoring({"embedding": [0.1]}, None)  # no checkpoint yet: the embedding is all there is
    assert needs_scoring({"embedding": [0.1]}, 2)
    assert needs_scoring({"embedding": [0.1], "checkpoint_version": 1}, 2)
    assert not needs_scoring({"embedding": [0.1], "checkpoint_version": 2}, 2)


def test_gathered_windows_fill_whole_batches_and_give_the_same_logits():
    model, inferer = disagreeing_model(), sliding_window((16, 16, 16), batch_voxels=2 * 16**3)
    image = torch.rand(1, 1, 64, 64, 16)
    organ = np.zeros(image.shape[2:], bool)
    for i in range(4):
        for j in range(4):
            organ[16 * i + 5, 16 * j + 5, 5] = (i + j) % 2 == 0  # a checkerboard of the 4x4 windows
    batches = []
    model.backbone.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    with torch.no_grad():
        one_batch_at_a_time = OrganWindows(gather(inferer, 1), organ, batch_size=2)(image, model.backbone)
        ragged = list(batches)
        batches.clear()
        gathered = OrganWindows(gather(inferer, 8), organ, batch_size=2)(image, model.backbone)
    torch.testing.assert_close(gathered, one_batch_at_a_time)
    assert sum(batches) == sum(ragged) and len(batches) < len(ragged)
    assert all(b == 2 for b in batches[:-1])


def gather(inferer: SlidingWindowInferer, batches: int) -> SlidingWindowInferer:
    """``inferer``'s windows without overlap, handed over ``batches`` batches at a time."""
    return SlidingWindowInferer(roi_size=inferer.roi_size, sw_batch_size=inferer.sw_batch_size * batches, overlap=0.0)
