"""Writes the parts of the docs that come from code and results, so no figure or setting is typed by hand.

    python -m tools.docs            # rewrite docs/settings.md and every generated block
    python -m tools.docs --check    # exit 1 if any of them is out of date (tests/unit/test_docs.py runs this)

A generated block sits between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in ``README.md`` or
``docs/*.md``, on lines of its own or inside a sentence; :data:`BLOCKS` maps each NAME to the function that
writes it. The blocks read the ``result.json`` that each experiment writes under ``docs/results/`` (and the
default backbone's ``metadata.json``); ``docs/settings.md`` is written whole from :func:`config_settings`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

from apps.slpt.config import CONF_PREFIX, SECTIONS, SLPTConfig
from benchmarks.label_efficiency_report import bar_lines
from benchmarks.real_ct import REAL_CT_LIVER_MIN
from benchmarks.real_ct import table as real_ct_markdown_table
from benchmarks.speed import (
    EPOCH_SPEEDUP_VS_V1_MIN,
    EPOCH_VS_FINETUNE_MAX,
    INFER_VS_BACKBONE_MAX,
    MC_DROPOUT_VS_SCORING_MIN,
    REQUEST_VS_BACKBONE_MAX,
    SCORING_VS_INFER_MAX,
    projection,
)

ROOT = Path(__file__).resolve().parents[1]
README, SETTINGS = ROOT / "README.md", ROOT / "docs" / "settings.md"
RESULTS = ROOT / "docs" / "results"
BACKBONE_METADATA = ROOT / "models" / "backbone" / "configs" / "metadata.json"
BLOCK = re.compile(r"<!-- ([a-z0-9-]+):begin -->(.*?)<!-- \1:end -->", re.DOTALL)

# The paper (Bai et al., MICCAI 2023) reports about 6% of parameters tuned and 94% of full-data Dice at 5%
# labels; the speed targets are benchmarks.speed's own.
TRAINABLE_PERCENT_MAX = 6.0


# --- settings -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    """One ``--conf`` key as docs/settings.md lists it."""

    key: str
    type: str
    default: str
    help: str
    section: str = ""


def config_settings(sections: tuple[type, ...] = SECTIONS) -> Iterator[Setting]:
    """Every ``--conf slpt_<name>``, section by section (:data:`apps.slpt.config.SECTIONS`), each in
    declaration order. The only function that knows the config's shape; a section's title is its
    docstring's first line."""
    for section in sections:
        title = section.__doc__.strip().splitlines()[0]
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            kind = hints[f.name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = ",".join(default) if isinstance(default, tuple) else str(default)
            yield Setting(CONF_PREFIX + f.name, _type_name(kind), shown, f.metadata.get("help", ""), title)


def _type_name(kind: object) -> str:
    if typing.get_origin(kind) in (tuple, list):
        return "names, comma-separated"
    return getattr(kind, "__name__", str(kind))


def settings_page() -> str:
    lines = [
        "# Settings",
        "",
        "Written by `python -m tools.docs` from the config dataclass in `apps/slpt/config.py`: edit the field's",
        "help there, not this page. Every setting is `--conf slpt_<name> <value>` on `monailabel start_server`.",
        "The app validates them all at start-up: an out-of-range value stops it with a message naming the",
        "setting, and an unknown `slpt_*` name stops it with the list of valid ones. Lists are comma-separated",
        "(`--conf slpt_stages up_layers.0,up_layers.1`); an unknown stage name lists the decoder's stages.",
        "A training request's `max_epochs` overrides `slpt_epochs` for that run, checked against the same",
        "type and range; how bad request parameters are answered: [robustness.md](robustness.md).",
    ]
    section = None
    for s in config_settings():
        if s.section != section:
            section = s.section
            name, _, about = section.partition(": ")
            lines += ["", f"## {name}", "", about[:1].upper() + about[1:], "",
                      "| setting | type | default | meaning |", "| --- | --- | --- | --- |"]
        lines.append(f"| `{s.key}` | {s.type} | `{s.default}` | {s.help} |")
    return "\n".join(lines) + "\n"


# --- results --------------------------------------------------------------------------------------------


def _result(name: str) -> dict | None:
    path = RESULTS / name / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def _link(name: str, prefix: str = "docs/") -> str:
    return f"[{name}]({prefix}results/{name}/result.md)"


NOT_JUDGED = "—"


def _holds(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _ms(stat: dict) -> str:
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def _stale(r: dict) -> str:
    """A note for a result measured on another backbone than the one that ships: its figures are history."""
    shipped = json.loads(BACKBONE_METADATA.read_text())["sha256"] if BACKBONE_METADATA.exists() else None
    measured = r["backbone"].get("sha256") if isinstance(r.get("backbone"), dict) else None
    return f" (on an earlier backbone, {measured[:8]}: to be re-run)" if measured and measured != shipped else ""


def status_rows() -> list[tuple[str, str, str, str, str]]:
    """(bar, measured, target, holds, source) for the README's status box; target and holds are
    :data:`NOT_JUDGED` where no bar is set."""
    rows = []
    compare, speed, efficiency = _result("slpt_vs_finetune"), _result("speed"), _result("benchmark")
    if compare:
        slpt, ft = compare["summary"]["slpt"], compare["summary"]["full_finetune"]
        seeds, labelled = len(slpt["dice_tumor"]["values"]), len(compare["labelled"])
        rows.append((f"tumour Dice per case, {labelled} labelled and {compare['test_size']} test phantoms, "
                     f"{seeds} seeds", f"SLPT {_ms(slpt['dice_tumor'])}{_stale(compare)}",
                     f"≥ full fine-tuning {_ms(ft['dice_tumor'])}",
                     _holds(slpt["dice_tumor"]["mean"] >= ft["dice_tumor"]["mean"]), _link("slpt_vs_finetune")))
        share = slpt["trainable_percent_of_backbone"]["mean"]
        rows.append(("trainable share of the backbone", f"{share:.2f}%",
                     f"≤ {TRAINABLE_PERCENT_MAX:g}% (the paper's)", _holds(share <= TRAINABLE_PERCENT_MAX),
                     _link("slpt_vs_finetune")))
    real = _result("real_ct")
    if real:
        worst = min(d["liver"] for d in real["real_ct"].values())
        rows.append((f"the default backbone's liver Dice on {len(real['real_ct'])} real CTs (worst)", f"{worst:.4f}",
                     f"≥ {REAL_CT_LIVER_MIN:g}", _holds(worst >= REAL_CT_LIVER_MIN), _link("real_ct")))
    if speed:
        rows += _speed_rows(speed) if speed.get("format", 1) >= 2 else _speed_rows_v1(speed)
    bar = (efficiency or {}).get("bars", {}).get("tesla_slpt_percent_of_full_data")
    if bar and bar["value"] is not None and not efficiency.get("quick"):
        rows.append(("label efficiency: TESLA + SLPT at the budget, share of full-data tumour Dice",
                     f"{bar['value']:.1f}%{_stale(efficiency)}",
                     f"≥ {bar['bar']:g}% (paper: 94% at 5% labels)", _holds(bar["holds"]), _link("benchmark")))
    else:
        rows.append(("label efficiency: TESLA + SLPT at 5% labels, share of full-data tumour Dice", "not measured yet",
                     "paper: 94%", NOT_JUDGED, "[experiments](docs/experiments.md)"))
    return rows


def _speed_rows(speed: dict) -> list[tuple[str, str, str, str, str]]:
    """Speed rows of a ``format`` 2 result: the server and scoring on the full-size CT, epochs vs full
    fine-tuning and vs SLPT v1."""
    rows, cores = [], speed["machine"]["cores"]
    server, scoring, training = speed.get("server"), speed["scoring"], speed["training"]
    if server:
        shape, v = "x".join(map(str, server["scan"]["shape"])), server["full_size"]
        for key, part, bar in (("infer", "inferer part", INFER_VS_BACKBONE_MAX),
                               ("total", "whole request", REQUEST_VS_BACKBONE_MAX)):
            ratio = v["ratios"]["inferer" if key == "infer" else key]
            rows.append((f"`/infer/slpt` vs `/infer/backbone`, {part}, {shape} CT, {cores} cores",
                         (f"{v['slpt']['latencies'][key]['median_s']:.2f} s vs "
                          f"{v['backbone']['latencies'][key]['median_s']:.2f} s ({ratio:.2f}x)"), f"≤ {bar:.1f}x",
                         _holds(ratio <= bar), _link("speed")))
    ratio = scoring["ratios"]["tesla_scoring_vs_slpt_inference"]
    rows.append(("TESLA scoring of a scan vs one SLPT inference",
                 (f"{scoring['tesla_scoring']['median_s']:.2f} s vs {scoring['slpt_inference']['median_s']:.2f} s "
                  f"({ratio:.2f}x)"), f"≤ {SCORING_VS_INFER_MAX:.1f}x", _holds(ratio <= SCORING_VS_INFER_MAX),
                 _link("speed")))
    if "mc_dropout_vs_tesla_scoring" in scoring["ratios"]:
        samples = next(k for k in scoring if k.startswith("mc_dropout_")).rsplit("_", 1)[1]
        faster = scoring["ratios"]["mc_dropout_vs_tesla_scoring"]
        rows.append((f"TESLA scoring vs MC-dropout ({samples} samples)", f"{faster:.2f}x faster",
                     f"≥ {MC_DROPOUT_VS_SCORING_MIN:.1f}x faster", _holds(faster >= MC_DROPOUT_VS_SCORING_MIN),
                     _link("speed")))
    slpt, ratio = training["slpt"]["epoch"]["median_s"], training["epoch_time_ratio_slpt_vs_full_finetune"]
    rows.append((f"seconds per training epoch, {cores} cores",
                 (f"SLPT {slpt:.1f}, full fine-tuning {training['full_finetune']['epoch']['median_s']:.1f} "
                  f"({ratio:.2f}x)"), f"≤ {EPOCH_VS_FINETUNE_MAX:.1f}x full fine-tuning",
                 _holds(ratio <= EPOCH_VS_FINETUNE_MAX), _link("speed")))
    if "slpt_v1" in training:
        speedup = training["epoch_speedup_vs_slpt_v1"]
        rows.append(("SLPT epoch vs SLPT v1's, same run",
                     f"{training['slpt_v1']['epoch']['median_s']:.1f} s -> {slpt:.1f} s ({speedup:.2f}x faster)", f"≥ {EPOCH_SPEEDUP_VS_V1_MIN:.1f}x faster",
                     _holds(speedup >= EPOCH_SPEEDUP_VS_V1_MIN), _link("speed")))
    else:
        rows.append(("SLPT epoch vs SLPT v1's, same run", "not measured yet",
                     f"≥ {EPOCH_SPEEDUP_VS_V1_MIN:.1f}x faster", NOT_JUDGED, _link("speed")))
    return rows


def _speed_rows_v1(speed: dict) -> list[tuple[str, str, str, str, str]]:
    """Speed rows of a result written before the full-size CT and the SLPT v1 comparison (no ``format``)."""
    rows = []
    cores, server, scoring = speed["machine"]["cores"], speed.get("server"), speed["scoring"]
    if server:
        ratio = server["ratio_slpt_vs_backbone"]
        rows.append((f"`/infer/slpt` vs `/infer/backbone`, {cores} cores",
                     f"{server['slpt']['median_s']:.2f} s vs {server['backbone']['median_s']:.2f} s "
                     f"({ratio:.2f}x)", f"≤ {INFER_VS_BACKBONE_MAX:.1f}x",
                     _holds(ratio <= INFER_VS_BACKBONE_MAX), _link("speed")))
    ratio = scoring["ratios"]["tesla_scoring_vs_slpt_inference"]
    rows.append(("TESLA scoring of a scan vs one SLPT inference",
                 f"{scoring['tesla_scoring']['median_s']:.2f} s vs {scoring['slpt_inference']['median_s']:.2f} s "
                 f"({ratio:.2f}x)", f"≤ {SCORING_VS_INFER_MAX:.1f}x", _holds(ratio <= SCORING_VS_INFER_MAX),
                 _link("speed")))
    faster = scoring["ratios"]["mc_dropout_vs_tesla_scoring"]
    rows.append(("TESLA scoring vs MC-dropout (5 samples)", f"{faster:.2f}x faster",
                 f"≥ {MC_DROPOUT_VS_SCORING_MIN:.1f}x faster", _holds(faster >= MC_DROPOUT_VS_SCORING_MIN),
                 _link("speed")))
    training = speed["training"]
    rows.append((f"seconds per training epoch, {cores} cores",
                 f"SLPT {training['slpt']['epoch']['median_s']:.1f}, full fine-tuning "
                 f"{training['full_finetune']['epoch']['median_s']:.1f}", NOT_JUDGED, NOT_JUDGED, _link("speed")))
    return rows


def status_box() -> str:
    rows = status_rows()
    judged = [r for r in rows if r[3] != NOT_JUDGED]
    held = sum(r[3] == "yes" for r in judged)
    missing = sum(r[1] == "not measured yet" for r in rows)
    lines = ["| bar | measured | target | holds | source |", "| --- | --- | --- | --- | --- |",
             *(f"| {' | '.join(r)} |" for r in rows), "",
             f"**{held} of {len(judged)} measured bars hold**" + (f"; {missing} not measured yet." if missing else ".")]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A row of the README's results table: what the experiment measures and how it is run."""

    name: str  # its folder under docs/results/
    what: str
    command: str
    latest: Callable[[dict], str]


def _latest_compare(r: dict) -> str:
    """Tumour Dice of both methods at every labelled count the result holds (the bar's count alone in older
    results)."""
    counts = r.get("by_labels") or {str(r["settings"]["n_labelled"]): r}
    return "; ".join(f"{n} labels: SLPT {_ms(c['summary']['slpt']['dice_tumor'])}, full fine-tuning "
                     f"{_ms(c['summary']['full_finetune']['dice_tumor'])}"
                     for n, c in sorted(counts.items(), key=lambda item: int(item[0])))


def _latest_speed(r: dict) -> str:
    parts = []
    if r.get("server") and r.get("format", 1) >= 2:
        ratios = r["server"]["full_size"]["ratios"]
        parts.append(f"`/infer/slpt` on a {'x'.join(map(str, r['server']['scan']['shape']))} CT: inferer "
                     f"{ratios['inferer']:.2f}x, whole request {ratios['total']:.2f}x the backbone's")
    elif r.get("server"):
        parts.append(f"`/infer/slpt` {r['server']['ratio_slpt_vs_backbone']:.2f}x the backbone")
    ratios = r["scoring"]["ratios"]
    parts.append(f"TESLA scoring {ratios['tesla_scoring_vs_slpt_inference']:.2f}x one inference")
    if "tesla_rescoring_vs_slpt_inference" in ratios:
        parts.append(f"re-scoring {ratios['tesla_rescoring_vs_slpt_inference']:.2f}x")
    parts.append(f"SLPT epoch {r['training']['epoch_time_ratio_slpt_vs_full_finetune']:.2f}x full fine-tuning's")
    if "epoch_speedup_vs_slpt_v1" in r["training"]:
        parts.append(f"{r['training']['epoch_speedup_vs_slpt_v1']:.2f}x faster than SLPT v1's")
    return "; ".join(parts)


def _latest_scoring(r: dict) -> str:
    return (f"{r['per_scan_seconds']['scoring']:.2f} s per scan; ranking vs every window: Spearman "
            f"{r['spearman_roi_vs_full_uncertainty']:.3f} over {r['compared_scans']} scans")


def _latest_load(r: dict) -> str:
    checks = r["checks"].values()
    return (f"{r['labels_per_minute']:.2f} labels per minute; {sum(c['passed'] for c in checks)} of "
            f"{len(checks)} checks pass")


def _latest_real_ct(r: dict) -> str:
    return "; ".join(f"{scan}: liver {d['liver']:.4f}" for scan, d in r["real_ct"].items())


def _latest_efficiency(r: dict) -> str:
    bar = r.get("bars", {}).get("tesla_slpt_percent_of_full_data")
    if r.get("quick") or not bar or bar["value"] is None:
        return "quick mode only"
    return f"TESLA + SLPT at the budget: {bar['value']:.1f}% of full-data SLPT"


EXPERIMENTS = (
    Experiment("slpt_vs_finetune", "SLPT v2 vs full fine-tuning on the same labelled phantoms",
               "python -m benchmarks.compare --out docs/results/slpt_vs_finetune --labels 5 10 20", _latest_compare),
    Experiment("speed", "speed: `/infer`, TESLA scoring and training epochs against their baselines",
               "python -m benchmarks.speed --out docs/results/speed --v1-tree /tmp/slpt-v1", _latest_speed),
    Experiment("scoring", "TESLA scoring per scan, and the ranking it gives vs every window",
               "python -m benchmarks.scoring --out docs/results/scoring --pool 40 --compare 40 --epochs 20",
               _latest_scoring),
    Experiment("load", "the server under load: annotators while one client trains and scores",
               "python -m benchmarks.load --out docs/results/load --clients 3 --iterations 2 --timeout 600",
               _latest_load),
    Experiment("real_ct", "the default backbone's organs on two real CTs, beside its phantom Dice",
               "python -m benchmarks.real_ct --out docs/results/real_ct", _latest_real_ct),
    Experiment("benchmark", "label efficiency: selection strategies and tuning methods at a 5% budget",
               "python -m benchmarks.label_efficiency --out docs/results/benchmark", _latest_efficiency),
)


def _explore_row() -> str:
    pick = json.loads((RESULTS / "explore" / "pick.json").read_text())
    return (f"| settings tried on validation phantoms, and the pick rule | "
            f"`python -m benchmarks.explore --table docs/results/explore/rows-*.jsonl` | "
            f"picked `{pick['name']}`: validation tumour Dice per case {pick['score'][0]:.4f} | {_link('explore')} |")


def _backbone_row() -> str:
    dice = json.loads(BACKBONE_METADATA.read_text())["heldout_dice"]
    worst = min(dice, key=dice.get)
    return (f"| the default backbone's held-out organ Dice | `make pretrain` | liver {dice['liver']:.4f}, lowest "
            f"{worst} {dice[worst]:.4f} | [metadata.json](models/backbone/configs/metadata.json) |")


def results_table() -> str:
    """Every experiment with its command and latest figure; a result folder no experiment names is listed too."""
    lines = ["| what | command | latest | result |", "| --- | --- | --- | --- |"]
    for e in EXPERIMENTS:
        r = _result(e.name)
        command = (r or {}).get("command", e.command)
        lines.append(f"| {e.what} | `{command}` | {e.latest(r) if r else 'not run yet'} | "
                     f"{_link(e.name) if r else '—'} |")
    if (RESULTS / "explore" / "pick.json").exists():
        lines.append(_explore_row())
    named = {e.name for e in EXPERIMENTS} | {"explore"}
    for folder in sorted(p.parent.name for p in RESULTS.glob("*/result.md")):
        if folder not in named:
            lines.append(f"| {folder} | see its result | | {_link(folder)} |")
    if BACKBONE_METADATA.exists():
        lines.append(_backbone_row())
    return "\n".join(lines)


# --- figures quoted in docs/experiments.md ---------------------------------------------------------------


def compare_verdict() -> str:
    s = _result("slpt_vs_finetune")["summary"]
    pairs = list(zip(s["slpt"]["dice_tumor"]["values"], s["full_finetune"]["dice_tumor"]["values"]))
    below = sum(a < b for a, b in pairs)
    where = "every seed" if below in (0, len(pairs)) else f"{below} of {len(pairs)} seeds"
    mean = "above" if s["slpt"]["dice_tumor"]["mean"] >= s["full_finetune"]["dice_tumor"]["mean"] else "below"
    return (f"{mean} full fine-tuning's on average at {len(_result('slpt_vs_finetune')['labelled'])} labelled "
            f"scans, {'below' if below else 'not below'} it on {where}")


def epoch_cost() -> str:
    speed, epochs = _result("speed"), SLPTConfig().epochs
    seconds = speed["training"]["slpt"]["epoch"]["median_s"]
    return (f"at the {seconds:.1f} s per SLPT epoch of `docs/results/speed/result.md` ({speed['machine']['cores']} "
            f"CPU cores), a round of {epochs} epochs takes about {seconds * epochs / 60:.0f} minutes")


def efficiency_curve() -> str:
    """The label-efficiency learning curve and the bars it was judged by, once a full run has finished."""
    r = _result("benchmark")
    if not r or r.get("quick"):
        return ("Not measured yet: the curve appears here when `python -m benchmarks.label_efficiency --out "
                "docs/results/benchmark` has finished (it prints its plan and an estimate first, and resumes "
                "where it stopped).")
    wall = r.get("wall", {})
    lines = [("![Tumour Dice per case against the share of the pool labelled, one line per selection strategy]"
              "(docs/results/benchmark/learning_curve.png)"), "",
             (f"{r['pool_size']} pool and {r['test_size']} test phantoms, {len(r['settings']['run_seeds'])} seeds, "
              f"{wall.get('seconds', r.get('wall_seconds', 0)) / 3600:.1f} h on {r['machine']['cpu']}. The bars "
              "([result](docs/results/benchmark/result.md)):"), "", *bar_lines(r["bars"], False)]
    return "\n".join(lines)


def scale_figures() -> str:
    """The scoring-worker table and the large-pool projection of the speed benchmark's last run."""
    speed = _result("speed")
    workers = (speed or {}).get("scale", {}).get("workers")
    if not workers:
        return "Not measured yet: run `python -m benchmarks.speed --out docs/results/speed`."
    m = speed["machine"]
    lines = [(f"Measured by `{speed.get('command', 'python -m benchmarks.speed')}` on {m['cpu']} ({m['cores']} "
              f"cores, device {m['device']}): the app's TESLA scoring task on one pool of {workers[0]['scans']} "
              "phantoms, worker start-up included."),
             "", "| scoring workers | s per scan | speed-up vs 1 |", "| --- | --- | --- |",
             *(f"| {w['workers']} | {w['seconds_per_scan']:.3f} | {w['speedup']:.2f}x |" for w in workers), ""]
    return "\n".join(lines + projection(speed))


def real_ct_table() -> str:
    """The per-organ table of ``benchmarks.real_ct``'s latest result."""
    r = _result("real_ct")
    return "the real-CT check has not been run yet" if r is None else real_ct_markdown_table(r)


BLOCKS: dict[str, Callable[[], str]] = {
    "real-ct": real_ct_table,
    "status": status_box,
    "results": results_table,
    "compare-verdict": compare_verdict,
    "epoch-cost": epoch_cost,
    "scale": scale_figures,
    "efficiency": efficiency_curve,
}


# --- writing --------------------------------------------------------------------------------------------


def with_blocks(text: str) -> str:
    """``text`` with every generated block rewritten; a block on lines of its own stays on lines of its own.

    Raises:
        ValueError: a block name that :data:`BLOCKS` does not know.
    """
    def fill(match: re.Match) -> str:
        name, old = match.group(1), match.group(2)
        if name not in BLOCKS:
            raise ValueError(f"unknown generated block {name!r}; known: {', '.join(BLOCKS)}")
        body = BLOCKS[name]()
        if old.startswith("\n"):
            body = f"\n{body}\n"
        return f"<!-- {name}:begin -->{body}<!-- {name}:end -->"
    return BLOCK.sub(fill, text)


def pages() -> list[Path]:
    """The hand-written pages that may hold generated blocks (results pages are the scripts' own)."""
    return [README, *sorted(p for p in (ROOT / "docs").glob("*.md") if p != SETTINGS)]


def wanted() -> dict[Path, str]:
    return {SETTINGS: settings_page(), **{p: with_blocks(p.read_text()) for p in pages()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale pages instead of writing them")
    args = parser.parse_args(argv)
    texts = wanted()
    stale = [path for path, text in texts.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python -m tools.docs")
        return 1 if stale else 0
    for path in stale:
        path.write_text(texts[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
