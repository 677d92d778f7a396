"""The generated docs match the code and the committed results, and every relative link resolves."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from apps.slpt.config import SLPTConfig
from tools import docs

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_settings_page_and_generated_blocks_are_up_to_date():
    assert docs.main(["--check"]) == 0, "run python -m tools.docs and commit the result"


def test_every_listed_setting_and_default_is_accepted_by_the_config():
    settings = list(docs.config_settings())
    assert "slpt_epochs" in {s.key for s in settings} and len({s.key for s in settings}) == len(settings)
    for s in settings:
        SLPTConfig.from_conf({s.key: s.default})  # raises on a key or default the config would refuse
    page = docs.settings_page()
    assert all(f"| `{s.key}` | {s.type} | `{s.default}` |" in page for s in settings)


@dataclasses.dataclass
class _Train:
    """Training: one round."""

    epochs: int = dataclasses.field(default=7, metadata={"help": "epochs per round"})


@dataclasses.dataclass
class _Model:
    """Model: the design."""

    stages: tuple[str, ...] = dataclasses.field(default=("a", "b"), metadata={"help": "stages"})


def test_sections_keep_flat_keys_and_name_their_section():
    assert list(docs.config_settings((_Model, _Train))) == [
        docs.Setting("slpt_stages", "names, comma-separated", "a,b", "stages", "Model: the design."),
        docs.Setting("slpt_epochs", "int", "7", "epochs per round", "Training: one round."),
    ]


def test_every_setting_of_the_app_belongs_to_exactly_one_section():
    from apps.slpt.config import SECTIONS

    by_section = [f.name for section in SECTIONS for f in dataclasses.fields(section)]
    assert sorted(by_section) == sorted(f.name for f in dataclasses.fields(SLPTConfig))
    assert len(set(by_section)) == len(by_section)


def test_stale_blocks_are_rewritten_on_their_own_lines_or_inline():
    text = ("x\n<!-- status:begin -->\nSTALE table\n<!-- status:end -->\ny "
            "<!-- epoch-cost:begin -->STALE figure<!-- epoch-cost:end --> z")
    fresh = docs.with_blocks(text)
    assert "STALE" not in fresh
    assert f"<!-- status:begin -->\n{docs.status_box()}\n<!-- status:end -->" in fresh
    assert f"y <!-- epoch-cost:begin -->{docs.epoch_cost()}<!-- epoch-cost:end --> z" in fresh
    assert docs.with_blocks(fresh) == fresh


def test_an_unknown_block_name_is_refused():
    with pytest.raises(ValueError, match="unknown generated block 'nope'"):
        docs.with_blocks("<!-- nope:begin --><!-- nope:end -->")


def test_status_box_follows_the_result_files(tmp_path, monkeypatch):
    for path in docs.RESULTS.glob("*/*.json*"):
        (tmp_path / path.parent.name).mkdir(exist_ok=True)
        shutil.copy(path, tmp_path / path.parent.name / path.name)
    monkeypatch.setattr(docs, "RESULTS", tmp_path)
    assert "| tumour Dice per case" in docs.status_box()

    compare = json.loads((tmp_path / "slpt_vs_finetune" / "result.json").read_text())
    for mean, holds in ((0.9, "| yes |"), (0.0, "| **no** |")):
        compare["summary"]["slpt"]["dice_tumor"]["mean"] = mean
        (tmp_path / "slpt_vs_finetune" / "result.json").write_text(json.dumps(compare))
        row = next(line for line in docs.status_box().splitlines() if line.startswith("| tumour Dice per case"))
        assert f"SLPT {mean:.4f}" in row and holds in row


@pytest.mark.parametrize("page", [docs.README, *sorted((docs.ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_point_to_existing_files(page: Path):
    targets = [t.split("#")[0] for t in LINK.findall(page.read_text())]
    local = [t for t in targets if t and not re.match(r"[a-z]+:", t)]
    missing = [t for t in local if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"
