"""Checks in front of MONAI Label's own endpoints, where a request is answered before the app sees it.

MONAI Label runs ``POST /train/{model}`` in a subprocess after answering 200, parses multipart ``params``
with a bare ``json.loads`` (a 500), and loses track of an upload's temporary copy when the endpoint
raises. Its ``/infer`` endpoints also take ``image`` as a path when a file of that name exists on the
server, so any client could make it read (and segment) any volume on its disk. :func:`install` wraps those
endpoints once, at app start-up.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import sys
import tempfile

import monailabel.endpoints.activelearning as activelearning_endpoint
import monailabel.endpoints.batch_infer as batch_infer_endpoint
import monailabel.endpoints.datastore as datastore_endpoint
import monailabel.endpoints.infer as infer_endpoint
import monailabel.endpoints.train as train_endpoint
import monailabel.endpoints.wsi_infer as wsi_infer_endpoint
from fastapi import Depends, HTTPException
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType
from monailabel.interfaces.utils.app import app_instance
from starlette.datastructures import UploadFile  # what requests carry; FastAPI's UploadFile subclasses it

from lib.label_versions import NO_SPACE
from lib.request_params import CHECKED_SETTINGS, InvalidParameter, parse_params
from lib.validation import InvalidUpload, check_image, check_upload_size, upload_suffix


def _sample_with_user(strategy, params=None, user=None, _sample=activelearning_endpoint.sample):
    """MONAI Label records ``params.client_id`` or else the user for each suggestion, but only hands the
    strategy ``params``; pass the user through so leases can fall back to it."""
    _require_pacs()
    params = dict(params or {})
    params.setdefault("client_id", user)
    return _sample(strategy, params, user)


def _require_pacs() -> None:
    """503 now, before anything is leased or started, when the work handed out needs a PACS that does not
    answer: the viewer opens a Next Sample's study from it, and a training round reads its labels from it.
    The listings answer from the last ones the PACS gave (``lib/dicomweb_datastore.py``), which would hand
    out a scan the annotator cannot open. A local studies folder has nothing to check."""
    check = getattr(app_instance().datastore(), "check_pacs", None)
    if check is not None:
        check()


def _run_train_checked(model, params=None, run_sync=False, enqueue=False, _run=train_endpoint.run_model):
    """MONAI Label answers ``POST /train/{model}`` with 200 and runs the task in a subprocess, where a bad
    parameter fails only later; check the model and the parameters here, in the server, first, and hand the
    run the settings they override."""
    params = params or {}
    checked = app_instance().check_request("train", model, {"model": model, **params})
    _require_pacs()
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
    _require_pacs()
    return _run(params, run_sync)


def _guarded_upload(endpoint):
    """Closes three gaps of MONAI Label's endpoints that take files: they parse the multipart ``params``
    field with ``json.loads`` (malformed JSON is a 500), they accept a file of any size, and they delete
    their temporary copy of an upload in a background task, which FastAPI skips when the endpoint raises
    (a refused upload stays in /tmp)."""
    signature = inspect.signature(endpoint)

    @functools.wraps(endpoint)
    def guarded(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        try:
            parse_params(arguments.get("params"))
            for name, upload in arguments.items():
                if isinstance(upload, UploadFile):
                    check_upload_size(_size(upload), app_instance().config.max_upload_mb, f"uploaded {name}")
        except (InvalidParameter, InvalidUpload) as e:
            raise HTTPException(422, str(e)) from e
        try:
            return endpoint(*args, **kwargs)
        except Exception as e:
            for task in arguments["background_tasks"].tasks:  # the endpoint's own clean-up (remove_file)
                if not task.is_async:
                    task.func(*task.args, **task.kwargs)
            if isinstance(e, OSError) and e.errno in NO_SPACE:  # MONAI Label's copy of the upload: a 500
                where = (os.path.dirname(e.filename) if e.filename
                         else f"the server's temp folder {tempfile.gettempdir()}")
                raise HTTPException(507, f"no space left on device: the upload could not be stored in {where}; "
                                         "nothing was saved. Free space on that disk, then try again.") from e
            raise

    return guarded


def _save_label_versioned(background_tasks, image, params="{}", tag=DefaultLabelTag.FINAL.value, label=None,
                          user=None, _save=datastore_endpoint.save_label):
    """``PUT /datastore/label``, recording who saved the label (MONAI Label passes its user to the endpoint
    but not into the label's info), and answering which version the label became and which earlier label
    it replaced (``replaces``: version, user, client id and time; ``None`` when the scan had no final
    label), as the datastore recorded them."""
    save_params = parse_params(params)
    if user:
        save_params["user"] = user  # the authenticated user ("admin" when auth is off), not the client's word
    result = _save(background_tasks, image, json.dumps(save_params), tag, label, user)
    if (tag or DefaultLabelTag.FINAL.value) == DefaultLabelTag.FINAL.value:
        info = app_instance().datastore().get_label_info(result["label"], DefaultLabelTag.FINAL.value) or {}
        result["version"], result["replaces"] = info.get("version"), info.get("replaces")
    return result


def _label_versions(image: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    """Every kept version of a scan's final label, oldest first: who saved it, when, and whether it is the
    current label."""
    return {"image": image, "versions": _versioned_store().list_label_versions(image)}


async def _restore_label_version(image: str, version: int, client_id: str | None = None,
                                 user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
    """Make an earlier version the scan's final label again; the restore is a new version, and nothing is
    overwritten. Asynchronous like MONAI Label's save, so saves and restores run one at a time."""
    store, app = _versioned_store(), app_instance()
    label_id = store.restore_label_version(image, version, {"user": user.username, "client_id": client_id})
    result = app.on_save_label(image, label_id) or {}
    info = store.get_label_info(label_id, DefaultLabelTag.FINAL.value)
    return {**result, "image": image, "label": label_id, "version": info.get("version"),
            "restored_from": version, "replaces": info.get("replaces")}


def _versioned_store():
    store = app_instance().datastore()
    if not hasattr(store, "list_label_versions"):
        raise HTTPException(404, f"this datastore ({type(store).__name__}) keeps no label versions")
    return store


def _datastore_images_only(endpoint):
    """``POST /infer/{model}`` reads ``image`` (or a multipart ``params`` "image") as a datastore id only,
    and checks an uploaded ``file`` like a scan added to the datastore before inference reads it.

    MONAI Label takes ``image`` as a path whenever a file of that name exists, which made every volume on
    the server's disk readable; here an id the datastore does not list is a 404 whose message does not
    depend on what exists on disk. What still reaches MONAI Label in an id's place is the server's own:
    the checked temporary copy of an upload (removed afterwards, refused or not) or a session's image.
    """
    signature = inspect.signature(endpoint)

    @functools.wraps(endpoint)
    def guarded(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        arguments, app = bound.arguments, app_instance()
        named = parse_params(arguments.get("params")).get("image")  # overrides everything in MONAI Label
        if named is not None:
            _require_image(app, named)
        upload, session_id = arguments.get("file"), arguments.get("session_id")
        session = app.sessions().get_session(session_id) if session_id and app.sessions() else None
        image = arguments.get("image") or ""
        if upload is None and session is None and named is None:  # the query's image is what runs
            if not image:
                raise HTTPException(422, "no image: name a datastore image (?image=<id>), upload a file "
                                         "(multipart field 'file') or give a session_id")
            _require_image(app, image)
        elif image and not _known_image(app, image):
            # Beside an upload or a session it only serves what needs the stored scan (a DICOM SEG answer);
            # an unknown id must not reach MONAI Label, which would try it as a path.
            arguments["image"] = ""
        if upload is None:
            return endpoint(*bound.args, **bound.kwargs)
        path = _checked_copy(upload)
        try:  # MONAI Label's endpoint would copy the upload again; hand it the checked copy instead
            arguments["image"], arguments["file"] = path, None
            return endpoint(*bound.args, **bound.kwargs)
        finally:
            os.remove(path)

    return guarded


def _no_wsi(*args, **kwargs):
    """The app's models segment CT volumes; MONAI Label's whole-slide endpoints would run them on whatever
    ``image`` names, a path included."""
    raise HTTPException(404, "this app has no whole-slide (WSI) models; use POST /infer/{model}")


def _run_batch_checked(model, images=BatchInferImageType.IMAGES_ALL, params=None, run_sync=False,
                       _run=batch_infer_endpoint.run):
    """``POST /batch/infer/{model}`` with ``params.images`` as a list runs inference on each entry in a
    subprocess, where MONAI Label takes a path as readily as an id: every entry must be a datastore id."""
    chosen = (params or {}).get("images")
    if isinstance(chosen, list):
        for image in chosen:
            _require_image(app_instance(), image)
    elif chosen is not None and chosen not in {t.value for t in BatchInferImageType}:
        raise HTTPException(422, f"params.images must be a list of image ids or one of "
                                 f"{sorted(t.value for t in BatchInferImageType)}, got {chosen!r}")
    return _run(model, images, params, run_sync)


def _known_image(app, image) -> bool:
    return isinstance(image, str) and image in app.datastore().list_images()


def _require_image(app, image) -> None:
    """404 unless ``image`` is an id the datastore lists; the message is the same for a path that exists."""
    if not _known_image(app, image):
        raise HTTPException(404, f"no image {image!r} in the datastore: image is a datastore id (GET /datastore/ "
                                 "lists them), never a path; to run on another scan, upload it as 'file'")


def _size(upload: UploadFile) -> int:
    """Bytes of an upload, which the server has already received (in memory or a spooled file)."""
    upload.file.seek(0, os.SEEK_END)
    size = upload.file.tell()
    upload.file.seek(0)
    return size


def _checked_copy(upload: UploadFile) -> str:
    """A temporary copy of an uploaded scan that passed :func:`lib.validation.check_image` (the caller
    removes it); else 422 with the reason, and no copy left behind."""
    try:
        suffix = upload_suffix(upload.filename or "upload.nii.gz", "uploaded file")
    except InvalidUpload as e:
        raise HTTPException(422, str(e)) from e
    handle, path = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            shutil.copyfileobj(upload.file, out)
        check_image(path)
    except InvalidUpload as e:
        os.remove(path)
        raise HTTPException(422, f"uploaded {e}") from e
    except BaseException:
        os.remove(path)
        raise
    return path


def install() -> None:
    """Put the checks above in front of MONAI Label's endpoints (idempotent: a wrapped endpoint is not
    wrapped again). The routes look these functions up in their modules at request time."""
    if getattr(activelearning_endpoint.sample, "slpt_wrapped", False):
        return
    replacements = [
        (activelearning_endpoint, "sample", _sample_with_user),
        (train_endpoint, "run_model", _run_train_checked),
        (train_endpoint, "run", _run_all_train_checked),
        (infer_endpoint, "run_inference", _guarded_upload(_datastore_images_only(infer_endpoint.run_inference))),
        (wsi_infer_endpoint, "run_wsi_inference", _no_wsi),
        (batch_infer_endpoint, "run", _run_batch_checked),
        (datastore_endpoint, "save_label", _guarded_upload(_save_label_versioned)),
        (datastore_endpoint, "add_image", _guarded_upload(datastore_endpoint.add_image)),
    ]
    for module, name, replacement in replacements:
        replacement.slpt_wrapped = True
        setattr(module, name, replacement)
    server = sys.modules.get("monailabel.app")  # only the server; task subprocesses have no routes
    if server is not None:
        prefix = settings.MONAI_LABEL_API_STR + "/datastore/label/versions"
        server.app.add_api_route(prefix, _label_versions, methods=["GET"], tags=["Datastore"],
                                 summary="List the kept versions of a scan's final label")
        server.app.add_api_route(prefix + "/restore", _restore_label_version, methods=["POST"], tags=["Datastore"],
                                 summary="Restore an earlier version of a scan's final label (as a new version)")
