"""Serves MONAI Label's bundled OHIF with SLPT's small add-on script (``lib/ohif_addon/slpt-ohif.js``).

The OHIF v3 build inside the monailabel 0.8.5 wheel has no Save Label button and shows nothing of why
Next Sample chose a scan. Rebuilding OHIF takes a Node tool chain and far more than a 2-core machine
offers, so the add-on is a plain script that uses what that build already exposes (``window.services``,
``window.cornerstoneTools``): it is added to OHIF's ``index.html`` as it is served, and everything else
under ``/ohif/`` stays byte for byte MONAI Label's.
"""

from __future__ import annotations

from pathlib import Path

import monailabel.endpoints.ohif as ohif_endpoint
from fastapi import HTTPException
from fastapi.responses import FileResponse, HTMLResponse

ADDON_DIR = Path(__file__).parent / "ohif_addon"
ADDON_PREFIX = "slpt/"  # served at /ohif/slpt/<file>
ADDON_TAG = '<script src="/ohif/slpt/slpt-ohif.js"></script>'


def get_ohif(path: str, _get=ohif_endpoint.get_ohif):
    """``/ohif/slpt/*`` from ``lib/ohif_addon``; ``index.html`` (OHIF answers every route with it) with the
    add-on's script tag before OHIF's own scripts; anything else as MONAI Label serves it."""
    if path.startswith(ADDON_PREFIX):
        name = path[len(ADDON_PREFIX):]
        file = (ADDON_DIR / name).resolve()
        if file.parent != ADDON_DIR.resolve() or not file.is_file():
            raise HTTPException(404, f"no OHIF add-on file {name!r}")
        return FileResponse(file, media_type="text/javascript")
    response = _get(path)
    if Path(response.path).name != "index.html":
        return response
    html = Path(response.path).read_text()
    # The add-on must run before OHIF reads the MONAI Label server cookie, so it goes first in <head>.
    return HTMLResponse(html.replace("<head>", "<head>" + ADDON_TAG, 1), headers={"Cache-Control": "no-cache"})


def install() -> None:
    """Route MONAI Label's ``/ohif/{path}`` endpoint through :func:`get_ohif`."""
    ohif_endpoint.get_ohif = get_ohif
