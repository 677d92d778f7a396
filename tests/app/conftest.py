"""A real MONAI Label server (``monailabel start_server``, see ``tools/server.py``) on loopback, fed with
phantom studies."""

from __future__ import annotations

from pathlib import Path

import pytest

from phantoms.io import image_id, write_studies
from phantoms.phantom import phantom_header
from tools import server as launcher
from tools.server import stop_server  # the test modules import both from here

NETGUARD = Path(__file__).resolve().parent / "netguard"
_current: list[pytest.Item] = []  # the test being set up or run


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _current[:] = [item]  # before its fixtures, so a module or session fixture's server is checked too


def start_server(workdir: Path, studies, conf: dict[str, str] | None = None, **kw) -> launcher.Server:
    """The real server, with every one of its Python processes loading the network guard
    (``netguard/sitecustomize.py``): a connection that leaves this machine is refused and recorded in
    ``<workdir>/network.log``.

    Refused for a test without the ``server`` marker, which ``make test-fast`` would otherwise run."""
    if _current and _current[0].get_closest_marker("server") is None:
        raise RuntimeError(f"{_current[0].nodeid} starts a MONAI Label server but is not marked: add "
                           "`pytestmark = pytest.mark.server` to its module")
    env = {"PYTHONPATH": str(NETGUARD), "SLPT_NETGUARD_LOG": str(workdir / "network.log"), **kw.pop("env", {})}
    return launcher.start_server(workdir, studies, conf, env=env, **kw)


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


@pytest.fixture(scope="session")
def ids(demo_seeds) -> dict[str, str]:
    return {k: image_id(v) for k, v in demo_seeds.items()}
