from __future__ import annotations

from importlib import metadata

import pytest

from lib.environment import check_environment, pinned_versions, version_problems


def test_requirements_pin_the_measured_versions():
    pins = pinned_versions()
    assert pins["monailabel"] == "0.8.5" and pins["monai"] == "1.5.2" and pins["pydicom"] == "2.4.4"


def test_this_environment_passes_the_self_check():
    check_environment()


def test_problems_name_missing_and_wrong_packages():
    installed = {"monai": "1.6.1", "torch": "2.14.1+cu128"}

    def fake_version(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    problems = version_problems({"monai": "1.5.2", "torch": "2.14.1", "pydicom": "2.4.4"}, fake_version)
    assert problems == ["monai is 1.6.1, need monai==1.5.2", "pydicom is not installed (need pydicom==2.4.4)"]


def test_check_environment_refuses_and_names_the_package(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("monai==0.0.1  # wrong on purpose\n")
    with pytest.raises(RuntimeError, match=r"monai is 1\.5\.2, need monai==0\.0\.1"):
        check_environment(req)
