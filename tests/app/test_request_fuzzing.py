"""Request fuzzing through one real server: every bad request of issue 30's outside check, and the ones that
already held, each answered with its status code while the server stays up and nothing stored changes.

One table drives it. For every row the test hashes every file under the server's working folder (the
studies with their labels and ``datastore_v2.json``, the prompt checkpoint folder, the server's temporary
folder, where an upload's copy would be left behind), sends the request, checks the status code and the
words of the message, checks that ``/info/`` still answers, and hashes again: byte-identical.

The server runs with ``--conf slpt_max_upload_mb 1`` so that the size limit costs a 2 MB upload, not a
gigabyte.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import requests

from phantoms.io import image_id
from tests.app.conftest import stop_server
from tests.app.helpers import load_response_image, wait
from tests.app.test_bad_input import image_of, nifti_bytes, refused, snapshot, start_watched_server
from tools.server import Server

pytestmark = pytest.mark.server

SEEDS = (910, 911)
FIRST = image_id(SEEDS[0])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_watched_server(tmp_path_factory.mktemp("fuzz"), SEEDS, conf={"slpt_max_upload_mb": "1"})
    yield srv
    stop_server(srv)


# ---- the requests ---------------------------------------------------------------------------------------

def _infer(model: str, image: str, **kw) -> Callable[[Server], requests.Response]:
    return lambda srv: srv.post(f"/infer/{model}", params={"image": image}, **kw)


def _infer_raw(model: str, query: str) -> Callable[[Server], requests.Response]:
    """The query string exactly as written: requests would percent-encode '/' in ``params``."""
    return lambda srv: requests.post(f"{srv.url}/infer/{model}?{query}", timeout=600)


def _infer_path(model: str, where: Callable[[Server], object]) -> Callable[[Server], requests.Response]:
    return lambda srv: srv.post(f"/infer/{model}", params={"image": str(where(srv))})


def _upload(content: bytes | Callable[[Server], bytes], filename="scan.nii.gz", model="backbone"):
    def send(srv):
        data = content(srv) if callable(content) else content
        return srv.post(f"/infer/{model}", files={"file": (filename, data)})

    return send


def _label(make: Callable[[Server], bytes], tag="final", image=None, filename="label.nii.gz", params=None):
    def send(srv):
        data = {"params": params} if params is not None else None
        return srv.put("/datastore/label", params={"image": image or FIRST, "tag": tag},
                       files={"label": (filename, make(srv))}, data=data)

    return send


def _grid_label(values=(0, 1, 2), dtype=np.uint8, shape_change=0, affine_change=None, extra_dims=()):
    """A label on the first image's grid (or with a changed shape, affine or extra dimensions)."""

    def make(srv):
        image = image_of(srv, FIRST)
        shape = tuple(n + shape_change for n in image.shape) + extra_dims
        affine = image.affine if affine_change is None else affine_change @ image.affine
        return nifti_bytes(np.resize(np.array(values, dtype), shape), affine)

    return make


def _scan(shape=(24, 24, 12), fill=None) -> bytes:
    scan = np.random.default_rng(0).normal(40, 20, shape).astype(np.float32)
    return nifti_bytes(scan if fill is None else np.full(shape, fill, np.float32), np.diag([1.5, 1.5, 3.0, 1.0]))


def _truncated(srv) -> bytes:
    return _grid_label()(srv)[:200]


GARBAGE = b"\x89PNG\r\n\x1a\n not a volume" * 10
MIRRORED = np.diag([-1.0, -1.0, 1.0, 1.0])  # the RAS numbers read as LPS (or the reverse)
DOUBLED = np.diag([2.0, 2.0, 2.0, 1.0])  # applied to the world: twice the image's spacing and origin


@dataclass(frozen=True)
class Case:
    name: str
    send: Callable[[Server], requests.Response]
    status: int
    words: tuple[str, ...] = ()


NO_IMAGE = "in the datastore: image is a datastore id"
CASES = [
    # -- issue 30's table: what did not hold on main
    Case("infer-absolute-path-outside-datastore", _infer_path("backbone", lambda s: s.workdir / "truth" /
                                                               f"{FIRST}.nii.gz"), 404, (NO_IMAGE,)),
    Case("infer-absolute-path-of-a-datastore-file", _infer_path("backbone", lambda s: s.studies /
                                                                 f"{FIRST}.nii.gz"), 404, (NO_IMAGE,)),
    Case("infer-absolute-path-missing", _infer_path("backbone", lambda s: "/no/such/scan.nii.gz"), 404, (NO_IMAGE,)),
    Case("infer-traversal-backbone", _infer_raw("backbone", "image=../../etc/passwd"), 404,
         ("no image '../../etc/passwd'",)),
    Case("infer-traversal-slpt", _infer_raw("slpt", "image=../../etc/passwd"), 404, ("no image '../../etc/passwd'",)),
    Case("infer-traversal-url-encoded", _infer_raw("slpt", "image=..%2F..%2Fetc%2Fpasswd"), 404,
         ("no image '../../etc/passwd'",)),
    Case("infer-traversal-double-encoded", _infer_raw("backbone", "image=..%252F..%252Fetc%252Fpasswd"), 404,
         (NO_IMAGE,)),
    Case("infer-path-in-params", lambda s: s.post("/infer/backbone", params={"image": FIRST},
                                                  data={"params": json.dumps({"image": "/etc/passwd"})}),
         404, ("no image '/etc/passwd'",)),
    Case("infer-no-image", lambda s: s.post("/infer/backbone"), 422, ("no image: name a datastore image",)),
    Case("batch-infer-paths", lambda s: s.post("/batch/infer/backbone", json={"images": ["/etc/passwd"]}), 404,
         ("no image '/etc/passwd'",)),
    Case("wsi-infer-path", lambda s: s.post("/infer/wsi/backbone", params={"image": "/etc/passwd"}, json={}), 404,
         ("no whole-slide",)),
    Case("download-image-traversal", lambda s: s.get("/datastore/image", params={"image": "../truth/x"}), 404),
    Case("download-label-traversal", lambda s: s.get("/datastore/label", params={"label": "../../truth/x",
                                                                                 "tag": "final"}), 404),
    Case("infer-upload-garbage", _upload(GARBAGE), 422, ("uploaded image is not a readable NIfTI image",)),
    Case("infer-upload-empty", _upload(b""), 422, ("uploaded image file is empty (0 bytes)",)),
    Case("infer-upload-4d", _upload(_scan((16, 16, 8, 3))), 422, ("got 4 dimension(s)",)),
    Case("infer-upload-nan", _upload(_scan(fill=np.nan)), 422, ("image is all NaN",)),
    Case("infer-upload-truncated-gzip", _upload(_scan()[:300]), 422, ("uploaded image is not a readable",)),
    Case("infer-upload-wrong-type", _upload(b"0,1\n", filename="scan.csv"), 422, ("'.csv' is not supported",)),
    Case("infer-upload-too-large", _upload(np.random.default_rng(0).bytes(2 * 1024 * 1024)), 422,
         ("over the server's limit of 1 MB",)),
    Case("train-patch-size-huge", lambda s: s.post("/train/slpt", json={"patch_size": 100000}), 422,
         ("'patch_size'", "outside its range [16, 192]")),
    Case("label-mirrored-affine", _label(_grid_label(affine_change=MIRRORED)), 422,
         ("label geometry differs", "orientation")),
    Case("label-doubled-spacing", _label(_grid_label(affine_change=DOUBLED)), 422, ("label geometry differs",
                                                                                    "spacing")),
    # -- and what already held
    Case("label-shape", _label(_grid_label(shape_change=1)), 422, ("differs from its image's shape",)),
    Case("label-values", _label(_grid_label(values=(0, 1, 2, 5))), 422, ("values [5] outside {0, 1, 2}",)),
    Case("label-nan", _label(_grid_label(values=(0, 1, np.nan), dtype=np.float32)), 422, ("non-integer",)),
    Case("label-fractional", _label(_grid_label(values=(0, 1, 1.5), dtype=np.float32)), 422, ("non-integer",)),
    Case("label-garbage", _label(lambda s: GARBAGE), 422, ("label is not a readable NIfTI image",)),
    Case("label-truncated-gzip", _label(_truncated), 422, ("label is not a readable",)),
    Case("label-empty", _label(lambda s: b""), 422, ("label file is empty (0 bytes)",)),
    Case("label-4d", _label(_grid_label(extra_dims=(2,))), 422, ("label must be a 3D volume",)),
    Case("label-too-large", _label(lambda s: np.random.default_rng(1).bytes(2 * 1024 * 1024)), 422,
         ("over the server's limit of 1 MB",)),
    Case("label-unknown-image", _label(_grid_label(), image="no_such_scan"), 404, ("no image 'no_such_scan'",)),
    Case("label-tag-traversal", _label(_grid_label(), tag="../../escaped"), 422, ("label tag '../../escaped'",)),
    Case("label-malformed-params", _label(_grid_label(), params="{oops"), 422, ("params is not valid JSON",)),
    Case("image-id-traversal", lambda s: s.put("/datastore/image", params={"image": "../escaped"},
                                               files={"file": ("scan.nii.gz", _scan())}), 422,
         ("image id '../escaped' is not allowed",)),
    Case("infer-unknown-image", _infer("backbone", "no_such_scan"), 404, ("no image 'no_such_scan'",)),
    Case("infer-unknown-model", lambda s: s.post("/infer/nonexistent", params={"image": FIRST}), 404,
         ("no model 'nonexistent'",)),
    Case("train-unknown-model", lambda s: s.post("/train/nonexistent", json={}), 404, ("no train task",)),
    Case("unknown-strategy", lambda s: s.post("/activelearning/nonexistent", json={}), 404,
         ("no strategy 'nonexistent'",)),
    Case("infer-malformed-params", lambda s: s.post("/infer/slpt", params={"image": FIRST},
                                                    data={"params": "{not json"}), 422, ("params is not valid JSON",)),
    Case("infer-params-not-an-object", lambda s: s.post("/infer/slpt", params={"image": FIRST},
                                                        data={"params": "[1, 2]"}), 422, ("must be a JSON object",)),
    Case("infer-bad-output", lambda s: s.post("/infer/slpt", params={"image": FIRST},
                                              data={"params": '{"slpt_output": "bogus"}'}), 422, ("'slpt_output'",)),
    Case("train-epochs-text", lambda s: s.post("/train/slpt", json={"max_epochs": "abc"}), 422, ("expects int",)),
    Case("train-epochs-negative", lambda s: s.post("/train/slpt", json={"max_epochs": -1}), 422, ("must be >= 1",)),
    Case("train-epochs-huge", lambda s: s.post("/train/slpt", json={"max_epochs": 10 ** 9}), 422,
         ("'max_epochs'", "outside its range [1, 5000]")),
    Case("train-iterations-huge", lambda s: s.post("/train/slpt", json={"iterations_per_epoch": 10 ** 6}), 422,
         ("outside its range [1, 1000]",)),
    Case("train-batch-size-zero", lambda s: s.post("/train/slpt", json={"batch_size": 0}), 422, ("'batch_size'",)),
    Case("train-batch-size-huge", lambda s: s.post("/train/slpt", json={"batch_size": 4096}), 422,
         ("outside its range [1, 32]",)),
    Case("train-learning-rate-huge", lambda s: s.post("/train/slpt", json={"learning_rate": 100}), 422,
         ("outside its range [1e-06, 1]",)),
    Case("train-learning-rate-zero", lambda s: s.post("/train/slpt", json={"learning_rate": 0}), 422, ("> 0",)),
    Case("train-unknown-parameter", lambda s: s.post("/train/slpt", json={"max_epoch": 3}), 422,
         ("unknown parameter 'max_epoch'",)),
    Case("train-all-bad-values", lambda s: s.post("/train/", json={"slpt": {"patch_size": 100000}}), 422,
         ("outside its range",)),
    Case("activelearning-bad-lease", lambda s: s.post("/activelearning/tesla", json={"lease_seconds": -60}), 422,
         ("must be > 0",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request_is_refused_and_nothing_changes(server, case):
    before = snapshot(server.workdir)
    r = case.send(server)
    assert r.status_code == case.status, (r.status_code, r.text[:500])
    if case.words:
        refused(r, case.status, *case.words)
    assert server.proc.poll() is None and server.get("/info/").status_code == 200, "the server went down"
    after = snapshot(server.workdir)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"files changed by a refused request: {changed}"
    if case.name.startswith(("train", "batch")):
        assert server.get("/train/").status_code == 404 and server.get("/batch/infer").status_code == 404, \
            "a task subprocess was started"


def test_a_path_gets_the_same_answer_whether_or_not_it_exists(server):
    """Nothing about the server's disk can be learnt from /infer: only the quoted value differs."""
    answers = []
    for path in (server.workdir / "truth" / f"{FIRST}.nii.gz", server.workdir / "no_such.nii.gz"):
        r = server.post("/infer/backbone", params={"image": str(path)})
        answers.append((r.status_code, r.json()["detail"].replace(repr(str(path)), "<image>")))
    assert answers[0] == answers[1]


def test_an_uploaded_scan_is_still_segmented_and_its_copy_removed(server, tmp_path):
    """Uploads stay the way to run on a scan outside the datastore; the server keeps no copy of it."""
    before = snapshot(server.workdir)
    image = image_of(server, FIRST)  # every other slice: a scan the datastore does not hold
    content = nifti_bytes(np.asarray(image.dataobj)[:, :, ::2], image.affine @ np.diag([1.0, 1.0, 2.0, 1.0]))
    r = server.post("/infer/backbone", params={"output": "image"}, files={"file": ("scan.nii.gz", content)})
    assert r.status_code == 200, r.text[:500]
    assert load_response_image(r, tmp_path).shape == image.shape[:2] + (len(range(0, image.shape[2], 2)),)
    wait(lambda: snapshot(server.workdir) == before, timeout=30, every=0.2)  # the result goes after sending
