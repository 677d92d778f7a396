"""The TESLA strategy on MONAI Label's real LocalDatastore, before any scoring has run."""

from __future__ import annotations

import pytest
from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore

from apps.slpt.config import SLPTConfig
from lib.activelearning.tesla import Tesla
from phantoms.io import write_studies


def test_without_any_scores_it_still_answers_with_stage_one_diversity(tmp_path):
    write_studies(tmp_path / "studies", range(800, 806))
    datastore = LocalDatastore(str(tmp_path / "studies"), extensions=["*.nii.gz"], auto_reload=False)
    tesla = Tesla(SLPTConfig(model_dir=str(tmp_path / "model"), min_round_size=3))
    answers = [tesla({"client_id": f"c{n}"}, datastore) for n in range(4)]
    served = [a["id"] for a in answers if a]
    assert len(served) == len(set(served)) == 3 and answers[3] == {}
    reason = answers[0]["tesla"]
    assert reason["stage"] == 1 and reason["round"] == 1 and "fallback" in reason["basis"]
    assert all(a["tesla"]["uncertainty"] is None for a in answers[:3])  # never a fake score of 0
    assert (tmp_path / "model" / "tesla_state.json").is_file()


def test_bad_lease_time_is_named(tmp_path):
    write_studies(tmp_path / "studies", [810])
    datastore = LocalDatastore(str(tmp_path / "studies"), extensions=["*.nii.gz"], auto_reload=False)
    with pytest.raises(HTTPException, match="lease_seconds must be a positive number"):
        Tesla(SLPTConfig(model_dir=str(tmp_path / "model")))({"lease_seconds": "soon"}, datastore)
