"""Bad input through the real server: a clear 4xx, and nothing stored changes.

Every refusal test checks three things: the status code, a message that names the problem, and that every
file under the server's working folder (studies, labels, ``datastore_v2.json``, the prompt checkpoint folder,
and whatever a path-traversal attempt would have reached) is byte-identical afterwards. The last test checks
that valid uploads are still accepted, on a server of its own.

Where MONAI Label 0.8.5 itself would answer 500 before the app's code runs (a malformed multipart
``params`` field: ``json.loads`` inside its endpoints), ``lib/endpoints.py`` guards the endpoint; the tests
below check the guarded answer.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests
import torch

from phantoms.io import image_id, write_studies
from tests.app.conftest import start_server, stop_server
from tests.app.helpers import SMALL, wait
from tools.server import Server

pytestmark = pytest.mark.server

SEEDS = (900, 901)


def start_watched_server(workdir: Path, seeds, settle: bool = True, conf: dict[str, str] | None = None) -> Server:
    """A server on small phantoms whose every file, its temporary uploads included, lies under ``workdir``;
    with ``settle``, once its start-up scoring has finished writing. ``conf`` adds ``--conf`` settings."""
    studies = workdir / "studies"
    write_studies(studies, seeds, spec=SMALL, ground_truth=workdir / "truth")
    # The server's temporary files (MONAI Label copies every upload there) go under the watched folder
    # too, so a refused upload that leaves its copy behind counts as a change.
    (workdir / "tmp").mkdir()
    srv = start_server(workdir, studies, {"slpt_model_dir": str(workdir / "prompts"), **(conf or {})},
                       env={"TMPDIR": str(workdir / "tmp")})
    srv.model_dir = workdir / "prompts"
    srv.model_dir.mkdir(exist_ok=True)
    if settle:  # start-up scoring writes embeddings into datastore_v2.json; snapshots come after it
        wait(lambda: srv.get("/scoring/").status_code != 200
             or srv.get("/scoring/").json().get("status") in ("DONE", "ERROR"), timeout=600, every=1)
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_watched_server(tmp_path_factory.mktemp("bad_input"), SEEDS)
    yield srv
    stop_server(srv)


@pytest.fixture
def ids():
    return [image_id(s) for s in SEEDS]


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the server's own log."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "server.log"}


@contextmanager
def nothing_changes(server):
    before = snapshot(server.workdir)
    yield
    after = snapshot(server.workdir)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"files changed by a refused request: {changed}"


def nifti_bytes(array, affine=None) -> bytes:
    img = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine)
    return gzip.compress(img.to_bytes())


def image_of(server, name):
    return nib.load(server.studies / f"{name}.nii.gz")


def put_label(server, image, content: bytes, filename="label.nii.gz", tag="final", params=None):
    data = {"params": params} if params is not None else None
    return server.put("/datastore/label", params={"image": image, "tag": tag},
                      files={"label": (filename, content)}, data=data)


def put_image(server, image, content: bytes, filename="scan.nii.gz"):
    return server.put("/datastore/image", params={"image": image}, files={"file": (filename, content)})


def refused(r, status, *words):
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, detail
    return detail


# ---- labels ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "content, filename, words",
    [
        (b"\x89PNG\r\n\x1a\n not a volume" * 10, "label.nii.gz", ["label is not a readable NIfTI image"]),
        (gzip.compress(b"gzip, but no NIfTI header" * 20), "label.nii.gz", ["label is not a readable NIfTI image"]),
        (b"0,1,2\n1,2,0\n", "label.csv", ["label type '.csv' is not supported"]),
        (b"\x00\x01\x02" * 100, "label.bin", ["label type '.bin' is not supported"]),
    ],
    ids=["garbage", "gzip-not-nifti", "csv", "ohif-bin"],
)
def test_label_that_is_not_a_readable_image(server, ids, content, filename, words):
    with nothing_changes(server):
        refused(put_label(server, ids[0], content, filename), 422, *words)


def test_label_whose_shape_differs_from_its_image(server, ids):
    image = image_of(server, ids[0])
    wrong = np.zeros(tuple(n + 1 for n in image.shape), np.uint8)
    with nothing_changes(server):
        refused(put_label(server, ids[0], nifti_bytes(wrong, image.affine)), 422,
                f"label shape {wrong.shape} differs from its image's shape {image.shape}")


def test_label_with_values_outside_0_1_2(server, ids):
    image = image_of(server, ids[0])
    label = np.resize(np.array([0, 1, 2, 5, 9], np.uint8), image.shape)
    with nothing_changes(server):
        refused(put_label(server, ids[0], nifti_bytes(label, image.affine)), 422, "values [5, 9] outside {0, 1, 2}")


def test_label_with_non_integer_values(server, ids):
    image = image_of(server, ids[0])
    label = np.resize(np.array([0.0, 1.0, 1.5], np.float32), image.shape)
    with nothing_changes(server):
        refused(put_label(server, ids[0], nifti_bytes(label, image.affine)), 422, "non-integer values, e.g. [1.5]")


def test_label_for_an_unknown_image_id(server):
    label = nifti_bytes(np.zeros((4, 4, 4), np.uint8))
    with nothing_changes(server):
        refused(put_label(server, "no_such_scan", label), 404, "no image 'no_such_scan'")


# ---- empty files and bad images -------------------------------------------------------------------------

def test_empty_label_file(server, ids):
    with nothing_changes(server):
        refused(put_label(server, ids[0], b""), 422, "label file is empty (0 bytes)")


def test_empty_image_file(server):
    with nothing_changes(server):
        refused(put_image(server, "empty_scan", b""), 422, "image file is empty (0 bytes)")


@pytest.mark.parametrize("shape, words", [((32, 32), ["got 2 dimension(s)"]),
                                          ((16, 16, 8, 3), ["got 4 dimension(s), shape (16, 16, 8, 3)"]),
                                          ((16, 16, 8, 1), ["drop the trailing singleton"])],
                         ids=["2d", "4d", "4d-singleton"])
def test_image_that_is_not_3d(server, shape, words):
    scan = np.random.default_rng(0).normal(40, 20, shape).astype(np.float32)
    with nothing_changes(server):
        refused(put_image(server, "not_3d", nifti_bytes(scan)), 422, "image must be a 3D volume", *words)


@pytest.mark.parametrize("fill, words", [(np.nan, "image is all NaN"), (-1000.0, "image is constant")],
                         ids=["nan", "constant"])
def test_image_full_of_nans_or_constant(server, fill, words):
    with nothing_changes(server):
        refused(put_image(server, "flat_scan", nifti_bytes(np.full((16, 16, 8), fill, np.float32))), 422, words)


def test_image_id_that_is_taken(server, ids):
    scan = np.random.default_rng(0).normal(40, 20, (16, 16, 8)).astype(np.float32)
    with nothing_changes(server):
        refused(put_image(server, ids[0], nifti_bytes(scan)), 409, f"image {ids[0]!r} already exists")


# ---- path traversal -------------------------------------------------------------------------------------

def test_image_id_with_path_traversal(server):
    scan = np.random.default_rng(0).normal(40, 20, (16, 16, 8)).astype(np.float32)
    with nothing_changes(server):
        refused(put_image(server, "../escaped", nifti_bytes(scan)), 422, "image id '../escaped' is not allowed")
    assert not list(server.workdir.glob("escaped*"))


@pytest.mark.parametrize("tag", ["../../escaped", "..", "final/../../..", ".hidden"])
def test_label_tag_with_path_traversal(server, ids, tag):
    image = image_of(server, ids[0])
    label = nifti_bytes(np.zeros(image.shape, np.uint8), image.affine)
    with nothing_changes(server):
        refused(put_label(server, ids[0], label, tag=tag), 422, f"label tag {tag!r} is not allowed")
    assert not list(server.workdir.glob("escaped*"))


def test_label_for_an_image_id_with_path_traversal(server):
    with nothing_changes(server):
        refused(put_label(server, "../truth/" + image_id(SEEDS[0]), nifti_bytes(np.zeros((4, 4, 4), np.uint8))),
                404, "no image '../truth/")


# ---- request parameters ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "params, words",
    [
        ({"max_epochs": "abc"}, ["'max_epochs'", "expects int, got 'abc'"]),
        ({"max_epochs": -1}, ["'max_epochs'", "bad value -1", "must be >= 1"]),
        ({"learning_rate": "fast"}, ["'learning_rate'", "expects float"]),
        ({"patch_size": 20}, ["'patch_size'", "multiple of 8"]),
        ({"warm_start": "maybe"}, ["'warm_start'", "must be true or false"]),
        ({"max_epoch": 3}, ["unknown parameter 'max_epoch' for train/slpt"]),
    ],
    ids=["epochs-text", "epochs-negative", "lr-text", "patch-size", "warm-start", "typo"],
)
def test_train_parameters(server, params, words):
    with nothing_changes(server):
        refused(server.post("/train/slpt", json=params), 422, *words)
    assert server.get("/train/").status_code == 404  # no training task was started


@pytest.mark.parametrize(
    "params, words",
    [
        ({"client_id": "r1", "lease_seconds": "soon"}, ["'lease_seconds'", "expects float, got 'soon'"]),
        ({"client_id": "r1", "lease_seconds": -60}, ["'lease_seconds'", "must be > 0"]),
        ({"client_id": "r1", "round_size": 3}, ["unknown parameter 'round_size'", "--conf slpt_*"]),
        ({"client_id": "r1", "min_round_size": 0}, ["'min_round_size' is a server setting"]),
        ({"client_id": ["r1", "r2"]}, ["'client_id'", "non-empty string"]),
    ],
    ids=["lease-text", "lease-negative", "round-size", "round-size-setting", "client-id"],
)
def test_activelearning_parameters(server, params, words):
    with nothing_changes(server):
        refused(server.post("/activelearning/tesla", json=params), 422, *words)


@pytest.mark.parametrize(
    "model, params, words",
    [
        ("slpt", '{"slpt_output": "bogus"}', ["'slpt_output'", "must be one of"]),
        ("slpt", '{"device": "abc"}', ["'device'", "must be 'cpu', 'cuda'"]),
        ("backbone", '{"sw_overlap": "abc"}', ["'sw_overlap' is a server setting (--conf slpt_sw_overlap"]),
        ("backbone", '{"sw_overlap": 2}', ["'sw_overlap' is a server setting"]),
        ("slpt", "{not json", ["params is not valid JSON"]),
        ("slpt", "[1, 2]", ["params must be a JSON object"]),
    ],
    ids=["output", "device", "overlap-text", "overlap-range", "malformed-json", "json-list"],
)
def test_infer_parameters(server, ids, model, params, words):
    with nothing_changes(server):
        refused(server.post(f"/infer/{model}", params={"image": ids[0]}, data={"params": params}), 422, *words)


def test_malformed_params_on_label_upload(server, ids):
    image = image_of(server, ids[0])
    label = nifti_bytes(np.zeros(image.shape, np.uint8), image.affine)
    with nothing_changes(server):
        refused(put_label(server, ids[0], label, params="{oops"), 422, "params is not valid JSON")


# ---- unknown model --------------------------------------------------------------------------------------

def test_deprecated_train_all_endpoint_parameters(server):
    with nothing_changes(server):
        refused(server.post("/train/", json={"slpt": {"max_epochs": "abc"}}), 422, "'max_epochs'", "expects int")
        refused(server.post("/train/", json={"slpt": [1]}), 422, "params['slpt'] must be a JSON object")
    assert server.get("/train/").status_code == 404  # no training task was started


def test_unknown_image_for_delete_and_info_update(server):
    with nothing_changes(server):
        r = requests.delete(server.url + "/datastore/image", params={"id": "../studies"}, timeout=60)
        refused(r, 404, "no image '../studies'")
        refused(server.put("/datastore/image/info", params={"image": "nope"}, data={"info": "{}"}), 404,
                "no image 'nope'")


def test_infer_and_train_for_a_model_that_does_not_exist(server, ids):
    with nothing_changes(server):
        refused(server.post("/infer/nonexistent", params={"image": ids[0]}), 404, "no model 'nonexistent'")
        refused(server.post("/train/nonexistent", json={}), 404, "no train task 'nonexistent'")
        refused(server.post("/activelearning/nonexistent", json={}), 404, "no strategy 'nonexistent'")


# ---- corrupt or foreign prompt checkpoints --------------------------------------------------------------

class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a foreign pickle could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _garbage(path, marker):
    path.write_bytes(b"PK\x03\x04 truncated zip, not a checkpoint" * 5)


def _foreign(path, marker):
    torch.save({"state_dict": {"conv.weight": torch.zeros(2, 2)}, "epoch": 3}, path)  # someone's model.pt


def _truncated(path, marker):
    buffer = io.BytesIO()
    torch.save({"format": "slpt-prompts", "format_version": 1, "state_dict": {"w": torch.zeros(64)}}, buffer)
    path.write_bytes(buffer.getvalue()[:200])


def _runs_code(path, marker):
    torch.save({"format": "slpt-prompts", "format_version": 1, "metadata": _RunsCode(marker), "state_dict": {}},
               path)


def _no_metadata(path, marker):
    torch.save({"format": "slpt-prompts", "format_version": 1, "version": 1, "state_dict": {}}, path)


@pytest.mark.parametrize("write", [_garbage, _foreign, _truncated, _runs_code, _no_metadata],
                         ids=["garbage", "foreign", "truncated", "pickle-runs-code", "no-metadata"])
def test_corrupt_or_foreign_prompt_checkpoint(server, ids, write):
    path, marker = server.model_dir / "prompts_v0001.pt", server.workdir / "code_ran"
    write(path, marker)
    try:
        with nothing_changes(server):
            detail = refused(server.post("/infer/slpt", params={"image": ids[0]}), 409,
                             "prompt checkpoint v1", "prompts_v0001.pt", "cannot be served")
            info = server.get("/info/")  # the server is still up and still describes itself
        assert info.status_code == 200, info.text
        assert "error" in info.json()["models"]["slpt"]["prompt_checkpoint"]
        assert not marker.exists(), "loading the checkpoint ran code from it"
        assert "Traceback" not in detail
    finally:
        path.unlink(missing_ok=True)
    r = server.post("/infer/slpt", params={"image": ids[0]})  # back to "no checkpoint yet"
    refused(r, 409, "no SLPT prompt checkpoint yet")


# ---- and what is valid still works ----------------------------------------------------------------------

def test_valid_uploads_are_still_accepted(tmp_path):
    """On a server of its own: an accepted upload changes the store, and the new scan gets scored in the
    background, which no other test here may see happen."""
    srv = start_watched_server(tmp_path, [SEEDS[0]], settle=False)
    try:
        name = image_id(SEEDS[0])
        image = image_of(srv, name)
        truth = (srv.workdir / "truth" / f"{name}.nii.gz").read_bytes()
        r = put_label(srv, name, truth, filename=f"{name}.nii.gz")
        assert r.status_code == 200, r.text
        assert (srv.studies / "labels" / "final" / f"{name}.nii.gz").read_bytes() == truth

        # What Slicer and OHIF save: NRRD in LPS, on the image's own grid (its geometry, not its numbers).
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
        header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T,
                  "space origin": lps[:3, 3], "kinds": ["domain"] * 3, "encoding": "gzip"}
        nrrd.write(str(tmp_path / "label.nrrd"), np.asarray(nib.load(srv.workdir / "truth" / f"{name}.nii.gz")
                                                            .dataobj).astype(np.uint8), header)
        r = put_label(srv, name, (tmp_path / "label.nrrd").read_bytes(), filename="label.nrrd")
        assert r.status_code == 200, r.text

        scan = np.random.default_rng(1).normal(40, 20, (24, 24, 12)).astype(np.float32)
        r = put_image(srv, "uploaded_001", nifti_bytes(scan, image.affine))
        assert r.status_code == 200, r.text
        assert "uploaded_001" in srv.get("/datastore/", params={"output": "all"}).json()["objects"]
    finally:
        stop_server(srv)
