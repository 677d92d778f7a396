"""TESLA scoring on MONAI Label's real LocalDatastore: re-scoring after a new prompt checkpoint reads each
scan's kept liver mask instead of repeating the backbone pass, and scores exactly what a fresh pass would."""

from __future__ import annotations

import pytest
import torch
from monailabel.datastore.local import LocalDatastore

from apps.slpt.active.scoring import embed_scan, prompt_uncertainty
from apps.slpt.config import SLPTConfig
from apps.slpt.model.backbone import load_backbone
from apps.slpt.model.build import build_model, load_checkpoint
from apps.slpt.model.checkpoints import PromptCheckpointStore
from lib.activelearning import tesla_scoring
from lib.activelearning.tesla_scoring import TeslaScoring
from phantoms.io import write_studies
from tests.app.helpers import SMALL


@pytest.fixture
def scoring(root, tmp_path, monkeypatch):
    write_studies(tmp_path / "studies", [830], spec=SMALL)
    datastore = LocalDatastore(str(tmp_path / "studies"), extensions=["*.nii.gz"], auto_reload=False)
    backbone = load_backbone(root / "models" / "backbone")
    cfg = SLPTConfig(model_dir=str(tmp_path / "model"))
    passes = []
    monkeypatch.setattr(tesla_scoring, "embed_scan", lambda *a, **k: passes.append(1) or embed_scan(*a, **k))
    return TeslaScoring(backbone, cfg), datastore, backbone, cfg, passes


def new_checkpoint(backbone, cfg, seed: int) -> int:
    torch.manual_seed(seed)
    model = build_model(backbone, cfg)
    with torch.no_grad():  # a trained-looking head and set evidence, so that the prompts disagree somewhere
        for p in model.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.set_evidence_gain.normal_(0, 1.0)
    metadata = {"backbone": backbone.identity, "config": cfg.to_dict()}
    return PromptCheckpointStore(cfg.model_dir).save(model.trainable_state_dict(), metadata)


def info(tesla: TeslaScoring, datastore) -> dict:
    (image_id,) = datastore.get_unlabeled_images()
    return tesla.cache(datastore).records()[image_id]


def test_rescoring_reads_the_kept_liver_mask_and_scores_what_a_fresh_pass_would(scoring):
    tesla, datastore, backbone, cfg, passes = scoring
    new_checkpoint(backbone, cfg, seed=0)
    assert tesla({}, datastore)["scored"] == 1 and len(passes) == 1
    assert info(tesla, datastore)["organ_voxels"] > 0  # a liver was found, so the mask matters

    version = new_checkpoint(backbone, cfg, seed=1)
    assert tesla({}, datastore)["scored"] == 1
    assert len(passes) == 1  # no second backbone pass
    kept = info(tesla, datastore)
    assert kept["checkpoint_version"] == version

    # The same score from a fresh backbone pass.
    (image_id,) = datastore.get_unlabeled_images()
    image = tesla.load({"image": datastore.get_image_uri(image_id)})["image"].as_tensor().float()
    _, organ = embed_scan(backbone.network, image, cfg.embed_stage, backbone.labels["liver"])
    served = load_checkpoint(backbone, PromptCheckpointStore(cfg.model_dir), version, cfg)
    fresh = prompt_uncertainty(served.model.eval(), image, organ, served.inferer, cfg.uncertainty_margin,
                               cfg.uncertainty_top_fraction)
    # bf16 kernels may split their work differently in the scoring process: equal to a few parts in 10⁴.
    assert kept["uncertainty"] == pytest.approx(fresh, rel=1e-3)


def test_an_unreadable_kept_mask_costs_one_backbone_pass_not_the_score(scoring):
    tesla, datastore, backbone, cfg, passes = scoring
    new_checkpoint(backbone, cfg, seed=0)
    tesla({}, datastore)
    (mask_file,) = (tesla.organs.folder).iterdir()
    mask_file.write_bytes(b"not an npz")
    new_checkpoint(backbone, cfg, seed=1)
    result = tesla({}, datastore)
    assert result["scored"] == 1 and result["failed"] == 0 and len(passes) == 2
    assert info(tesla, datastore)["organ_voxels"] > 0
    assert tesla.organs.get(info(tesla, datastore)["content_sha256"], (1, 1, 1), "other shape") == "other shape"
