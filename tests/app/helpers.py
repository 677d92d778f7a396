from __future__ import annotations

import time

import nibabel as nib


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
    """Each image's TESLA scoring record, as a client reads it from the datastore."""
    objects = server.get("/datastore/", params={"output": "all"}).json()["objects"]
    return {i: o["image"]["info"].get("slpt_tesla", {}) for i, o in objects.items()}


def next_sample(server, client: str) -> dict:
    r = server.post("/activelearning/tesla", json={"client_id": client})
    assert r.status_code == 200, r.text
    return r.json()
