"""Try SLPT settings on a validation range of phantoms that no benchmark tests on.

Hyperparameters are chosen here, never on compare's or the benchmark's test sets. Training data is
compare's labelled set and its seed-0 training split; validation phantoms are seeds 600000 onwards.
Each variant is a JSON object of ``SLPTConfig`` overrides plus ``name``, optional ``method`` (``slpt``
or ``ft`` for full fine-tuning with the same head), ``evals`` (epochs to evaluate at; the last one
is the training length) and ``sw_overlaps`` (sliding-window overlaps to evaluate the same model at, each
its own row named ``name sw<overlap>``: inference settings need no training of their own). One JSON line
per evaluation goes to stdout:

    python -m benchmarks.explore '[{"name": "default"}, {"name": "ft", "method": "ft"}]'
    python -m benchmarks.explore '[{"name": "all stages", "stages": ["down_layers.0", ..., "up_layers.2"]}]'
    python -m benchmarks.explore "$(cat variants.json)" --device cuda > rows.jsonl
    python -m benchmarks.explore --pick rows.jsonl more-rows.jsonl    # the rule in :func:`pick`, as JSON
    python -m benchmarks.explore --table rows.jsonl more-rows.jsonl   # the rows and the picks as markdown

A variant named ``name@seed`` with a ``seed`` field is one seed of ``name``; :func:`pick` averages them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch

from sklearn.metrics import roc_auc_score

from apps.slpt.active.uncertainty import scan_uncertainty
from apps.slpt.config import SLPTConfig
from apps.slpt.evaluation import case_scores
from apps.slpt.inference import predict, task_inferer, task_label
from apps.slpt.model.backbone import load_backbone
from apps.slpt.model.build import build_model
from apps.slpt.training.loop import fit
from apps.slpt.training.splits import split_scans, update_split
from benchmarks.baselines import FINETUNE_LEARNING_RATE, finetune_config, full_finetune
from benchmarks.compare import CompareSettings, labelled_seeds, phantom_pairs
from phantoms.phantom import phantom_header

VALIDATION_FIRST_SEED = 600_000


def case_rows(model, val, types, inferer) -> list[dict]:
    """Per validation phantom: its tumour type, tumour Dice, predicted / true / overlapping tumour voxels, and
    its prompt-based uncertainty (the score TESLA ranks scans by; 0 for a single prompt set)."""
    rows = []
    for (image, label), kind in zip(val, types):
        probs, pu = predict(model, image, inferer)
        prediction = task_label(probs)
        scores = case_scores(prediction, label[0])
        rows.append({"type": kind, "dice": round(scores["dice_tumor"], 4), "predicted": scores["tumor_predicted"],
                     "true": scores["tumor_true"], "overlap": scores["tumor_intersection"],
                     "pu": float(scan_uncertainty(pu.numpy(), prediction.numpy()))})
    return rows


def lesion_auroc(cases: list[dict]) -> float | None:
    """How well the scan's PU ranks scans with a lesion above tumour-free ones (0.5: no signal), or None for
    rows without PU or without both kinds of scan."""
    if not all("pu" in c for c in cases) or len({c["true"] > 0 for c in cases}) < 2:
        return None
    return float(roc_auc_score([c["true"] > 0 for c in cases], [c["pu"] for c in cases]))


def tumour_dice(cases: list[dict]) -> dict[str, float]:
    """Tumour Dice per case (mean of :func:`case_rows`' Dice) and global (all voxels pooled)."""
    overlap = sum(c["overlap"] for c in cases)
    total = sum(c["predicted"] + c["true"] for c in cases)
    return {"tumour_dice_per_case": round(float(np.mean([c["dice"] for c in cases])), 4),
            "tumour_dice_global": round(2 * overlap / max(total, 1), 4)}


@functools.lru_cache(maxsize=1)
def exploration_data(n_val: int, backbone_dir: str, device: str):
    """Backbone, training split and validation phantoms, built once per process."""
    backbone = load_backbone(backbone_dir, device=device)
    labelled = phantom_pairs(labelled_seeds(CompareSettings.n_labelled), backbone.preprocessing)
    cfg = SLPTConfig()
    split = update_split(labelled, {}, cfg.val_fraction, cfg.min_val_scans, cfg.min_train_scans, 0)
    train, _ = split_scans(labelled, split)
    seeds = range(VALIDATION_FIRST_SEED, VALIDATION_FIRST_SEED + n_val)
    val = list(phantom_pairs(seeds, backbone.preprocessing).values())
    types = [phantom_header(s)["tumor_type"] for s in seeds]
    return backbone, train, val, types


def run_variant(variant: dict, n_val: int, backbone_dir: str, device: str = "cpu") -> list[dict]:
    """Train one variant; one row per evaluation epoch (also printed as it comes)."""
    backbone, train, val, types = exploration_data(n_val, backbone_dir, device)
    variant = dict(variant)
    name, method, evals = variant.pop("name"), variant.pop("method", "slpt"), variant.pop("evals", [30, 60])
    overlaps = variant.pop("sw_overlaps", None)
    cfg = dataclasses.replace(SLPTConfig(epochs=max(evals), val_interval=10**6), **variant)
    inferer = task_inferer(cfg)
    evaluated = [(name, variant, inferer)] if overlaps is None else [
        (overlap_name(name, ov), {**variant, "sw_overlap": ov}, task_inferer(dataclasses.replace(cfg, sw_overlap=ov)))
        for ov in overlaps]
    torch.manual_seed(cfg.seed)
    if method == "ft":
        model = full_finetune(backbone, cfg)
        cfg = finetune_config(cfg, variant.get("learning_rate", FINETUNE_LEARNING_RATE))
    else:
        model = build_model(backbone, cfg)
    model = model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    start, rows = time.time(), []

    def report(epoch_report):
        if epoch_report.epoch not in evals:
            return
        for row_name, overrides, row_inferer in evaluated:
            cases = case_rows(model, val, types, row_inferer)
            rows.append({"name": row_name, "method": method, "overrides": overrides, "epoch": epoch_report.epoch,
                         "final": epoch_report.epoch == cfg.epochs, "trainable": trainable,
                         "seconds": round(time.time() - start), "loss": round(epoch_report.loss, 4),
                         **tumour_dice(cases), "cases": cases})
            print(json.dumps(rows[-1]), flush=True)

    fit(model, train, [], cfg, inferer, on_epoch=report, log=lambda message: None)
    return rows


def overlap_name(name: str, overlap: float) -> str:
    """``name`` (maybe ``base@seed``) evaluated at sliding-window ``overlap``: ``base sw<overlap>@seed``, so
    :func:`pick` still averages its seeds."""
    base, at, seed = name.partition("@")
    return f"{base} sw{overlap:g}{at}{seed}"


def run(variants: list[dict], n_val: int, backbone_dir: str, device: str = "cpu") -> list[dict]:
    """All variants, one after another: on a GPU a training step is launch-bound, and processes sharing
    the GPU slowed each other down eightfold (benchmarks/gpu_session.sh)."""
    return [row for v in variants for row in run_variant(v, n_val, backbone_dir, device)]


def is_ablation(row: dict) -> bool:
    """An SLPT row with fewer than two prompt sets, or none placed: it shows what a lever buys, it is no
    candidate for the app's default."""
    overrides = row["overrides"]
    return row["method"] == "slpt" and (overrides.get("num_prompts", SLPTConfig.num_prompts) < 2
                                        or not overrides.get("stages", SLPTConfig.stages))


def pick(rows: list[dict], method: str = "slpt") -> dict:
    """The rule for choosing a default, fixed before looking: among the variants of ``method`` (``slpt``, or
    ``ft`` for full fine-tuning's own settings; ``name`` without its ``@seed`` suffix) that finished seed 0,
    the highest final-epoch validation tumour Dice per case, averaged over the seeds all of them finished;
    ties go to the higher global Dice. Returns its overrides with ``epochs`` made explicit.

    Ablation rows take no part (:func:`is_ablation`): a design without two prompt sets has no prompt-based
    uncertainty for TESLA to rank scans by, whatever its Dice."""
    final = [r for r in rows if r["final"] and r["method"] == method and not is_ablation(r)]
    by_name: dict[str, dict[int, dict]] = {}
    for r in final:
        by_name.setdefault(r["name"].split("@")[0], {})[r["overrides"].get("seed", 0)] = r
    by_name = {n: runs for n, runs in by_name.items() if 0 in runs}  # a variant counts once seed 0 finished
    if not by_name:
        raise ValueError(f"no {method} variant finished seed 0")
    seeds = set.intersection(*(set(v) for v in by_name.values()))  # seeds every counted variant finished

    def score(runs):
        return (np.mean([runs[s]["tumour_dice_per_case"] for s in seeds]),
                np.mean([runs[s]["tumour_dice_global"] for s in seeds]))

    best = max(by_name, key=lambda n: score(by_name[n]))
    any_run = next(iter(by_name[best].values()))
    overrides = {k: v for k, v in any_run["overrides"].items() if k != "seed"}
    return {"name": best, "seeds": sorted(seeds), "score": [float(x) for x in score(by_name[best])],
            "overrides": {**overrides, "epochs": any_run["epoch"]}}


def table(rows: list[dict]) -> str:
    """Markdown: every evaluation row, and the pick by :func:`pick` when there is one."""
    lines = ["| variant | epoch | trainable | tumour Dice per case | global tumour Dice "
             "| tumour cases with a true positive | PU AUROC, lesion vs tumour-free |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        tumour_cases = [c for c in r["cases"] if c["true"]]
        hits = sum(c["overlap"] > 0 for c in tumour_cases)
        if r["method"] != "slpt" or is_ablation(r):
            auroc = "— (one prediction)"
        else:
            value = lesion_auroc(r["cases"])
            auroc = "not recorded" if value is None else f"{value:.2f}"
        lines.append(f"| {r['name']} ({r['method']}) | {r['epoch']}{'' if r['final'] else ' (not final)'} | "
                     f"{r['trainable']:,} | {r['tumour_dice_per_case']:.4f} | {r['tumour_dice_global']:.4f} | "
                     f"{hits} of {len(tumour_cases)} | {auroc} |")
    for method, label in (("slpt", "SLPT"), ("ft", "full fine-tuning")):
        try:
            chosen = pick(rows, method)
            lines += ["", f"{label} pick (rule in `benchmarks.explore.pick`): **{chosen['name']}**, overrides "
                          f"`{json.dumps(chosen['overrides'])}`, seeds {chosen['seeds']}."]
        except ValueError as e:
            lines += ["", f"No {label} pick: {e}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="?", default="[]", help="JSON list of variants")
    parser.add_argument("--val", type=int, default=12, help="validation phantoms (seeds 600000 onwards)")
    parser.add_argument("--backbone", default="models/backbone")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pick", type=Path, nargs="+", help="instead of training: read rows (JSON lines, one "
                                                                  "or more files) and print the pick")
    parser.add_argument("--method", default="slpt", choices=("slpt", "ft"), help="with --pick: whose settings")
    parser.add_argument("--table", type=Path, nargs="+", help="instead of training: read rows and print them as "
                                                                "markdown")
    args = parser.parse_args(argv)
    if args.pick or args.table:
        rows = [json.loads(line) for path in (args.pick or args.table) for line in path.read_text().splitlines()
                if line.startswith("{")]
        print(table(rows) if args.table else json.dumps(pick(rows, args.method)))
        return
    run(json.loads(args.variants), args.val, args.backbone, args.device)


if __name__ == "__main__":
    main()
