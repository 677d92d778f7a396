"""TESLA through the real server, as a team uses it: a second datastore on the same model folder, an image
deleted while queued, more annotators than a round has scans, and lean answers. One scenario test whose
named steps share a server on the second datastore (after a first server on the demo-like one)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from phantoms.io import image_id, write_studies
from tests.app.conftest import start_server, stop_server
from tests.app.helpers import SMALL, step, wait
from tools.server import Server

pytestmark = pytest.mark.server

# Rounds of 2 (the budget of 12 scans is 1); training never starts, so nothing competes with the steps.
CONF = {"slpt_min_round_size": "2", "slpt_train_after_labels": "1000", "slpt_lease_seconds": "600"}
FIRST, SECOND = range(900, 903), range(910, 922)
ANSWER_LIMIT = 2048


@dataclass
class Team:
    server: Server
    model_dir: Path
    first_ids: set[str]
    answer_sizes: list[int] = field(default_factory=list)


@pytest.fixture
def team(tmp_path):
    conf = {**CONF, "slpt_model_dir": str(tmp_path / "prompts")}
    write_studies(tmp_path / "first", FIRST, spec=SMALL)
    write_studies(tmp_path / "second", SECOND, spec=SMALL, ground_truth=tmp_path / "truth")
    first = start_server(tmp_path, tmp_path / "first", conf)
    try:
        served = ask(Team(first, tmp_path / "prompts", set()), "reader-1")["id"]
    finally:
        stop_server(first)
    assert served in {image_id(s) for s in FIRST}
    run = Team(start_server(tmp_path, tmp_path / "second", conf), tmp_path / "prompts",
               {image_id(s) for s in FIRST})
    yield run
    stop_server(run.server)


def ask(team: Team, client: str) -> dict:
    r = team.server.post("/activelearning/tesla", json={"client_id": client})
    assert r.status_code == 200, r.text
    team.answer_sizes.append(len(r.content))
    return r.json()


def tesla_view(team: Team) -> dict:
    return team.server.get("/info/").json()["slpt"]["tesla"]


def label(team: Team, name: str) -> None:
    with open(team.server.workdir / "truth" / f"{name}.nii.gz", "rb") as f:
        r = team.server.put(f"/datastore/label?image={name}&tag=final", files={"label": (f"{name}.nii.gz", f)})
    assert r.ok, r.text


def unlabelled(team: Team) -> set[str]:
    objects = team.server.get("/datastore/", params={"output": "all"}).json()["objects"]
    return {i for i, o in objects.items() if not o["labels"].get("final")}


def the_second_datastore_gets_its_own_ids_and_the_first_state_is_archived(team):
    answer = ask(team, "reader-1")
    assert answer["id"] in unlabelled(team) and answer["id"] not in team.first_ids
    if answer["tesla"]["round"] == 0:  # asked before the pool was embedded: one scan, not a whole round
        assert answer["tesla"]["provisional"] and len(tesla_view(team)["queue"]) == 1
    view = tesla_view(team)
    assert view["datastore"] == str((team.server.studies).resolve())
    (archived,) = (team.model_dir / "tesla_archive").iterdir()
    assert json.loads(archived.read_text())["datastore"] == str((team.server.workdir / "first").resolve())


def once_embedded_round_one_is_chosen_on_embeddings(team):
    view = wait(lambda: (v := tesla_view(team))["waiting_for_embedding"] == 0 and v, timeout=900, every=2)
    assert view["waiting_for_scoring"] == 0 and view["pool"] == len(SECOND) and view["budget"] == 1
    answer = ask(team, "reader-2")
    assert answer["tesla"]["round"] == 1 and "backbone embeddings" in answer["tesla"]["basis"]
    queue = tesla_view(team)["queue"]
    assert sum(not row.get("provisional") for row in queue) == 2  # a round of 2, chosen on embeddings


def a_deleted_queued_image_leaves_the_round_which_still_completes(team):
    queue = [row["id"] for row in tesla_view(team)["queue"]]
    gone = queue[-1]
    r = requests.delete(team.server.url + "/datastore/image", params={"id": gone}, timeout=60)
    assert r.ok, r.text
    # MONAI Label's local datastore deletes the file at once but lists the image until its file watcher
    # notices (tens of ms later); a client sees the same listing the strategy reads.
    wait(lambda: gone not in team.server.get("/datastore/", params={"output": "all"}).json()["objects"],
         timeout=60, every=0.1)
    for name in queue[:-1]:
        label(team, name)
    answer = ask(team, "reader-3")
    assert answer["tesla"]["round"] == 2 and answer["id"] != gone
    history = json.loads((team.model_dir / "tesla_state.json").read_text())["history"]
    assert any(h["round"] == 1 and h.get("dropped") == [gone] for h in history), history
    label(team, answer["id"])  # so that from here on only the next step's annotators hold scans


def six_annotators_at_once_get_six_distinct_scans_then_nothing_only_when_all_are_labelled(team):
    clients = [f"annotator{n}" for n in range(6)]
    with ThreadPoolExecutor(6) as pool:
        answers = dict(zip(clients, pool.map(lambda c: ask(team, c), clients)))
    served = {c: a["id"] for c, a in answers.items()}
    assert len(set(served.values())) == 6, served
    assert sum(a["tesla"]["overflow"] for a in answers.values()) >= 3  # rounds of 2: the rest is overflow
    # Each labels their scan and asks again, until nothing is left: {} only once every scan is labelled or
    # held by someone else.
    while served:
        for client, name in list(served.items()):
            label(team, name)
            answer = ask(team, client)
            if answer:
                assert answer["id"] in unlabelled(team) and answer["id"] not in served.values()
                served[client] = answer["id"]
            else:
                del served[client]
                assert unlabelled(team) <= set(served.values()), "an annotator idles while a scan is free"
    assert unlabelled(team) == set() and ask(team, "late") == {}


def answers_are_lean_and_listings_carry_no_embeddings(team):
    assert max(team.answer_sizes) < ANSWER_LIMIT, team.answer_sizes
    print(f"Next Sample answers: {min(team.answer_sizes)}-{max(team.answer_sizes)} bytes", flush=True)
    listing = team.server.get("/datastore/", params={"output": "all"})
    assert "embedding" not in listing.text and len(listing.content) / len(SECOND) < 1024


def test_a_team_on_a_second_datastore(team):
    log = []
    for check in (
        the_second_datastore_gets_its_own_ids_and_the_first_state_is_archived,
        once_embedded_round_one_is_chosen_on_embeddings,
        a_deleted_queued_image_leaves_the_round_which_still_completes,
        six_annotators_at_once_get_six_distinct_scans_then_nothing_only_when_all_are_labelled,
        answers_are_lean_and_listings_carry_no_embeddings,
    ):
        with step(check.__name__.replace("_", " "), log):
            check(team)
