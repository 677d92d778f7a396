"""A real MONAI Label server (``monailabel start_server``) on loopback, started and stopped from Python.

Used by ``make ohif``, the app tests and the benchmarks. The server runs in its own process group
(``start_new_session``), so its training and scoring subprocesses can be found among its descendants and
the whole group can be killed at once. Callers add to its environment through ``env`` (the tests use it to
load their network guard).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def delete(self, path, **kw):
        return requests.delete(self.url + path, timeout=600, **kw)


def start_server(workdir: Path, studies: Path | str, conf: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, port: int | None = None, timeout: float = 180) -> Server:
    """Start ``monailabel start_server`` on loopback (a free port unless given) and wait until ``/info/``
    answers. ``studies`` is a folder or a DICOMweb URL; ``env`` adds to the server's environment."""
    port = port or free_port()
    log = workdir / "server.log"
    extra_env, env = env, dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",  # the launcher runs `python` from PATH
        MONAI_LABEL_SESSION_PATH=str(workdir / "sessions"),
    )
    env.update(extra_env or {})
    cmd = ["monailabel", "start_server", "--app", str(ROOT), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port)]
    for key, value in (conf or {}).items():
        cmd += ["--conf", key, value]
    with open(log, "a") as out:  # appended: a restart on the same folder keeps the killed server's log
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", studies, workdir, proc, log)
    try:
        failure = wait_until_answering(proc, server.url + "/info/", timeout, every=0.5)
        if failure:
            raise RuntimeError(f"server {failure}:\n{log.read_text()[-3000:]}")
        return server
    except BaseException:  # including Ctrl-C while waiting: never leave a half-started server behind
        stop_server(server)
        raise


def wait_until_answering(proc: subprocess.Popen, url: str, timeout: float, every: float = 0.2) -> str | None:
    """Poll ``url`` until it answers 200 (``None``), the process exits or ``timeout`` passes (the reason)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return None
        except requests.ConnectionError:
            pass
        time.sleep(every)
    return f"did not answer within {timeout} s"


def stop_server(server: Server) -> None:
    """SIGTERM to the server's process group, SIGKILL after 20 s."""
    stop_process(server.proc)


def stop_process(proc: subprocess.Popen, grace: float = 20) -> None:
    """Stop a process started with ``start_new_session=True`` and all its children, by process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
