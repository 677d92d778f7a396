"""Bounded load on a real server on loopback: annotators label while the prompts train.

    .venv/bin/python -m benchmarks.load --out docs/results/load --clients 4 --iterations 3

Starts ``monailabel start_server`` on generated phantoms (``tools/server.py``). Each of ``--clients``
annotator threads loops, with its own ``client_id``: Next Sample (``POST /activelearning/tesla``) ->
inference on the served scan (``/infer/backbone`` until the first prompt checkpoint exists, then
``/infer/slpt``) -> ``PUT /datastore/label`` with the phantom's ground truth, until it has saved
``--iterations`` labels. One more client triggers prompt training every ``--train-every`` saved labels
and a scoring run after each training (automatic training on label count is switched off, so this
client is the only one that trains). Afterwards it waits for the background tasks to end and checks:

* no request failed (any answer other than 2xx; a 429 "already running" to the scoring trigger is
  counted apart, as a busy answer);
* no scan was handed to two annotators inside a lease, and none after it was labelled;
* no label was lost: every saved label is listed by ``GET /datastore/?output=all`` and its file is
  byte-identical to what was sent;
* the server process's memory stayed bounded (RSS sampled with psutil; growth from the warmed-up server to
  the end of the run within ``--rss-growth-limit-mb``);
* every training and scoring task ended ``DONE``, and nothing tried to reach the network.

It reports throughput and latency percentiles per endpoint in ``<out>/result.md`` and everything, with
the memory samples, in ``<out>/result.json``. Exit status 1 if a check fails. It is a measurement,
not a test: the figures depend on the machine (MONAI Label 0.8.5 serves requests one at a time on its
event loop, so every request queues behind a running inference).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import requests

from benchmarks.reporting import write_report
from phantoms.io import image_id, write_studies
from tools.server import Server, start_server, stop_server

NETGUARD = Path(__file__).resolve().parents[1] / "tests" / "app" / "netguard"

BUSY_OK = {"POST /scoring/tesla": {429}}  # "Scoring Task is Already Running": a busy answer, not a failure
NO_TASK_YET = {"GET /scoring/": {404}, "GET /train/": {404}}  # MONAI Label's answer before any task ran


@dataclass
class Call:
    endpoint: str
    client: str
    start: float  # wall clock, seconds
    seconds: float
    status: int  # -1: no answer (connection error or timeout)
    detail: str = ""


class Recorder:
    """Every request a client makes, timed; thread-safe."""

    def __init__(self, url: str):
        self.url, self.calls, self._lock = url, [], threading.Lock()

    def __call__(self, client: str, method: str, path: str, require_body: bool = False, **kw):
        start, t0 = time.time(), time.perf_counter()
        try:
            response = requests.request(method, self.url + path, timeout=900, **kw)
            status, detail = response.status_code, "" if response.ok else response.text[:300]
            if response.ok and require_body and not response.content:
                status, detail = -1, "empty answer"
        except requests.RequestException as e:
            response, status, detail = None, -1, repr(e)[:300]
        call = Call(f"{method} {path.split('?')[0]}", client, start, time.perf_counter() - t0, status, detail)
        with self._lock:
            self.calls.append(call)
        return response


class MemorySampler(threading.Thread):
    """RSS of the server process and of its training/scoring subprocesses, every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.process, self.every, self.samples = psutil.Process(pid), every, []
        self.stopped = threading.Event()

    def sample(self) -> dict:
        server = self.process.memory_info().rss
        children = 0
        for child in self.process.children(recursive=True):
            try:
                children += child.memory_info().rss
            except psutil.Error:
                pass
        return {"t": time.time(), "server_mb": server / 2**20, "subprocesses_mb": children / 2**20}

    def run(self):
        while not self.stopped.wait(self.every):
            try:
                self.samples.append(self.sample())
            except psutil.Error:
                return


@dataclass
class Served:
    client: str
    image: str
    asked: float  # when the Next Sample request was sent
    answered: float
    lease_expires: float


class Load:
    """The annotators, the training client and the shared record of what was served and saved."""

    def __init__(self, server: Server, args, truth: Path):
        self.server, self.args, self.truth = server, args, truth
        self.call = Recorder(server.url)
        self.served: list[Served] = []
        self.saved: dict[str, dict] = {}  # image id -> {"client", "at", "sha256"}
        self.nothing_free = 0
        self.slpt_ready = threading.Event()  # a prompt checkpoint exists: annotators switch to /infer/slpt
        self.annotators_done = threading.Event()
        self.deadline = time.time() + args.timeout
        self.trainings: list[dict] = []
        self._lock = threading.Lock()

    def annotator(self, n: int) -> None:
        client = f"annotator{n}"
        done = 0
        while done < self.args.iterations and time.time() < self.deadline:
            asked = time.time()
            r = self.call(client, "POST", "/activelearning/tesla", json={"client_id": client})
            if r is None or not r.ok:
                time.sleep(1.0)
                continue
            answer = r.json()
            if not answer.get("id"):  # every scan of the round is leased to someone else
                with self._lock:
                    self.nothing_free += 1
                time.sleep(self.args.idle_wait)
                continue
            image = answer["id"]
            with self._lock:
                self.served.append(Served(client, image, asked, time.time(), answer["tesla"]["lease_expires"]))
            model = "slpt" if self.slpt_ready.is_set() else "backbone"
            self.call(client, "POST", f"/infer/{model}?image={image}&output=image", require_body=True)
            label = (self.truth / f"{image}.nii.gz").read_bytes()
            r = self.call(client, "PUT", f"/datastore/label?image={image}&tag=final",
                          files={"label": (f"{image}.nii.gz", label)})
            if r is not None and r.ok:
                with self._lock:
                    self.saved[image] = {"client": client, "at": time.time(),
                                         "sha256": hashlib.sha256(label).hexdigest()}
                done += 1

    def trainer(self) -> None:
        """Trains every ``--train-every`` labels, then scores; stops when the annotators are done."""
        client, next_at = "trainer", self.args.train_every
        while not self.annotators_done.is_set() and time.time() < self.deadline:
            if len(self.saved) < next_at:
                time.sleep(1.0)
                continue
            next_at = len(self.saved) + self.args.train_every
            body = {"max_epochs": self.args.train_epochs, "iterations_per_epoch": self.args.train_iterations,
                    "patch_size": self.args.patch_size}
            started = time.time()
            r = self.call(client, "POST", "/train/slpt", json=body)
            if r is None or not r.ok:
                continue
            status = self.wait_task("train", client)
            self.trainings.append({"labels": len(self.saved), "status": status,
                                   "seconds": round(time.time() - started, 1)})
            if status == "DONE":
                self.slpt_ready.set()
            # The finished round asked the server to re-score; after that run, ask once more explicitly.
            self.wait_task("scoring", client)
            while time.time() < self.deadline:
                r = self.call(client, "POST", "/scoring/tesla")
                if r is None or r.status_code != 429:
                    break
                self.wait_task("scoring", client)
            self.wait_task("scoring", client)

    def wait_task(self, kind: str, client: str, every: float = 2.0) -> str | None:
        """Poll ``GET /{kind}/`` until its last task has ended; its status (``None``: no task ever ran)."""
        while time.time() < self.deadline:
            r = self.call(client, "GET", f"/{kind}/")
            status = r.json().get("status") if r is not None and r.status_code == 200 else None
            if status not in ("SUBMITTED", "RUNNING"):
                return status
            time.sleep(every)
        return "TIMEOUT"


def all_tasks(server: Server, kind: str) -> list[dict]:
    r = server.get(f"/{kind}/", params={"all": True})
    return r.json() if r.status_code == 200 else []  # 404: no task ever ran


def percentiles(seconds: list[float]) -> dict:
    a = np.asarray(seconds)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


def check_leases(served: list[Served], saved: dict[str, dict]) -> list[str]:
    """A scan handed to a second annotator while the first one's lease was live, or after it was labelled."""
    problems = []
    for i, first in enumerate(served):
        labelled_at = saved.get(first.image, {}).get("at", float("inf"))
        for later in served[i + 1:]:
            if later.image != first.image:
                continue
            if later.client != first.client and later.asked < min(labelled_at, first.lease_expires):
                problems.append(f"{later.image} served to {later.client} while leased to {first.client}")
            elif later.asked > labelled_at:
                problems.append(f"{later.image} served to {later.client} after it was labelled")
    return sorted(set(problems))


def run(args) -> dict:
    pool = args.clients * (args.iterations + 1)  # always unlabelled scans left for the last round
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="slpt_load_"))
    studies, truth = workdir / "studies", workdir / "truth"
    seeds = range(args.first_seed, args.first_seed + pool)
    print(f"generating {pool} phantoms in {studies}", flush=True)
    write_studies(studies, seeds, ground_truth=truth)
    conf = {"slpt_model_dir": str(workdir / "prompts"), "slpt_min_round_size": str(args.clients),
            "slpt_lease_seconds": str(args.lease_seconds), "slpt_train_after_labels": "1000000"}
    # The tests' network guard: every server process refuses and records connections off this machine.
    guard = {"PYTHONPATH": str(NETGUARD), "SLPT_NETGUARD_LOG": str(workdir / "network.log")}
    server = start_server(workdir, studies, conf, env=guard)
    result = None
    try:
        result = measure(server, args, truth, pool, conf)
        return result
    finally:
        stop_server(server)
        if not args.workdir and not args.keep and result is not None and result["passed"]:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"studies, model folder and server log kept in {workdir}", flush=True)


def measure(server: Server, args, truth: Path, pool: int, conf: dict) -> dict:
    sampler = MemorySampler(server.proc.pid)
    sampler.start()
    # Warm-up: the backbone's first inference allocates what every later one reuses.
    warm = server.post(f"/infer/backbone?image={image_id(args.first_seed)}&output=image")
    warm.raise_for_status()
    baseline = sampler.sample()

    load = Load(server, args, truth)
    annotators = [threading.Thread(target=load.annotator, args=(n,)) for n in range(args.clients)]
    trainer = threading.Thread(target=load.trainer)
    started = time.time()
    print(f"{args.clients} annotators x {args.iterations} labels; training every {args.train_every} labels",
          flush=True)
    for t in (*annotators, trainer):
        t.start()
    for t in annotators:
        t.join()
    annotating_seconds = time.time() - started
    load.annotators_done.set()
    trainer.join()
    # Let the last training and scoring end before checking what is stored.
    final_train = load.wait_task("train", "checker")
    final_scoring = load.wait_task("scoring", "checker")
    wall = time.time() - started
    time.sleep(2 * sampler.every)
    end = sampler.sample()
    sampler.stopped.set()
    sampler.join()

    objects = server.get("/datastore/", params={"output": "all"}).json()["objects"]
    listed = {i for i, o in objects.items() if o["labels"].get("final")}
    stored_sha = {i: hashlib.sha256((server.studies / "labels" / "final" / f"{i}.nii.gz").read_bytes()).hexdigest()
                  for i in listed}
    lost = sorted(i for i in load.saved if i not in listed)
    changed = sorted(i for i in load.saved if i in listed and stored_sha[i] != load.saved[i]["sha256"])
    train_tasks, scoring_tasks = all_tasks(server, "train"), all_tasks(server, "scoring")

    calls = load.call.calls
    failed = [c for c in calls if not (200 <= c.status < 300 or c.status in BUSY_OK.get(c.endpoint, ())
                                       or c.status in NO_TASK_YET.get(c.endpoint, ()))]
    busy = [c for c in calls if c.status in BUSY_OK.get(c.endpoint, ())]
    lease_problems = check_leases(load.served, load.saved)
    peak = max([s["server_mb"] for s in sampler.samples] + [end["server_mb"]])
    peak_total = max(s["server_mb"] + s["subprocesses_mb"] for s in sampler.samples + [end])
    growth = end["server_mb"] - baseline["server_mb"]
    expected_labels = args.clients * args.iterations

    by_endpoint = defaultdict(list)
    for c in calls:
        if c.status != -1:
            by_endpoint[c.endpoint].append(c)
    endpoints = {}
    for name, group in sorted(by_endpoint.items()):
        endpoints[name] = {"requests": len(group), "failed": sum(c in failed for c in group),
                           "per_second": len(group) / wall, **percentiles([c.seconds for c in group])}

    checks = {
        "every annotator saved its labels": (len(load.saved) == expected_labels,
                                             f"{len(load.saved)} of {expected_labels}"),
        "no request failed": (not failed, f"{len(failed)} of {len(calls)} failed"
                              + (f"; {len(busy)} busy answers (429) to the scoring trigger" if busy else "")),
        "no scan handed out twice inside a lease": (
            not lease_problems,
            f"{len(load.served)} scans served, {len({s.image for s in load.served})} distinct"
            + (f"; {lease_problems}" if lease_problems else ", each to one annotator")),
        "no label lost": (not lost and not changed,
                          f"{len(load.saved)} saved, {len(listed & set(load.saved))} listed by "
                          f"/datastore/?output=all, {len(load.saved) - len(changed)} byte-identical"
                          + (f"; lost {lost}" if lost else "") + (f"; changed {changed}" if changed else "")),
        "server memory bounded": (
            growth <= args.rss_growth_limit_mb,
            (f"server RSS {baseline['server_mb']:.0f} MB warmed up, max {peak:.0f} MB, {end['server_mb']:.0f} MB "
            f"at the end ({growth:+.0f} MB; limit +{args.rss_growth_limit_mb} MB); with the training/scoring "
            f"subprocesses at most {peak_total:.0f} MB")),
        "training and scoring tasks ended DONE": (
            all(t.get("status") == "DONE" for t in train_tasks + scoring_tasks) and bool(load.trainings)
            and final_train == "DONE" and final_scoring == "DONE",
            f"training {[t.get('status') for t in train_tasks]}, scoring {[t.get('status') for t in scoring_tasks]}"),
        "no network access": (not (server.workdir / "network.log").exists(), "netguard log empty"),
        "finished within --timeout": (time.time() < load.deadline, f"{wall:.0f} s of {args.timeout} s"),
    }
    return {
        "command": "python -m benchmarks.load " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "pool": pool,
                     "server_conf": {k: v for k, v in conf.items() if k != "slpt_model_dir"}},
        "wall_seconds": round(wall, 1),
        "annotating_seconds": round(annotating_seconds, 1),
        "labels_per_minute": round(60 * len(load.saved) / annotating_seconds, 2),
        "nothing_free_answers": load.nothing_free,
        "trainings": load.trainings,
        "endpoints": endpoints,
        "memory": {"baseline": baseline, "end": end, "server_peak_mb": peak, "with_subprocesses_peak_mb": peak_total,
                   "server_growth_mb": growth, "samples": sampler.samples[:: max(1, len(sampler.samples) // 400)]},
        "checks": {k: {"passed": bool(ok), "detail": detail} for k, (ok, detail) in checks.items()},
        "failed_requests": [asdict(c) for c in failed],
        "passed": all(ok for ok, _ in checks.values()),
    }


def table(result: dict) -> str:
    s = result["settings"]
    training_times = ", ".join(f"{t['seconds']:.0f} s {t['status']}" for t in result["trainings"])
    lines = [
        "# Load: annotators, training and scoring on one server",
        "",
        (f"`{result['command']}` ({result['date']}; {result['machine']['cpus']} CPUs, no GPU; "
        f"MONAI Label on 127.0.0.1)."),
        "",
        (f"{s['clients']} annotator threads, each looping Next Sample -> inference -> save label for "
        f"{s['iterations']} labels, on a pool of {s['pool']} phantoms (rounds of {s['clients']} scans, "
        f"{s['lease_seconds']:.0f} s leases); one more client trains every {s['train_every']} labels "
        f"({s['train_epochs']} epochs x {s['train_iterations']} iterations, patch {s['patch_size']}) and then "
        "asks for scoring."),
        "",
        (f"**{result['labels_per_minute']} labels per minute** ("
        f"{s['clients'] * s['iterations']} labels in {result['annotating_seconds']:.0f} s; "
        f"{result['wall_seconds']:.0f} s until training and scoring were idle); "
        f"{len(result['trainings'])} training rounds "
        f"({training_times}); "
        f"{result['nothing_free_answers']} Next Sample answers of 'nothing free' (the round was leased out)."),
        "",
        "| endpoint | requests | failed | per second | p50 (s) | p90 (s) | p99 (s) | max (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, e in result["endpoints"].items():
        lines.append(f"| `{name}` | {e['requests']} | {e['failed']} | {e['per_second']:.3f} | {e['p50']:.2f} | "
                     f"{e['p90']:.2f} | {e['p99']:.2f} | {e['max']:.2f} |")
    lines += ["", "| check | result | detail |", "| --- | --- | --- |"]
    for name, c in result["checks"].items():
        lines.append(f"| {name} | {'pass' if c['passed'] else '**FAIL**'} | {c['detail']} |")
    lines += [
        "",
        ("Latencies are client-side, from request to full answer. MONAI Label 0.8.5 runs its endpoints on one "
        "event loop, so requests are served one at a time and each queues behind a running inference; "
        "training and scoring run in subprocesses beside it. Percentiles of small samples are rough."),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/results/load"), help="where result.md/json go")
    parser.add_argument("--clients", type=int, default=4, help="annotator threads")
    parser.add_argument("--iterations", type=int, default=3, help="labels each annotator saves")
    parser.add_argument("--train-every", type=int, default=None, help="labels between trainings (default: --clients)")
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--train-iterations", type=int, default=2, help="iterations per training epoch")
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--lease-seconds", type=float, default=600.0)
    parser.add_argument("--first-seed", type=int, default=3000, help="phantom seeds start here")
    parser.add_argument("--idle-wait", type=float, default=1.0, help="pause after a 'nothing free' answer (s)")
    parser.add_argument("--rss-growth-limit-mb", type=int, default=1024,
                        help="largest allowed growth of the server's RSS from warm-up to the end")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    parser.add_argument("--workdir", type=Path, default=None, help="keep studies, model and server log here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary working folder (it is always kept when a check fails)")
    args = parser.parse_args(argv)
    args.train_every = args.train_every or args.clients
    if min(args.clients, args.iterations, args.train_every) < 1:
        parser.error("--clients, --iterations and --train-every must be >= 1")
    result = run(args)
    write_report(args.out, result, table(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
