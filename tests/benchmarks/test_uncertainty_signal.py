"""The prompt-based uncertainty of a trained SLPT v2 model carries signal: its K sets disagree, and they
disagree more on a scan with a lesion than on a tumour-free one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.slpt.active.uncertainty import ensemble, scan_uncertainty
from apps.slpt.config import SLPTConfig
from apps.slpt.inference import predict, task_inferer, task_label
from apps.slpt.model.backbone import load_backbone
from apps.slpt.model.build import build_model
from apps.slpt.training.loop import fit
from benchmarks.compare import QUICK, phantom_pairs
from phantoms.phantom import PhantomSpec, phantom_header

pytestmark = pytest.mark.slow

SPEC = PhantomSpec(**QUICK.phantom_spec)
FIRST_SEED = 810_000  # a range no other test or experiment uses


def _seeds(tumour: bool, n: int) -> list[int]:
    found = (s for s in range(FIRST_SEED, FIRST_SEED + 200)
             if (phantom_header(s, SPEC)["tumor_type"] != "none") == tumour)
    return [next(found) for _ in range(n)]


def test_the_k_sets_disagree_more_on_a_lesion_than_on_a_tumour_free_scan(root):
    backbone = load_backbone(root / "models" / "backbone")
    cfg = SLPTConfig(epochs=12, iterations_per_epoch=4, batch_size=2, precision="fp32")
    train = list(phantom_pairs(_seeds(True, 2), backbone.preprocessing, SPEC).values())
    with_lesion = list(phantom_pairs(_seeds(True, 4)[2:], backbone.preprocessing, SPEC).values())
    without = list(phantom_pairs(_seeds(False, 2), backbone.preprocessing, SPEC).values())
    torch.manual_seed(0)
    model = build_model(backbone, cfg)
    inferer = task_inferer(cfg)
    fit(model, train, [], cfg, inferer, log=lambda m: None)

    def uncertainty(image):
        probs, pu = predict(model, image, inferer)
        return scan_uncertainty(pu.numpy(), task_label(probs).numpy())

    lesion = [uncertainty(image) for image, _ in with_lesion]
    free = [uncertainty(image) for image, _ in without]
    assert min(lesion + free) >= 0
    assert np.mean(lesion) > np.mean(free), (lesion, free)
    # Not degenerate: the K predictions of a trained model differ somewhere in every scan.
    with torch.no_grad():
        logits = inferer(with_lesion[0][0][None], model)
    assert ensemble(logits, model.num_prompts)[1].max() > 1e-4
