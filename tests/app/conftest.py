"""A real MONAI Label server (``monailabel start_server``, see ``benchmarks/server.py``) on loopback, fed with
phantom studies."""

from __future__ import annotations

import pytest

from apps.slpt.data import image_id, write_studies
from apps.slpt.phantom import phantom_header
from benchmarks.server import start_server, stop_server  # the test modules import them from here


def seed_with(orientation: str, first: int = 500) -> int:
    return next(s for s in range(first, first + 200) if phantom_header(s)["orientation"] == orientation)


@pytest.fixture(scope="session")
def demo_seeds() -> dict[str, int]:
    return {"RAS": seed_with("RAS"), "LPS": seed_with("LPS")}


@pytest.fixture(scope="session")
def server(tmp_path_factory, demo_seeds):
    workdir = tmp_path_factory.mktemp("server")
    studies = workdir / "studies"
    write_studies(studies, demo_seeds.values(), ground_truth=workdir / "truth")
    srv = start_server(workdir, studies, {"slpt_model_dir": str(workdir / "prompts")})
    yield srv
    stop_server(srv)


@pytest.fixture
def ids(demo_seeds) -> dict[str, str]:
    return {k: image_id(v) for k, v in demo_seeds.items()}
