"""Writes the parts of the docs that come from code and results, so no figure or setting is typed by hand.

    python -m tools.docs            # rewrite docs/settings.md and README's status box
    python -m tools.docs --check    # exit 1 if either is out of date (the unit tests run this)

``docs/settings.md`` lists every ``--conf slpt_<name>`` from :class:`apps.slpt.config.SLPTConfig`; the
README's status box reads the latest result files under ``docs/results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from apps.slpt.config import CONF_PREFIX, SLPTConfig

ROOT = Path(__file__).resolve().parents[1]
README, SETTINGS = ROOT / "README.md", ROOT / "docs" / "settings.md"
BEGIN, END = "<!-- status: written by python -m tools.docs -->", "<!-- status end -->"


def settings_page() -> str:
    rows = []
    for f in dataclasses.fields(SLPTConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(default) if isinstance(default, tuple) else default
        rows.append(f"| `{CONF_PREFIX}{f.name}` | `{shown}` | {f.metadata.get('help', '')} |")
    return "\n".join([
        "# Settings",
        "",
        "Written by `python -m tools.docs` from `SLPTConfig` (`apps/slpt/config.py`). Every setting is",
        "`--conf slpt_<name> <value>` on `monailabel start_server`; the app validates them at start-up, and a",
        "typo or an out-of-range value stops it with a message naming the setting.",
        "",
        "| setting | default | meaning |",
        "| --- | --- | --- |",
        *rows,
        "",
    ])


def _read(name: str) -> dict:
    return json.loads((ROOT / "docs" / "results" / name / "result.json").read_text())


def status_box() -> str:
    compare, speed = _read("slpt_vs_finetune"), _read("speed")
    slpt, ft = compare["summary"]["slpt"], compare["summary"]["full_finetune"]
    seeds, labelled = len(slpt["dice_tumor"]["values"]), len(compare["labelled"])
    epoch = speed["training"]
    server = speed["server"]
    met = "met" if slpt["dice_tumor"]["mean"] >= ft["dice_tumor"]["mean"] else "**not met**"
    return "\n".join([
        BEGIN,
        "| bar | SLPT | reference | source |",
        "| --- | --- | --- | --- |",
        f"| tumour Dice per case, {labelled} labels, {seeds} seeds (bar: SLPT ≥ full fine-tuning: {met}) "
        f"| {slpt['dice_tumor']['mean']:.4f} ± {slpt['dice_tumor']['std']:.4f} "
        f"| full fine-tuning {ft['dice_tumor']['mean']:.4f} ± {ft['dice_tumor']['std']:.4f} "
        "| [slpt_vs_finetune](docs/results/slpt_vs_finetune/result.md) |",
        f"| trainable share of the backbone | {slpt['trainable_percent_of_backbone']['mean']:.2f}% | paper: about 6% "
        "| [slpt_vs_finetune](docs/results/slpt_vs_finetune/result.md) |",
        f"| seconds per training epoch, 2 cores | {epoch['slpt']['epoch']['median_s']:.1f} "
        f"| full fine-tuning {epoch['full_finetune']['epoch']['median_s']:.1f} | [speed](docs/results/speed/result.md) |",
        f"| `/infer` on a demo phantom, 2 cores (s) | {server['slpt']['median_s']:.2f} "
        f"| backbone {server['backbone']['median_s']:.2f} ({server['ratio_slpt_vs_backbone']:.2f}x) "
        "| [speed](docs/results/speed/result.md) |",
        "| label efficiency: 94% of full-data Dice at 5% labels, TESLA vs random | not measured yet | paper | "
        "[experiments](docs/experiments.md) |",
        END,
    ])


def readme_with_status(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + status_box() + text[end:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale docs instead of writing them")
    args = parser.parse_args(argv)
    wanted = {SETTINGS: settings_page(), README: readme_with_status(README.read_text())}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python -m tools.docs")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
