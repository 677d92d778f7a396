"""TESLA's score cache on MONAI Label's real LocalDatastore: records per datastore, and scores an earlier
version kept in the image info (which MONAI Label copies into every answer) taken over, not recomputed."""

from __future__ import annotations

from monailabel.datastore.local import LocalDatastore

from apps.slpt.config import SLPTConfig
from apps.slpt.model.backbone import file_sha256, load_backbone
from lib.activelearning.tesla_scoring import INFO_KEY, ScoreCache, TeslaScoring
from phantoms.io import write_studies


def test_records_belong_to_one_datastore_and_backbone(tmp_path):
    ScoreCache(tmp_path, "/data/a", "b1").put("x", {"embedding": [1.0], "checkpoint_version": 2})
    assert ScoreCache(tmp_path, "/data/a", "b1").records() == {"x": {"embedding": [1.0], "checkpoint_version": 2}}
    assert ScoreCache(tmp_path, "/data/a", "b1").summaries() == {
        "x": {"embedding": True, "checkpoint_version": 2, "error": None}}
    assert ScoreCache(tmp_path, "/data/b", "b1").records() == {} == ScoreCache(tmp_path, "/data/a", "b2").records()


def test_scores_kept_in_the_image_info_move_to_the_cache(root, tmp_path):
    write_studies(tmp_path / "studies", [840])
    datastore = LocalDatastore(str(tmp_path / "studies"), extensions=["*.nii.gz"], auto_reload=False)
    (image_id,) = datastore.list_images()
    kept = {"content_sha256": file_sha256(datastore.get_image_uri(image_id)), "embedding": [0.5] * 192}
    datastore.update_image_info(image_id, {INFO_KEY: kept})
    tesla = TeslaScoring(load_backbone(root / "models" / "backbone"), SLPTConfig(model_dir=str(tmp_path / "model")))
    assert tesla({}, datastore)["unchanged"] == 1  # no checkpoint: the kept embedding is all there is to score
    assert tesla.cache(datastore).records()[image_id] == kept
    assert datastore.get_image_info(image_id)[INFO_KEY] is None and tesla.pending(datastore) == []
