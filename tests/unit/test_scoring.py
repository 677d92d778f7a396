from __future__ import annotations

import numpy as np
import torch
from monai.networks.nets import SegResNet

from apps.slpt.prompts import PromptedSegmenter
from apps.slpt.scoring import embed_scan, organ_box, prompt_uncertainty
from apps.slpt.tuning import sliding_window


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
    image = torch.rand(1, 48, 48, 48)
    emb, organ = embed_scan(net, image, organ_channel=1, max_voxels=24**3)
    assert emb.shape == (192,)
    assert organ is None or organ.shape == (48, 48, 48)


def test_organ_box_grows_by_the_margin_and_defaults_to_everything():
    organ = np.zeros((20, 20, 20), bool)
    organ[5:8, 6:9, 10:12] = True
    assert organ_box(organ, organ.shape, margin=2) == (slice(3, 10), slice(4, 11), slice(8, 14))
    assert organ_box(None, (4, 5, 6)) == (slice(0, 4), slice(0, 5), slice(0, 6))


def test_prompt_uncertainty_on_a_box_is_a_non_negative_score():
    model = PromptedSegmenter(tiny_net(), ["down_layers.2", "up_layers.0"], ("up_layers.2",), 3, num_prompts=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "to_feature" in name:
                p.normal_(0, 0.2)  # make the prompt sets disagree
    image = torch.rand(1, 32, 32, 32)
    box = (slice(0, 32), slice(0, 32), slice(0, 16))
    score = prompt_uncertainty(model, image, box, sliding_window((32, 32, 32)))
    assert score > 0.0


def test_a_scan_needs_scoring_without_an_embedding_or_with_an_older_checkpoints_uncertainty():
    from lib.activelearning.tesla_scoring import needs_scoring

    assert needs_scoring({}, None) and needs_scoring({"embedding": []}, None)
    assert not needs_scoring({"embedding": [0.1]}, None)  # no checkpoint yet: the embedding is all there is
    assert needs_scoring({"embedding": [0.1]}, 2)
    assert needs_scoring({"embedding": [0.1], "checkpoint_version": 1}, 2)
    assert not needs_scoring({"embedding": [0.1], "checkpoint_version": 2}, 2)
