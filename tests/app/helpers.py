"""What the app tests share: the small phantom spec, polling, named scenario steps and small API calls."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import contextmanager

import nibabel as nib
import pytest

from lib.activelearning.tesla_scoring import ScoreCache
from phantoms.phantom import PhantomSpec
from tools.orthanc import missing as orthanc_missing

# Half the usual cranio-caudal field of view: the liver stays in view (the backbone finds it), and every
# backbone pass, scoring window and training patch costs about half as much.
SMALL = PhantomSpec(z_extent=(96.0, 96.0))


def require_orthanc() -> None:
    """Skip the calling test where Orthanc isn't installed, saying why; fail instead under
    ``SLPT_REQUIRE_BROWSER=1`` (CI), so a run can't pass by skipping the DICOMweb tests."""
    reason = orthanc_missing()
    if reason:
        if os.environ.get("SLPT_REQUIRE_BROWSER"):
            pytest.fail(f"SLPT_REQUIRE_BROWSER is set but Orthanc is missing: {reason}")
        pytest.skip(reason)


def load_response_image(response, tmp_path) -> nib.Nifti1Image:
    """The NIfTI file a MONAI Label ``output=image`` answer carries."""
    path = tmp_path / "result.nii.gz"
    path.write_bytes(response.content)
    return nib.load(path)


def wait(predicate, timeout=600, every=0.5):
    """Poll ``predicate`` until it returns something truthy, and return that."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def tesla_infos(server) -> dict[str, dict]:
    """Each image's TESLA scoring record, read from the score cache of the model folder ``/info/`` names."""
    slpt = server.get("/info/").json()["slpt"]
    records = ScoreCache(slpt["config"]["model_dir"], slpt["tesla"]["datastore"], slpt["backbone"]["sha256"]).records()
    objects = server.get("/datastore/", params={"output": "all"}).json()["objects"]
    return {i: records.get(i, {}) for i in objects}


def next_sample(server, client: str) -> dict:
    r = server.post("/activelearning/tesla", json={"client_id": client})
    assert r.status_code == 200, r.text
    return r.json()


@contextmanager
def step(name: str, log: list, where: Callable[[], str] | None = None):
    """One named step of a scenario test: a failure names the step (and ``where()``, e.g. the browser's
    page), and each step's seconds are printed and kept in ``log``."""
    start = time.time()
    try:
        yield
    except Exception as e:
        place = f" ({where()})" if where else ""
        raise AssertionError(f"step '{name}' failed{place}: {type(e).__name__}: {e}") from e
    log.append((name, round(time.time() - start, 1)))
    print(f"{name}: {log[-1][1]} s", flush=True)
