"""Spread per-scan work over worker processes, one GPU each when there are several.

TESLA scores each unlabelled scan on its own, so a pool of scans splits into independent jobs. Scans differ
in size, so the workers take one scan at a time from a shared queue rather than fixed shards: a worker that
drew small scans takes more of them. Whatever a job stores, it stores itself before it returns, so a killed
run loses only the scans in flight.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

_job: Callable | None = None  # the worker's copy of the job, set once per process by _start


def worker_devices(workers: int, device: torch.device | str) -> list[str]:
    """The device of each worker: the GPUs in turn when ``device`` is CUDA, else the CPU for all."""
    if torch.device(device).type == "cuda" and torch.cuda.device_count() > 0:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return ["cpu"] * workers


def _start(job: Callable, devices, threads: int) -> None:
    global _job
    torch.set_num_threads(threads)  # the parent's threads, shared out: workers must not oversubscribe the cores
    device = devices.get()
    start = getattr(job, "start", None)
    if start is not None:
        start(device)
    _job = job


def _run(item: Any) -> Any:
    return _job(item)


def run_in_workers(job: Callable[[Any], Any], items: Sequence[Any], workers: int,
                   device: torch.device | str = "cpu") -> Iterator[Any]:
    """``job(item)`` for each item, in order, over ``workers`` processes (``1``: in this process).

    Args:
        job: a picklable callable, sent once to each worker; if it has ``start(device)``, each worker calls it
            first with its own device (:func:`worker_devices` of ``device``).
        items: the jobs' inputs, taken one at a time by whichever worker is free.
        device: where ``job`` runs in this process; CUDA spreads the workers over the GPUs.

    Yields:
        ``job(item)`` for each item, in the order of ``items``.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1 or len(items) <= 1:
        yield from map(job, items)
        return
    workers = min(workers, len(items))
    # spawn, not fork: a forked child inherits torch's threads and CUDA state half-initialised.
    context = multiprocessing.get_context("spawn")
    devices = context.Queue()
    for d in worker_devices(workers, device):
        devices.put(d)
    threads = max(1, torch.get_num_threads() // workers)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_start,
                                                initargs=(job, devices, threads)) as pool:
        yield from pool.map(_run, items, chunksize=1)
