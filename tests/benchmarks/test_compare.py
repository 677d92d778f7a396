"""The SLPT-vs-fine-tuning comparison keeps each finished seed, so a stopped run resumes instead of restarting."""

from __future__ import annotations

import dataclasses

import pytest

from apps.slpt import compare


def test_finished_seeds_are_kept_and_reused_only_for_the_same_settings(root, tmp_path, one_thread):
    backbone = root / "models" / "backbone"
    messages: list[str] = []
    first = compare.run(compare.QUICK, backbone, log=messages.append, out=tmp_path)
    assert (tmp_path / "runs" / "seed0.json").exists()
    assert any(m.startswith("[slpt]") for m in messages) and any(m.startswith("[finetune]") for m in messages)

    messages.clear()
    again = compare.run(compare.QUICK, backbone, log=messages.append, out=tmp_path)
    assert again["runs"] == first["runs"]
    assert not any(m.startswith(("[slpt]", "[finetune]")) for m in messages)  # nothing trained twice
    assert any("finished earlier" in m for m in messages)

    longer = dataclasses.replace(compare.QUICK, epochs=2)
    with pytest.raises(ValueError, match="other settings"):
        compare.run(longer, backbone, log=messages.append, out=tmp_path)
    assert (tmp_path / "runs" / "seed0.json").exists()  # the refused run leaves the kept seed alone
