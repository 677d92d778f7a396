"""A private Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the demo and the browser test.

Orthanc 1.10 cannot bind to one interface: its HTTP port listens on all of them. ``RemoteAccessAllowed:
false`` makes it refuse every client that is not on this machine, and ``DicomServerEnabled: false`` closes
the DICOM port, which neither MONAI Label nor OHIF needs (they speak DICOMweb only).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
from dicomweb_client import DICOMwebClient

from tools.server import stop_process, wait_until_answering

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
INSTALL_HINT = "apt-get install --no-install-recommends orthanc orthanc-dicomweb (or: make system-deps)"


@dataclass
class Orthanc:
    """A running Orthanc: its base URL, its DICOMweb root and its process."""

    url: str
    proc: subprocess.Popen
    log: Path

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"


def missing() -> str | None:
    """Why Orthanc can't run here, or ``None`` when it can."""
    for path in (ORTHANC, DICOMWEB_PLUGIN):
        if not os.path.exists(path):
            return f"{path} not found: {INSTALL_HINT}"
    return None


def write_config(workdir: Path, port: int) -> Path:
    storage = workdir / "orthanc-db"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "SLPT demo PACS",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_orthanc(workdir: Path, port: int, timeout: float = 30) -> Orthanc:
    """Start Orthanc on ``port`` with its database under ``workdir``; returns once ``/system`` answers."""
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    config, log = write_config(workdir, port), workdir / "orthanc.log"
    proc = subprocess.Popen([ORTHANC, f"--logfile={log}", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    orthanc = Orthanc(f"http://127.0.0.1:{port}", proc, log)
    failure = wait_until_answering(proc, orthanc.url + "/system", timeout)
    if failure:
        stop_orthanc(orthanc)
        raise RuntimeError(f"Orthanc {failure}; see {log}")
    return orthanc


def stop_orthanc(orthanc: Orthanc) -> None:
    """SIGTERM by PID (Orthanc stops cleanly in a few seconds), SIGKILL after 20 s."""
    stop_process(orthanc.proc)


def upload_series(dicomweb_url: str, folders: list[Path]) -> int:
    """STOW-RS every ``*.dcm`` under ``folders``; returns the number of instances stored."""
    client = DICOMwebClient(url=dicomweb_url)
    count = 0
    for folder in folders:
        datasets = [pydicom.dcmread(f) for f in sorted(Path(folder).glob("*.dcm"))]
        if datasets:
            client.store_instances(datasets)
            count += len(datasets)
    return count


