from __future__ import annotations

import pytest

from apps.slpt.config import SLPTConfig


def test_defaults_and_relative_backbone_path(tmp_path):
    cfg = SLPTConfig.from_conf({"server_mode": "true"}, app_dir=tmp_path)
    assert cfg.backbone == str(tmp_path / "models" / "backbone") and cfg.sw_overlap == 0.25


def test_values_are_typed():
    cfg = SLPTConfig.from_conf({"slpt_sw_overlap": "0.5", "slpt_backbone": "/abs/bundle"})
    assert cfg.sw_overlap == 0.5 and cfg.backbone == "/abs/bundle"


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"slpt_sw_overlop": "0.5"}, "unknown setting 'slpt_sw_overlop'; known settings: .*slpt_sw_overlap"),
        ({"slpt_sw_overlap": "half"}, "'slpt_sw_overlap' expects float, got 'half'"),
        ({"slpt_sw_overlap": "1.5"}, r"slpt_sw_overlap must be in \[0, 1\)"),
    ],
)
def test_bad_settings_are_named(conf, message):
    with pytest.raises(ValueError, match=message):
        SLPTConfig.from_conf(conf)
