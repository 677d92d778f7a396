"""Checks in front of MONAI Label's own endpoints, where a request is answered before the app sees it.

MONAI Label runs ``POST /train/{model}`` in a subprocess after answering 200, parses multipart ``params``
with a bare ``json.loads`` (a 500), and loses track of an upload's temporary copy when the endpoint
raises. :func:`install` wraps those endpoints once, at app start-up.
"""

from __future__ import annotations

import functools
import inspect

import monailabel.endpoints.activelearning as activelearning_endpoint
import monailabel.endpoints.datastore as datastore_endpoint
import monailabel.endpoints.infer as infer_endpoint
import monailabel.endpoints.train as train_endpoint
from fastapi import HTTPException
from monailabel.interfaces.utils.app import app_instance

from lib.request_params import CHECKED_SETTINGS, InvalidParameter, parse_params


def _sample_with_user(strategy, params=None, user=None, _sample=activelearning_endpoint.sample):
    """MONAI Label records ``params.client_id`` or else the user for each suggestion, but only hands the
    strategy ``params``; pass the user through so leases can fall back to it."""
    params = dict(params or {})
    params.setdefault("client_id", user)
    return _sample(strategy, params, user)


def _run_train_checked(model, params=None, run_sync=False, enqueue=False, _run=train_endpoint.run_model):
    """MONAI Label answers ``POST /train/{model}`` with 200 and runs the task in a subprocess, where a bad
    parameter fails only later; check the model and the parameters here, in the server, first, and hand the
    run the settings they override."""
    params = params or {}
    checked = app_instance().check_request("train", model, {"model": model, **params})
    return _run(model, {**params, CHECKED_SETTINGS: checked.overrides}, run_sync, enqueue)


def _run_all_train_checked(params=None, run_sync=False, _run=train_endpoint.run):
    """The same for the deprecated ``POST /train/``, whose ``params`` hold one dict per model."""
    app = app_instance()
    params = dict(params or {})
    for model in app.info()["trainers"]:
        own = params.get(model) or {}
        if not isinstance(own, dict):
            raise HTTPException(422, f"params[{model!r}] must be a JSON object, got {type(own).__name__}")
        checked = app.check_request("train", model, {"model": model, **own})
        params[model] = {**own, CHECKED_SETTINGS: checked.overrides}
    return _run(params, run_sync)


def _guarded_upload(endpoint):
    """Closes two gaps of MONAI Label's endpoints that take files: they parse the multipart ``params``
    field with ``json.loads`` (malformed JSON is a 500), and they delete their temporary copy of an upload
    in a background task, which FastAPI skips when the endpoint raises (a refused upload stays in /tmp)."""
    signature = inspect.signature(endpoint)

    @functools.wraps(endpoint)
    def guarded(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        try:
            parse_params(arguments.get("params"))
        except InvalidParameter as e:
            raise HTTPException(422, str(e)) from e
        try:
            return endpoint(*args, **kwargs)
        except Exception:
            for task in arguments["background_tasks"].tasks:  # the endpoint's own clean-up (remove_file)
                if not task.is_async:
                    task.func(*task.args, **task.kwargs)
            raise

    return guarded


def install() -> None:
    """Put the checks above in front of MONAI Label's endpoints (idempotent: a wrapped endpoint is not
    wrapped again). The routes look these functions up in their modules at request time."""
    if getattr(activelearning_endpoint.sample, "slpt_wrapped", False):
        return
    replacements = [
        (activelearning_endpoint, "sample", _sample_with_user),
        (train_endpoint, "run_model", _run_train_checked),
        (train_endpoint, "run", _run_all_train_checked),
        (infer_endpoint, "run_inference", _guarded_upload(infer_endpoint.run_inference)),
        (datastore_endpoint, "save_label", _guarded_upload(datastore_endpoint.save_label)),
        (datastore_endpoint, "add_image", _guarded_upload(datastore_endpoint.add_image)),
    ]
    for module, name, replacement in replacements:
        replacement.slpt_wrapped = True
        setattr(module, name, replacement)
