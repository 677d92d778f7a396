"""The out-of-distribution check (``apps/slpt/ood.py``) on hand-built organ maps whose verdict is known,
and with the default backbone on a phantom and a generated head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.slpt.ood import (
    LayoutLimits,
    OutOfDistributiond,
    background_only,
    captured_output,
    check_layout,
    check_scan,
    layout_features,
)

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4, "aorta": 5, "bone": 6}


def one_hot(label: np.ndarray, confidence: float = 0.95, classes: int = len(LABELS)) -> torch.Tensor:
    """``[*S]`` label map -> ``[C, *S]`` probabilities with ``confidence`` on the labelled class."""
    c = classes
    probs = np.full((c, *label.shape), (1 - confidence) / (c - 1), np.float32)
    np.put_along_axis(probs, label[None], confidence, axis=0)
    return torch.from_numpy(probs)


def abdomen() -> np.ndarray:
    """A 32^3 abdomen: a block of liver, spleen, two kidneys, aorta and a spine."""
    label = np.zeros((32, 32, 32), np.int64)
    label[6:18, 6:20, 6:26] = LABELS["liver"]
    label[22:27, 6:12, 8:20] = LABELS["spleen"]
    label[8:12, 22:26, 8:16] = LABELS["kidney_right"]
    label[20:24, 22:26, 8:16] = LABELS["kidney_left"]
    label[15:17, 18:20, 4:28] = LABELS["aorta"]
    label[14:18, 24:28, 4:28] = LABELS["bone"]
    return label


def test_features_of_a_known_layout():
    label = abdomen()
    f = layout_features(one_hot(label), LABELS)
    body = (label > 0).sum()
    assert f["body_voxels"] == body
    assert f["liver_share"] == pytest.approx((label == 1).sum() / body, abs=1e-5)
    assert f["liver_connected"] == 1.0
    assert f["aorta_per_liver"] == pytest.approx((label == 5).sum() / (label == 1).sum(), abs=1e-5)
    assert f["confidence"] == pytest.approx(0.95, abs=1e-5)


def test_an_abdomen_passes():
    verdict = check_scan(one_hot(abdomen()), LABELS)
    assert not verdict.flagged and verdict.reasons == ()


@pytest.mark.parametrize("change, reason", [
    (lambda lab: np.where(np.isin(lab, [2, 3, 4, 5]), 1, lab), "no abdominal organs beside the liver"),
    (lambda lab: np.where(lab == 6, 1, lab), "almost no bone"),
    (lambda lab: np.where(lab == 1, 0, lab), "no liver"),
])
def test_a_missing_part_of_the_layout_is_named(change, reason):
    verdict = check_scan(one_hot(change(abdomen())), LABELS)
    assert verdict.flagged and any(r.startswith(reason) for r in verdict.reasons), verdict.reasons


def test_a_liver_in_pieces_and_an_unsure_backbone_are_flagged():
    rng = np.random.default_rng(0)
    confetti = rng.integers(0, len(LABELS), (32, 32, 32))  # every class everywhere, liver in specks
    verdict = check_scan(one_hot(confetti, confidence=0.5), LABELS)
    assert verdict.flagged
    assert any(r.startswith("the liver is in pieces") for r in verdict.reasons)
    assert any(r.startswith("the backbone is unsure") for r in verdict.reasons)


def test_signs_the_backbone_cannot_give_are_skipped():
    label = abdomen()
    label[label == 6] = 1  # no bone voxels at all ...
    labels = {k: v for k, v in LABELS.items() if k != "bone"}  # ... and a backbone without a bone label
    probs = one_hot(label)[: len(labels)]
    assert not check_scan(probs / probs.sum(0), labels).flagged


def test_a_backbone_that_splits_the_skeleton_is_read_as_one_bone():
    """A TotalSegmentator backbone (wholeBody_ct_segmentation) names vertebrae and ribs, no ``bone``: its trunk
    skeleton together is the bone sign; its limbs are not."""
    labels = {**{k: v for k, v in LABELS.items() if k != "bone"},
              "vertebrae_L1": 6, "rib_left_11": 7, "humerus_left": 8}
    label = abdomen()
    bone = label == LABELS["bone"]
    label[bone & (np.arange(32)[None, None, :] < 16)] = labels["rib_left_11"]  # half the spine's voxels are rib
    verdict = check_scan(one_hot(label, classes=9), labels)
    assert verdict.features["bone_per_liver"] == pytest.approx(bone.sum() / (label == 1).sum(), abs=1e-5)
    assert not verdict.flagged, verdict.reasons

    label[bone] = labels["humerus_left"]  # an arm where the spine was
    verdict = check_scan(one_hot(label, classes=9), labels)
    assert verdict.features["bone_per_liver"] == 0 and any(r.startswith("almost no bone") for r in verdict.reasons)


def test_limits_are_checked():
    with pytest.raises(ValueError, match="min_confidence"):
        LayoutLimits(min_confidence=1.5)
    with pytest.raises(ValueError, match="liver"):
        layout_features(torch.ones(2, 4, 4, 4) / 2, {"background": 0, "spleen": 1})
    unsure = LayoutLimits().min_confidence - 0.01
    assert check_layout({**layout_features(one_hot(abdomen()), LABELS), "confidence": unsure}).flagged


def test_flagged_scores_become_background_without_touching_the_input():
    logits = torch.randn(3 * 3, 8, 8, 8)
    kept = logits.clone()
    empty = background_only(logits, 3)
    assert torch.equal(logits, kept)
    assert (empty.view(3, 3, 8, 8, 8).argmax(1) == 0).all()
    assert (empty.view(3, 3, 8, 8, 8).std(0) == 0).all()  # the prompt sets agree: no uncertainty
    with pytest.raises(ValueError):
        background_only(torch.zeros(4, 2, 2, 2), 3)


def test_the_transform_empties_only_a_flagged_scan():
    plausible = {"pred": one_hot(abdomen())}
    out = OutOfDistributiond(keys="pred", labels=LABELS)(plausible)
    assert out["pred"] is plausible["pred"] and not out["result"]["out_of_distribution"]["flagged"]
    head = np.where(np.isin(abdomen(), [2, 3, 4, 5, 6]), 1, abdomen())
    out = OutOfDistributiond(keys="pred", labels=LABELS)({"pred": one_hot(head)})
    assert out["result"]["out_of_distribution"]["flagged"] and out["result"]["out_of_distribution"]["reasons"]
    assert (out["pred"].argmax(0) == 0).all()


def test_captured_output_removes_its_hook():
    net = torch.nn.Conv3d(1, 2, 1)
    with captured_output(net) as seen:
        out = net(torch.zeros(1, 1, 2, 2, 2))
    assert torch.equal(seen["output"], out)
    assert not net._forward_hooks


def test_the_default_backbone_passes_a_phantom_and_flags_a_head(root):
    """Both verdicts with the real backbone, on its whole-scan pass (as TESLA scoring runs it)."""
    from apps.slpt.model.backbone import load_backbone
    from phantoms import non_abdominal
    from phantoms.phantom import PhantomSpec, make_phantom
    from tools.ood_calibration import probabilities

    backbone = load_backbone(root / "models" / "backbone")
    phantom = make_phantom(950, PhantomSpec(z_extent=(96.0, 96.0)))
    assert not check_scan(probabilities(backbone, phantom.image, phantom.affine, whole=True), backbone.labels).flagged
    head = check_scan(probabilities(backbone, *non_abdominal.head(0), whole=True), backbone.labels)
    assert head.flagged and any(r.startswith("no abdominal organs") for r in head.reasons)


def test_the_transform_can_read_organ_probabilities_and_empty_another_keys_groups():
    logits = torch.randn(3 * 3, *abdomen().shape)  # K = 3 groups of three task classes
    head = np.where(np.isin(abdomen(), [2, 3, 4, 5, 6]), 1, abdomen())
    out = OutOfDistributiond(keys="pred", labels=LABELS, probs_key="organ", classes=3)(
        {"pred": logits, "organ": one_hot(head)})
    assert out["result"]["out_of_distribution"]["flagged"]
    assert (out["pred"].view(3, 3, *head.shape).argmax(1) == 0).all()
    kept = OutOfDistributiond(keys="pred", labels=LABELS, probs_key="organ", classes=3)(
        {"pred": logits, "organ": one_hot(abdomen())})
    assert kept["pred"] is logits and not kept["result"]["out_of_distribution"]["flagged"]
