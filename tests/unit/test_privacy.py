"""Patient attributes stay out of the log (``lib.privacy``)."""

from __future__ import annotations

import logging

import pytest

from lib import privacy

# What MONAI Label's DICOMweb datastore puts into image and label info, and MONAI Label logs.
INFO = {"SeriesInstanceUID": "1.2.3.4", "StudyDate": "20240101", "Modality": "CT", "PatientID": "MRN-0042",
        "StudyInstanceUID": "1.2.3"}


@pytest.mark.parametrize(
    "text",
    [
        f"Next sample: {INFO}",
        '{"PatientName": "Doe^Jane", "PatientID": "MRN-0042", "Modality": "CT"}',
        "PatientID=MRN-0042, PatientBirthDate=19700101 Modality=CT",
        "OtherPatientIDs: ['MRN-0042', 'X-1'] AccessionNumber: 'ACC9'",
        '"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}, '
        '"00100020": {"vr": "LO", "Value": ["MRN-0042"]}',
        "'PatientName': {'Alphabetic': 'Doe^Jane'}",
    ],
)
def test_patient_values_are_redacted_and_the_rest_kept(text):
    out = privacy.redact(text)
    assert "MRN-0042" not in out and "Doe^Jane" not in out and "19700101" not in out and "ACC9" not in out
    assert privacy.REDACTED in out


def test_geometry_attributes_that_mention_the_patient_are_kept():
    text = "ImagePositionPatient=[0, 0, 1] ImageOrientationPatient: [1, 0, 0, 0, 1, 0] Modality: CT"
    assert privacy.redact(text) == text


def test_installed_factory_redacts_every_logger_once(caplog):
    previous = logging.getLogRecordFactory()
    try:
        privacy.install()
        privacy.install()  # idempotent: one wrapper, not two
        assert logging.getLogRecordFactory().redacts_patient_attributes
        with caplog.at_level(logging.INFO):
            logging.getLogger("monailabel.endpoints.activelearning").info(f"Next sample: {INFO}")
            logging.getLogger("task_train").info("Label Info: %s", INFO)
            logging.getLogger("x").info("%d scans, %r", 3, "PatientID=7")
        text = caplog.text
        assert "MRN-0042" not in text and "PatientID=7" not in text and "3 scans" in text
        assert text.count(privacy.REDACTED) == 3 and "1.2.3.4" in text
    finally:
        logging.setLogRecordFactory(previous)
