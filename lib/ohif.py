"""Serves MONAI Label's bundled OHIF with SLPT's small add-on script (``lib/ohif_addon/slpt-ohif.js``).

The OHIF v3 build inside the monailabel 0.8.5 wheel has no Save Label button and shows nothing of why
Next Sample chose a scan. Rebuilding OHIF takes a Node tool chain and far more than a 2-core machine
offers, so the add-on is a plain script that uses what that build already exposes (``window.services``,
``window.cornerstoneTools``): it is added to OHIF's ``index.html`` as it is served, and everything else
under ``/ohif/`` stays byte for byte MONAI Label's.

The panel asks ``/infer/<model>`` for the label alone (``output=image``), an answer with no room for the
result params; so an image answer also carries the out-of-distribution verdict in a header
(:data:`OOD_HEADER`), which the add-on turns into a visible reason instead of a silently empty overlay.
"""

from __future__ import annotations

import json
from pathlib import Path

import monailabel.endpoints.infer as infer_endpoint
import monailabel.endpoints.ohif as ohif_endpoint
from fastapi import HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

ADDON_DIR = Path(__file__).parent / "ohif_addon"
ADDON_PREFIX = "slpt/"  # served at /ohif/slpt/<file>
ADDON_TAG = '<script src="/ohif/slpt/slpt-ohif.js"></script>'
OOD_HEADER = "X-SLPT-Out-Of-Distribution"  # result.out_of_distribution as JSON (apps/slpt/ood.py)


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


def send_response(datastore, result, output, background_tasks, _send=infer_endpoint.send_response):
    """MONAI Label's ``/infer`` answer, with ``result.params.out_of_distribution`` (when the task gave one) in
    the :data:`OOD_HEADER` header of a file answer: OHIF's panel reads only the body, the label."""
    response = _send(datastore, result, output, background_tasks)
    verdict = (result.get("params") or {}).get("out_of_distribution")
    if verdict is not None and isinstance(response, Response):
        response.headers[OOD_HEADER] = json.dumps(verdict, separators=(",", ":"))  # ASCII: a valid header
        # A page from another origin (the panel's Server field) may read it too; CORS hides it otherwise.
        response.headers["Access-Control-Expose-Headers"] = OOD_HEADER
    return response


def install() -> None:
    """Route MONAI Label's ``/ohif/{path}`` endpoint through :func:`get_ohif`, and its ``/infer`` answers
    through :func:`send_response`."""
    ohif_endpoint.get_ohif = get_ohif
    infer_endpoint.send_response = send_response
