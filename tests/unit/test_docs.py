"""The generated docs match the code and the committed results."""

from __future__ import annotations

from tools import docs


def test_settings_page_and_readme_status_box_are_up_to_date():
    assert docs.main(["--check"]) == 0, "run python -m tools.docs and commit the result"


def test_settings_page_lists_every_setting():
    page = docs.settings_page()
    assert "`slpt_epochs`" in page and "`slpt_lease_seconds`" in page and "`slpt_backbone`" in page
