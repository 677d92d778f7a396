"""Orthanc + the demo CT series + the SLPT app on DICOMweb: the chain OHIF needs, with one command.

    python -m tools.ohif_chain                      # make ohif; Ctrl-C stops everything it started
    python -m tools.ohif_chain --count 3 --port 8000 --orthanc-port 8042 --workdir data/ohif

Everything listens on loopback only (Orthanc: refuses remote clients, DICOM port closed; see
``tools/orthanc.py``). Orthanc keeps its database under ``--workdir``, so a second start re-uses the
uploaded series and the labels saved before. The browser test (``tests/browser``) starts the same chain.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from phantoms.dicom import write_ct_series
from phantoms.io import image_id
from phantoms.phantom import make_phantom
from tools.orthanc import Orthanc, start_orthanc, stop_orthanc, upload_series
from tools.server import Server, free_port, start_server, stop_server

# Saved labels are seen by the next request anyway (lib/dicomweb_datastore.py); this bounds how long a
# series added to the PACS by someone else stays invisible to the app.
CACHE_EXPIRY_S = 5


@dataclass
class Chain:
    orthanc: Orthanc
    server: Server
    series: dict[str, str]  # phantom id -> SeriesInstanceUID
    studies: dict[str, str]  # phantom id -> StudyInstanceUID

    @property
    def ohif_url(self) -> str:
        return f"{self.server.url}/ohif/"


def write_demo_dicom(folder: Path, seeds) -> dict[str, dict]:
    """Each phantom as a CT series under ``folder/<id>/``; ``{id: {study_uid, series_uid, files}}``."""
    out = {}
    for seed in seeds:
        ph = make_phantom(seed)
        out[image_id(seed)] = write_ct_series(ph.image, ph.affine, folder / image_id(seed), patient_id=image_id(seed))
    return out


def start_chain(workdir: Path, seeds, port: int | None = None, orthanc_port: int | None = None,
                conf: dict[str, str] | None = None) -> Chain:
    """Orthanc on ``orthanc_port``, the phantoms of ``seeds`` STOWed into it, the app on ``port``."""
    workdir.mkdir(parents=True, exist_ok=True)
    series = write_demo_dicom(workdir / "dicom", seeds)
    orthanc = start_orthanc(workdir / "orthanc", orthanc_port or free_port())
    try:
        upload_series(orthanc.dicomweb, [workdir / "dicom" / name for name in series])
        env = {"MONAI_LABEL_DICOMWEB_CACHE_EXPIRY": str(CACHE_EXPIRY_S),
               "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(workdir / "dicomweb-cache")}
        # generous: the app's cold start (torch, MONAI) on a busy 2-core machine can take minutes
        server = start_server(workdir, orthanc.dicomweb, conf, env=env, port=port, timeout=600)
    except BaseException:
        stop_orthanc(orthanc)
        raise
    return Chain(orthanc, server, {name: info["series_uid"] for name, info in series.items()},
                 {name: info["study_uid"] for name, info in series.items()})


def stop_chain(chain: Chain) -> None:
    """The app first (it talks to Orthanc while it runs), then Orthanc; each by its process group."""
    try:
        stop_server(chain.server)
    finally:
        stop_orthanc(chain.orthanc)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("data/ohif"))
    parser.add_argument("--count", type=int, default=3, help="demo phantoms (seeds 0 .. count-1)")
    parser.add_argument("--port", type=int, default=8000, help="the app (and OHIF) on 127.0.0.1")
    parser.add_argument("--orthanc-port", type=int, default=8042, help="Orthanc on this machine")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")

    chain = start_chain(args.workdir.resolve(), range(args.count), args.port, args.orthanc_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    pids = {"orthanc": chain.orthanc.proc.pid, "monailabel": chain.server.proc.pid}
    (args.workdir / "pids.json").write_text(json.dumps(pids))
    print(f"Orthanc (DICOMweb): {chain.orthanc.dicomweb}\nMONAI Label app:    {chain.server.url}/\n"
          f"OHIF:               {chain.ohif_url}   <- open this; pick a study, then mode 'MONAI Label'\n"
          f"PIDs {pids}; logs in {args.workdir}/. Ctrl-C stops both.", flush=True)
    try:
        while not stop.wait(1):
            if chain.server.proc.poll() is not None or chain.orthanc.proc.poll() is not None:
                print("a process of the chain exited; stopping the rest", flush=True)
                break
    finally:
        stop_chain(chain)
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
