"""A real MONAI Label server (``monailabel start_server``) on loopback, fed with phantom studies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from apps.slpt.data import image_id, write_studies
from apps.slpt.phantom import phantom_header

ROOT = Path(__file__).resolve().parents[2]
NETGUARD = Path(__file__).resolve().parent / "netguard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_with(orientation: str, first: int = 500) -> int:
    return next(s for s in range(first, first + 200) if phantom_header(s)["orientation"] == orientation)


class Server:
    """Handle on a running server: its URL, folders and process."""

    def __init__(self, url: str, studies: Path, workdir: Path, proc: subprocess.Popen, log: Path):
        self.url, self.studies, self.workdir, self.proc, self.log = url, studies, workdir, proc, log

    def get(self, path, **kw):
        return requests.get(self.url + path, timeout=600, **kw)

    def post(self, path, **kw):
        return requests.post(self.url + path, timeout=600, **kw)

    def put(self, path, **kw):
        return requests.put(self.url + path, timeout=600, **kw)


def start_server(workdir: Path, studies: Path, conf: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = workdir / "server.log"
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",  # the launcher runs `python` from PATH
        PYTHONPATH=str(NETGUARD),
        SLPT_NETGUARD_LOG=str(workdir / "network.log"),
        MONAI_LABEL_SESSION_PATH=str(workdir / "sessions"),
    )
    cmd = ["monailabel", "start_server", "--app", str(ROOT), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port)]
    for key, value in (conf or {}).items():
        cmd += ["--conf", key, value]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", studies, workdir, proc, log)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(server.url + "/info/", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"server did not answer within 180 s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


@pytest.fixture(scope="session")
def demo_seeds() -> dict[str, int]:
    return {"RAS": seed_with("RAS"), "LPS": seed_with("LPS")}


@pytest.fixture(scope="session")
def server(tmp_path_factory, demo_seeds):
    workdir = tmp_path_factory.mktemp("server")
    studies = workdir / "studies"
    write_studies(studies, demo_seeds.values(), ground_truth=workdir / "truth")
    srv = start_server(workdir, studies, {"slpt_model_dir": str(workdir / "prompts")})
    yield srv
    stop_server(srv)


@pytest.fixture
def ids(demo_seeds) -> dict[str, str]:
    return {k: image_id(v) for k, v in demo_seeds.items()}
