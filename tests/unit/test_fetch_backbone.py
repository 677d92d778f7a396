"""``make backbone`` (``python -m tools.fetch_backbone``), offline: the zoo's ``wholeBody_ct_segmentation``
zip, stood in for by one in its layout with random weights (``tests/zoo_bundle.py``), served over HTTP on
127.0.0.1 and fetched by MONAI's bundle downloader, as a site mirror would serve it. The command runs with the
network guard of the app tests, so it is shown to reach nothing but the URL it was given."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from monai.networks.nets import SegResNet
from monai.transforms import Spacingd

from apps.slpt.model.backbone import file_sha256, label_channels, load_backbone
from tests import zoo_bundle
from tools.fetch_backbone import fetch_backbone, hosting_url

ZIP = f"{zoo_bundle.NAME}_v{zoo_bundle.VERSION}.zip"
ROOT = Path(__file__).resolve().parents[2]
NETGUARD = ROOT / "tests" / "app" / "netguard"


class Mirror:
    """The stand-in bundle, zipped and served on 127.0.0.1: its URL, the zip's sha1, the weights' sha256, and
    ``requests``, the GETs so far."""

    def __init__(self, folder: Path):
        bundle = zoo_bundle.write_bundle(folder / "src")
        archive = zoo_bundle.zip_bundle(bundle, folder / ZIP)
        self.sha1 = hashlib.sha1(archive.read_bytes()).hexdigest()
        self.weights_sha256 = file_sha256(bundle / "models" / "model.pt")
        self.requests = 0
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                mirror.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{ZIP}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    served = Mirror(tmp_path_factory.mktemp("mirror"))
    yield served
    served.httpd.shutdown()


@pytest.fixture(scope="module")
def fetched(mirror, tmp_path_factory):
    """``python -m tools.fetch_backbone`` run once, as ``make backbone`` runs it but from the mirror: the
    ``models`` folder it filled, its output and the network guard's log."""
    workdir = tmp_path_factory.mktemp("fetched")
    models, log = workdir / "models", workdir / "network.log"
    run = subprocess.run([sys.executable, "-m", "tools.fetch_backbone", "--bundle-dir", str(models),
                          "--url", mirror.url, "--sha1", mirror.sha1], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(NETGUARD), "SLPT_NETGUARD_LOG": str(log)})
    assert run.returncode == 0, run.stderr[-3000:]
    return models, run.stdout, log


def test_the_command_fetches_the_zoo_bundle_and_it_is_the_architecture(mirror, fetched):
    models, stdout, log = fetched
    folder = models / zoo_bundle.NAME
    assert f"--conf slpt_backbone {folder}" in stdout
    assert not log.exists()  # nothing but the mirror on 127.0.0.1 was reached

    backbone = load_backbone(folder)
    net = backbone.network
    assert isinstance(net, SegResNet) and net.init_filters == 32 and tuple(net.blocks_down) == (1, 2, 2, 4)
    assert backbone.out_channels == 105 and backbone.roi_size == (96, 96, 96)
    assert backbone.num_parameters() == 18_799_401
    spacing = next(t for t in backbone.preprocessing if isinstance(t, Spacingd))
    assert tuple(float(p) for p in spacing.spacing_transform.pixdim) == (1.5, 1.5, 1.5)
    assert backbone.identity["sha256"] == mirror.weights_sha256  # the served weights, unchanged
    assert backbone.labels["liver"] == 5 and len(label_channels(backbone.labels, "bone")) == 51


def test_a_second_run_fetches_nothing(mirror, fetched):
    before = mirror.requests
    backbone = fetch_backbone(fetched[0], url=mirror.url, sha1=mirror.sha1)
    assert mirror.requests == before and backbone.identity["sha256"] == mirror.weights_sha256


def test_another_version_in_the_folder_is_not_taken_for_this_one(mirror, fetched):
    with pytest.raises(RuntimeError, match="holds version 0.2.5 of wholeBody_ct_segmentation, not 0.3.0"):
        fetch_backbone(fetched[0], version="0.3.0", url=mirror.url, sha1="")


def test_a_zip_that_fails_its_checksum_is_removed_unopened(mirror, tmp_path):
    with pytest.raises(RuntimeError, match="sha1 check"):
        fetch_backbone(tmp_path, url=mirror.url, sha1="0" * 40)
    assert list(tmp_path.iterdir()) == []


def test_the_default_source_is_the_zoos_record_of_the_version():
    assert hosting_url() == ("https://api.ngc.nvidia.com/v2/models/nvidia/monaihosting/wholebody_ct_segmentation/"
                             "versions/0.2.5/files/wholeBody_ct_segmentation_v0.2.5.zip")
