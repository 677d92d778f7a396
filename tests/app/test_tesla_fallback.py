"""The TESLA strategy on MONAI Label's real LocalDatastore, before and after the pool is embedded (the
embeddings are written into the score cache by hand, as the scoring method would)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore

from apps.slpt.config import SLPTConfig
from lib.activelearning.tesla import Tesla
from lib.activelearning.tesla_scoring import datastore_location
from phantoms.io import write_studies

BACKBONE = "0" * 64


@pytest.fixture
def pool(tmp_path):
    write_studies(tmp_path / "studies", range(800, 806))
    datastore = LocalDatastore(str(tmp_path / "studies"), extensions=["*.nii.gz"], auto_reload=False)
    return datastore, Tesla(SLPTConfig(model_dir=str(tmp_path / "model"), min_round_size=3), BACKBONE)


def embed(tesla: Tesla, datastore) -> None:
    cache, rng = tesla.cache(datastore), np.random.default_rng(0)
    for i in datastore.get_unlabeled_images():
        cache.put(i, {"embedding": rng.standard_normal(4).tolist(), "content_sha256": "x"})


def test_before_the_pool_is_embedded_each_annotator_gets_one_provisional_scan(pool, tmp_path):
    datastore, tesla = pool
    answers = [tesla({"client_id": f"c{n}"}, datastore) for n in range(7)]
    served = [a["id"] for a in answers if a]
    assert len(served) == len(set(served)) == 6 and answers[6] == {}  # all six leased: nothing free is left
    reason = answers[0]["tesla"]
    assert reason["round"] == 0 and reason["provisional"] and "6 scans still wait" in reason["basis"]
    assert all(a["tesla"]["uncertainty"] is None for a in answers[:6])  # never a fake score of 0
    state = json.loads((tmp_path / "model" / "tesla_state.json").read_text())
    assert state["datastore"] == datastore_location(datastore) and state["round"] == 0


def test_once_the_pool_is_embedded_round_one_is_chosen_on_embeddings_keeping_provisional_leases(pool):
    datastore, tesla = pool
    early = tesla({"client_id": "early"}, datastore)["id"]
    embed(tesla, datastore)
    answer = tesla({"client_id": "next"}, datastore)
    assert answer["tesla"]["round"] == 1 and "backbone embeddings" in answer["tesla"]["basis"]
    assert tesla({"client_id": "early"}, datastore)["id"] == early  # the early annotator keeps their scan
    view = tesla.view(datastore)
    assert view["waiting_for_embedding"] == 0 and view["waiting_for_scoring"] == 0
    assert view["round_size"] == 3 and early in [row["id"] for row in view["queue"]]


def test_a_state_made_for_another_datastore_is_archived_and_a_fresh_round_starts(pool, tmp_path):
    datastore, tesla = pool
    tesla({"client_id": "a"}, datastore)
    write_studies(tmp_path / "other", range(820, 823))
    other = LocalDatastore(str(tmp_path / "other"), extensions=["*.nii.gz"], auto_reload=False)
    assert tesla({"client_id": "a"}, other)["id"] in other.list_images()
    (archived,) = (tmp_path / "model" / "tesla_archive").iterdir()
    assert json.loads(archived.read_text())["datastore"] == datastore_location(datastore)


def test_bad_lease_time_is_named(pool):
    datastore, tesla = pool
    with pytest.raises(HTTPException, match="lease_seconds must be a positive number"):
        tesla({"lease_seconds": "soon"}, datastore)
