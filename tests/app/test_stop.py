"""Stopping the real server (SIGTERM to its process only, as ``kill <pid>`` or a service manager sends it)
while a scoring task runs and more are queued leaves no process behind.

MONAI Label itself neither stops its task subprocesses with the server nor drops its queue: the running
scoring process outlived the server, and the next queued one started during shutdown (``lib/lifecycle.py``).
The server runs in its own process group, which every subprocess it starts inherits, so whatever is left
of it afterwards is found by that group.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from phantoms.io import write_studies
from tests.app.conftest import start_server, stop_server
from tests.app.helpers import SMALL, wait
from tests.app.test_crash_safety import task_process

pytestmark = pytest.mark.server


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def test_sigterm_with_queued_scoring_leaves_no_process(tmp_path):
    studies = tmp_path / "studies"
    write_studies(studies, range(930, 934), spec=SMALL)  # unlabelled: the server starts scoring them at once
    server = start_server(tmp_path, studies, {"slpt_model_dir": str(tmp_path / "prompts")})
    pgid = server.proc.pid
    try:
        running = wait(lambda: task_process(server, "scoring"), timeout=120, every=0.2)
        for _ in range(2):  # queued behind the running one (MONAI Label's /scoring/ enqueues)
            assert server.post("/scoring/").status_code == 200
        tasks = server.get("/scoring/", params={"all": True}).json()
        assert [t["status"] for t in tasks].count("SUBMITTED") >= 1, tasks

        os.kill(server.proc.pid, signal.SIGTERM)  # the server only, not its process group
        server.proc.wait(timeout=60)
        time.sleep(3)  # a task started during shutdown would be up by now
        left = group_members(pgid)
        assert not left, f"left behind by the stopped server: {[(p.pid, p.cmdline()) for p in left]}"
        assert not running.is_running()
    finally:
        stop_server(server)
        for process in group_members(pgid):  # never leave a failed run's processes behind
            process.kill()
