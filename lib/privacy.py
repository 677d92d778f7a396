"""Keeps patient-identifying DICOM attributes out of the server's log.

The app's own code logs image ids and file paths, never DICOM attributes. MONAI Label's DICOMweb
datastore, however, copies ``PatientID`` (with study date and time) into each image's and label's info,
and MONAI Label logs those dicts (``Next sample: {...}``, ``Label Info: {...}``) into ``logs/app.log``,
which ``GET /logs/`` serves to any user. :func:`install` redacts the values of patient attributes in
every log record of the process, whichever logger or handler it goes to.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

REDACTED = "<redacted>"
# Patient-module keywords (group 0010) and the other direct identifiers of DICOM PS3.15's basic profile
# that clients or datastores put into info dicts.
_KEY = r"(?:Other)?Patient\w*|IssuerOfPatientID|AccessionNumber|ReferringPhysicianName|MedicalRecordLocator"
_OBJECT = r"\{(?:[^{}]|\{[^{}]*\})*\}"  # a dict or JSON object, one level of nesting
_VALUE = rf"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\[[^\]]*\]|{_OBJECT}|[^\s,;)}}\]]+"
# 'PatientID': 'x'   "PatientName": "x"   PatientID=x   PatientID: x   (dict reprs, JSON, key=value)
_KEYWORD_VALUE = re.compile(rf"(?P<key>(?P<q>['\"]?)\b(?:{_KEY})(?P=q)\s*[:=]\s*)(?:{_VALUE})")
# DICOM JSON (DICOMweb answers): "00100020": {"vr": "LO", "Value": ["x"]}
_DICOM_JSON = re.compile(rf"(?P<key>\"0010[0-9A-Fa-f]{{4}}\"\s*:\s*){_OBJECT}")


def redact(text: str) -> str:
    """``text`` with the values of patient-identifying DICOM attributes replaced by ``<redacted>``."""
    text = _KEYWORD_VALUE.sub(lambda m: f"{m['key']}'{REDACTED}'", text)
    return _DICOM_JSON.sub(lambda m: f"{m['key']}\"{REDACTED}\"", text)


def _redact_record(record: logging.LogRecord) -> logging.LogRecord:
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    if isinstance(record.args, tuple):
        args = []
        for arg in record.args:
            if isinstance(arg, (str, dict, list, tuple)):
                text = str(arg)
                cleaned = redact(text)
                arg = cleaned if cleaned != text else arg  # untouched args keep their type for %d, %r
            args.append(arg)
        record.args = tuple(args)
    elif isinstance(record.args, Mapping):
        if "%(" in str(record.msg):  # logger.info("%(info)s", {"info": ...})
            record.args = {k: redact(str(v)) if isinstance(v, (str, dict, list, tuple)) else v
                           for k, v in record.args.items()}
        else:  # logger.info("%s", info): logging unpacks a lone dict argument into record.args
            text = str(record.args)
            cleaned = redact(text)
            if cleaned != text:
                record.args = (cleaned,)
    return record


def install() -> None:
    """Redact every log record this process creates (idempotent). A record factory rather than a handler
    filter, so loggers and handlers that MONAI Label configures later are covered too."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts_patient_attributes", False):
        return

    def factory(*args, **kwargs):
        return _redact_record(previous(*args, **kwargs))

    factory.redacts_patient_attributes = True
    logging.setLogRecordFactory(factory)
