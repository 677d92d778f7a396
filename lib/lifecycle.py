"""A stopped server leaves no process behind.

MONAI Label runs training, scoring and batch inference in subprocesses, one queue per kind, each drained by
a worker thread (``monailabel.utils.async_tasks.utils``). It never stops them when the server stops: on
SIGTERM or Ctrl-C, uvicorn shuts down and the running subprocess goes on without its server; worse, when
that subprocess ends (or was signalled with the server's process group), the worker starts the next queued
task, during shutdown, and that process outlives the server.

:func:`install` closes both: on the first SIGTERM/SIGINT (or at interpreter exit) no task subprocess starts
any more, queued tasks are marked ``STOPPED``, and the running ones (with their children) get SIGTERM, then
SIGKILL after a grace period. Then uvicorn's own handler runs its graceful shutdown as before.
"""

from __future__ import annotations

import atexit
import logging
import signal
import subprocess
import threading
import types
from datetime import datetime

import monailabel.utils.async_tasks.utils as async_tasks
import psutil

logger = logging.getLogger(__name__)

_lock = threading.Lock()  # held while a task subprocess starts, so stopping never misses one
_started: list[subprocess.Popen] = []
_stopping = threading.Event()
_GRACE_SECONDS = 5.0


def stopping() -> bool:
    return _stopping.is_set()


def _popen(*args, **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` for MONAI Label's task runner, refused once the server is stopping."""
    with _lock:
        if _stopping.is_set():
            raise RuntimeError("the server is stopping: no new task process starts")
        process = subprocess.Popen(*args, **kwargs)
        _started[:] = [p for p in _started if p.poll() is None] + [process]  # finished ones are forgotten
        return process


def _task_func(task, method, callback=None, _run=async_tasks._task_func):
    """MONAI Label's task runner, which a queued task skips (marked ``STOPPED``) once the server stops."""
    if _stopping.is_set():
        task["status"] = "STOPPED"
        task["end_ts"] = datetime.today().strftime("%Y-%m-%d %H:%M:%S")  # noqa: DTZ002 - as MONAI Label stamps tasks
        logger.info("%s task %s not started: the server is stopping", method, task["id"])
        return
    return _run(task, method, callback)


def stop_tasks(grace: float = _GRACE_SECONDS) -> int:
    """Stop every task subprocess the server started (and their children); none starts afterwards.

    Returns how many were still running."""
    with _lock:
        _stopping.set()
        running = [p for p in _started if p.poll() is None]
    victims: list[psutil.Process] = []
    for process in running:
        try:
            parent = psutil.Process(process.pid)
            victims += [*parent.children(recursive=True), parent]
        except psutil.NoSuchProcess:
            continue
    for victim in victims:
        try:
            victim.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(victims, timeout=grace)
    for victim in alive:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    if running:
        logger.info("stopped %d task process(es) with the server: %s", len(running), [p.pid for p in running])
    return len(running)


def _chain(sig: int) -> None:
    previous = signal.getsignal(sig)

    def handler(signum, frame):
        stop_tasks()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:  # nothing else handles it: the default action, as before
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    signal.signal(sig, handler)


def install() -> None:
    """Route MONAI Label's task processes through this module and stop them with the server (idempotent).

    Call from the main thread once uvicorn has installed its signal handlers (the app's
    ``on_init_complete``): ours run first and then hand over to uvicorn's."""
    if getattr(async_tasks._task_func, "slpt_wrapped", False):
        return
    _task_func.slpt_wrapped = True
    async_tasks._task_func = _task_func
    async_tasks.subprocess = types.SimpleNamespace(Popen=_popen, PIPE=subprocess.PIPE, STDOUT=subprocess.STDOUT)
    # At a plain interpreter exit, before the executors' threads are joined (which would wait for the task).
    getattr(threading, "_register_atexit", atexit.register)(stop_tasks)
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            _chain(sig)
    except ValueError:  # not the main thread: interpreter exit still stops them
        logger.warning("task processes are stopped at exit only: signal handlers need the main thread")
