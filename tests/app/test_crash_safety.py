"""Crash safety through the real server: the training subprocess, the scoring subprocess and then the whole
server are killed with SIGKILL while they work, and what was stored before must still be there, load and be
served; a label save cut off by the server's death is undone at the restart, with the scan still leased.

One scenario test whose named steps share one server (the last step restarts it on the same folders). MONAI
Label 0.8.5 runs training and scoring as ``python -m monailabel.interfaces.utils.app -m train|scoring``
subprocesses of the server; they are found among the server's descendants by that command line. The other
test kills a process in the middle of rewriting ``datastore_v2.json``, which those subprocesses and the
server do all the time, but too briefly to be hit on purpose through the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import psutil
import pytest

from apps.slpt.active.rounds import RoundState
from apps.slpt.model.checkpoints import PromptCheckpointStore, read_checkpoint
from lib.datastore import ValidatingDatastore
from phantoms.io import image_id, write_studies
from tests.app.conftest import start_server, stop_server
from tests.app.helpers import SMALL, next_sample, step, tesla_infos, wait
from tests.interrupted_save import save_killed_before_the_label_lands
from tools.server import Server

pytestmark = pytest.mark.server

SEEDS = range(910, 917)  # 2 labelled, 5 unlabelled: a scoring run lasts long enough to be caught half-way
TINY = {"iterations_per_epoch": 1, "patch_size": 32}
LONG_EPOCHS = 400  # a round that is still running when it is killed
# Training only on request (never triggered by a label), so every round in this module is one we started.
CONF = {"slpt_min_round_size": "2", "slpt_lease_seconds": "600", "slpt_train_after_labels": "1000"}


@dataclass
class Crash:
    """The scenario's server (its restarted successor after the last step) and what the steps hand on."""

    server: Server
    conf: dict[str, str]
    store: PromptCheckpointStore
    labelled: list[str]
    unlabelled: list[str]
    v1_sha: str = ""
    held: dict[str, str] = field(default_factory=dict)  # client -> the scan it leased in round 1
    v1_scores: dict[str, dict] = field(default_factory=dict)


@pytest.fixture
def crash(tmp_path):
    studies = tmp_path / "studies"
    write_studies(studies, SEEDS, spec=SMALL, ground_truth=tmp_path / "truth")
    conf = {**CONF, "slpt_model_dir": str(tmp_path / "prompts")}
    ids = [image_id(s) for s in SEEDS]
    run = Crash(start_server(tmp_path, studies, conf), conf, PromptCheckpointStore(tmp_path / "prompts"),
                labelled=ids[:2], unlabelled=ids[2:])
    yield run
    stop_server(run.server)


def task_status(server, kind: str) -> str | None:
    """Status of the last ``train`` or ``scoring`` task; ``None`` if none ever ran."""
    r = server.get(f"/{kind}/")
    return r.json().get("status") if r.status_code == 200 else None


def finished(server, kind: str) -> str | None:
    return wait(lambda: (s := task_status(server, kind)) not in ("SUBMITTED", "RUNNING") and (s or "none"))


def task_process(server, method: str) -> psutil.Process | None:
    """The server's subprocess running MONAI Label's ``method`` task (``train`` or ``scoring``), if any."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "monailabel.interfaces.utils.app" in cmd and cmd[cmd.index("monailabel.interfaces.utils.app") + 1:][:2] \
                == ["-m", method]:
            return child
    return None


def kill9(process: psutil.Process) -> None:
    process.send_signal(signal.SIGKILL)  # psutil checks the pid still names this process
    process.wait(timeout=30)


def save_truth(server, name: str) -> None:
    with open(server.workdir / "truth" / f"{name}.nii.gz", "rb") as f:
        r = server.put(f"/datastore/label?image={name}&tag=final", files={"label": (f"{name}.nii.gz", f)})
    assert r.status_code == 200, r.text


def train(server, epochs: int) -> None:
    r = server.post("/train/slpt", json={"max_epochs": epochs, **TINY})
    assert r.status_code == 200, r.text


def served_version(server, name: str) -> int:
    r = server.post(f"/infer/slpt?image={name}&output=json")
    assert r.status_code == 200, r.text
    return r.json()["prompt_checkpoint_version"]


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def first_round_publishes_v1_and_scores_the_pool(crash):
    srv = crash.server
    # Start-up scoring embeds the pool; let it finish so the post-training re-scoring is not refused as busy.
    wait(lambda: all(tesla_infos(srv)[i].get("embedding") for i in crash.unlabelled + crash.labelled))
    finished(srv, "scoring")
    for name in crash.labelled:
        save_truth(srv, name)
    train(srv, 1)
    assert finished(srv, "train") == "DONE"
    assert crash.store.versions() == [1] and crash.store.current() == 1
    infos = wait(lambda: (i := tesla_infos(srv)) and all(
        i[n].get("checkpoint_version") == 1 for n in crash.unlabelled) and i)
    assert finished(srv, "scoring") == "DONE"
    crash.v1_sha = sha(crash.store.path(1))
    crash.held = {c: next_sample(srv, c)["id"] for c in ("reader-1", "reader-2")}  # round 1, two leases
    assert len(set(crash.held.values())) == 2 and set(crash.held.values()) <= set(crash.unlabelled)
    crash.v1_scores = {n: infos[n] for n in crash.unlabelled}


def kill_9_during_training_keeps_the_previous_checkpoint_served(crash):
    srv, store = crash.server, crash.store
    train(srv, LONG_EPOCHS)
    # Kill mid-round: the round has trained (and checkpointed) a few epochs of its many.
    wait(lambda: (s := srv.get("/info/").json()["train_stats"].get("slpt", {})).get("total_epochs") == LONG_EPOCHS
         and s.get("epoch", 0) >= 3, every=0.2)
    child = task_process(srv, "train")
    assert child is not None, "no training subprocess to kill"
    kill9(child)
    assert finished(srv, "train") == "ERROR"

    # Every version on disk loads; v1 is byte-identical; the served one is v1 or the killed round's best.
    versions = store.versions()
    assert versions[0] == 1 and set(versions) <= {1, 2}, versions
    for v in versions:
        read_checkpoint(store.path(v))
    assert sha(store.path(1)) == crash.v1_sha
    current = store.current()
    assert current in versions
    summary = srv.get("/info/").json()["models"]["slpt"]["prompt_checkpoint"]
    assert summary["version"] == current and "error" not in summary, summary
    assert served_version(srv, crash.unlabelled[0]) == current
    if current == 2:  # the killed round's best is served; the previous one is still there to roll back to
        assert store.rollback() == 1
        assert served_version(srv, crash.unlabelled[0]) == 1

    # Nothing the kill left behind (temporary files, stats, split) stops the next round: it warm-starts
    # from the served checkpoint and publishes the next version.
    train(srv, 1)
    assert finished(srv, "train") == "DONE"
    assert store.current() == versions[-1] + 1 == store.versions()[-1]
    summary = srv.get("/info/").json()["models"]["slpt"]["prompt_checkpoint"]
    assert summary["version"] == store.current() and summary["current"]


def kill_9_during_scoring_keeps_scores_and_tesla_state(crash):
    srv, version = crash.server, crash.store.current()
    # The round just trained re-scores the pool in the background, possibly queued behind the server's
    # catch-up run for the killed round's checkpoint. Kill the run scoring for this round once it has
    # re-scored one scan and before it has re-scored them all: it is the scoring process running then.
    wait(lambda: any(v.get("checkpoint_version") == version for v in tesla_infos(srv).values()), every=0.2)
    child = task_process(srv, "scoring")
    # Scores just before the kill: earlier rounds (and the server's own catch-up scoring) may have moved
    # them on since the first round.
    before = tesla_infos(srv)
    too_late = "the scoring run finished before it could be killed; use more or larger phantoms"
    if child is None:
        pytest.fail(too_late)
    try:
        kill9(child)
    except psutil.NoSuchProcess:
        pytest.fail(too_late)
    assert finished(srv, "scoring") == "ERROR"

    # MONAI Label's datastore file and TESLA's state both parse.
    json.loads((srv.studies / "datastore_v2.json").read_text())
    RoundState.from_dict(json.loads((crash.store.directory / "tesla_state.json").read_text()))
    # Each scan holds either its new score (complete) or its previous one (unchanged).
    infos = tesla_infos(srv)
    rescored = [n for n in crash.unlabelled if infos[n].get("checkpoint_version") == version]
    assert 1 <= len(rescored) < len(crash.unlabelled), rescored
    for n in crash.unlabelled:
        if n in rescored:
            assert infos[n]["uncertainty"] >= 0 and infos[n]["embedding"] == crash.v1_scores[n]["embedding"]
        else:
            assert infos[n] == before[n]

    # Next Sample still answers from the stored state: the same leases, with their reasons.
    for client, held in crash.held.items():
        answer = next_sample(srv, client)
        assert answer["id"] == held and answer["tesla"]["round"] == 1 and answer["tesla"]["basis"]

    # Unasked, the server's once-a-minute check sees scans still scored by the old checkpoint and finishes
    # the job, keeping what the killed run had finished.
    def all_rescored():
        now = tesla_infos(srv)
        return now if all(now[n].get("checkpoint_version") == version for n in crash.unlabelled) else None

    after = wait(all_rescored, timeout=240, every=2)
    assert all(after[n]["scored_at"] == infos[n]["scored_at"] for n in rescored)


def kill_9_of_the_whole_server_then_restart_keeps_everything(crash):
    srv = crash.server
    save_truth(srv, crash.held["reader-1"])  # the last thing before the crash: a label saved

    def snapshot(server):
        objects = server.get("/datastore/", params={"output": "all"}).json()["objects"]
        info = server.get("/info/").json()
        return {
            "labels": {i: sha(server.studies / "labels" / "final" / f"{i}.nii.gz")
                       for i, o in objects.items() if o["labels"].get("final")},
            "scores": tesla_infos(server),
            # The round, its queue, leases and budget; the live counts of scans waiting for scoring move with
            # the restarted server's background scoring, so they are not part of what a restart must keep.
            "tesla": {k: v for k, v in info["slpt"]["tesla"].items()
                      if k not in ("waiting_for_scoring", "waiting_for_embedding")},
            "checkpoint": info["models"]["slpt"]["prompt_checkpoint"],
            "versions": {v: sha(crash.store.path(v)) for v in crash.store.versions()},
        }

    before = snapshot(srv)
    assert len(before["labels"]) == 3 and len(before["versions"]) >= 2
    os.killpg(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(timeout=30)
    # Reader 2 was saving as the server died: that save's version record is written, its label is not.
    held = crash.held["reader-2"]
    save_killed_before_the_label_lands(srv.studies, held, srv.workdir / "truth" / f"{held}.nii.gz",
                                       {"client_id": "reader-2"})
    crash.server = srv = start_server(srv.workdir, srv.studies, crash.conf)

    assert snapshot(srv) == before  # labels, scores, round + queue + reasons, checkpoint versions
    undone = srv.get("/info/").json()["slpt"]["datastore"]["interrupted_saves_undone"]
    assert any(held in s and "reader-2" in s for s in undone), undone  # the restart says what it undid
    assert srv.get("/datastore/label/versions", params={"image": held}).json()["versions"] == []
    assert next_sample(srv, "reader-2")["id"] == held  # the lease survived, and the scan is still to label
    assert served_version(srv, crash.unlabelled[0]) == before["checkpoint"]["version"]


def test_kill_9_while_datastore_v2_json_is_rewritten(tmp_path):
    """MONAI Label truncates ``datastore_v2.json`` and then serialises the whole datastore into it; a kill
    in between leaves a torn file, on which the next start fails. The app's datastore renames a complete
    file over it instead, so the file parses whenever the writer dies."""
    studies = tmp_path / "studies"
    studies.mkdir()
    for i in range(4):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), studies / f"scan{i}.nii.gz")
    for delay in (0.3, 0.37, 0.44, 0.51, 0.58):
        pid = os.fork()
        if pid == 0:  # the writer: what a scoring subprocess does after each scan, as fast as it can
            try:
                store = ValidatingDatastore(str(studies))
                ids, n = store.list_images(), 0
                while True:
                    n += 1
                    store.update_image_info(ids[n % len(ids)], {"slpt_tesla": {"embedding": [n / 7] * 4000}})
            finally:
                os._exit(1)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        json.loads((studies / "datastore_v2.json").read_text())
        ValidatingDatastore(str(studies))  # what the next start does: it raises on a torn file


def test_kills_during_training_scoring_and_serving_lose_nothing(crash):
    """One server, the steps in order: each kill happens in the state the previous steps left."""
    log = []
    for check in (
        first_round_publishes_v1_and_scores_the_pool,
        kill_9_during_training_keeps_the_previous_checkpoint_served,
        kill_9_during_scoring_keeps_scores_and_tesla_state,
        kill_9_of_the_whole_server_then_restart_keeps_everything,
    ):
        with step(check.__name__.replace("_", " "), log):
            check(crash)
