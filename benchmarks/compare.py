"""SLPT vs full fine-tuning of the same backbone on the same few labelled phantoms.

The quality bar of the SLPT core: with 10 labelled scans (picked at random with a fixed seed), prompt
tuning must reach a tumour Dice per case at least as high as full fine-tuning, with a few percent of the
trainable parameters. Both train on all labelled scans for the app's fixed schedule and keep the last
epoch, then are evaluated on held-out test phantoms never used for any choice.

Why the last epoch: the schedule was picked on validation phantoms (``benchmarks.explore``), and there
every run scored higher at its last epoch than at the earlier ones evaluated. Picking the epoch on a 2-scan
split of 10 labels instead (the app trainer's protocol, ``keep="best"``) kept epoch 30 for SLPT's seed 0,
whose training split and settings score 0.27 at epoch 60 and 0.42 at 120 on the validation phantoms
(``docs/results/explore``).

    python -m benchmarks.compare --out docs/results/slpt_vs_finetune --labels 5 10 20  # the curve; the bar at 10
    python -m benchmarks.compare --out /tmp/quick --quick  # the pipeline on a tiny setting

Seeds can train in parallel processes, each keeping its runs and writing a table of its own seed
(``<out>/labels<n>/runs/seed<N>.md``, progress to read before the others finish); a last call without ``--seed``
reuses them and writes the report:

    for s in 0 1 2; do OMP_NUM_THREADS=1 python -m benchmarks.compare --out OUT --seed $s & done; wait
    python -m benchmarks.compare --out OUT

``--method`` splits a seed further, e.g. its full fine-tuning on a core that SLPT's run leaves free:

    OMP_NUM_THREADS=1 python -m benchmarks.compare --out OUT --seed 1 --method full_finetune

Each finished seed and method is kept in ``<out>/labels<n>/runs/`` with the inputs it ran with, and an unfinished
one keeps its last finished epoch there (``*.progress.pt``, not committed): a stopped run resumes where it
stopped, mid-training included, when started again with the same ``--out``, and a change to a prompt-only
setting (e.g. a new SLPT default) trains SLPT again but keeps full fine-tuning's runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from apps.slpt.config import InferenceSettings, ModelSettings, SLPTConfig, TrainingSettings
from apps.slpt.evaluation import evaluate
from apps.slpt.inference import task_inferer
from apps.slpt.model.backbone import load_backbone
from apps.slpt.model.build import PROMPT_SET_FIELDS, build_model
from apps.slpt.model.checkpoints import DESIGNS, FORMAT_VERSION, atomic_write_json
from apps.slpt.model.prompts import parameter_report
from apps.slpt.training.loop import fit_keeping_best, training_split
from benchmarks.baselines import FINETUNE_EPOCHS, finetune_config, full_finetune
from benchmarks.reporting import machine, write_report
from phantoms.io import image_id, load_phantom_pair
from phantoms.phantom import PhantomSpec, make_phantom, phantom_header

LABELLED_POOL = (300_000, 300_200)  # the 10 labelled scans are drawn from here
TEST_SEEDS = (400_000, 400_030)
SELECTION_SEED = 12345


@dataclasses.dataclass
class CompareSettings:
    n_labelled: int = 10
    test_seeds: tuple[int, int] = TEST_SEEDS
    run_seeds: tuple[int, ...] = (0, 1, 2)
    # The app's own defaults: the bar is about what a hospital gets without tuning anything. Full fine-tuning
    # gets the same care: its own step size and schedule length, picked on validation phantoms by the same rule.
    epochs: int = SLPTConfig.epochs
    finetune_epochs: int = FINETUNE_EPOCHS
    iterations_per_epoch: int = SLPTConfig.iterations_per_epoch
    # "last": train on every labelled scan and keep the last epoch. "best": hold out the app trainer's
    # validation split and keep its best epoch.
    keep: str = "last"
    phantom_spec: dict | None = None  # PhantomSpec overrides (quick mode: small volumes); None: the defaults


# Small phantoms and one test phantom: evaluation is most of a quick run's time.
QUICK = CompareSettings(n_labelled=3, test_seeds=(400_000, 400_001), run_seeds=(0,), epochs=1, finetune_epochs=1,
                        iterations_per_epoch=1,
                        phantom_spec={"z_extent": (96.0, 96.0), "inplane_spacing": (3.0, 3.0),
                                      "slice_spacing": (3.0, 3.0), "body_scale": (0.5, 0.5)})


def phantom_pairs(seeds, preprocessing, spec: PhantomSpec | None = None) -> dict:
    """``{image id: (image, task label)}`` of the phantoms ``seeds``, in backbone space."""
    return {image_id(s): load_phantom_pair(make_phantom(s, spec), preprocessing, target="task") for s in seeds}


def _phantom_spec(overrides: dict | None) -> PhantomSpec | None:
    """``CompareSettings.phantom_spec`` as a spec; None: the default phantoms."""
    return PhantomSpec(**overrides) if overrides else None


def _train_and_test(name, model, cfg, train, val, test, inferer, log, progress=None):
    start = time.perf_counter()
    kept, seconds = fit_keeping_best(model, train, val, cfg, inferer, log=lambda m: log(f"[{name}] {m}"),
                                     progress=progress)
    metrics = evaluate(model, test, inferer)
    return {**metrics, "best_epoch": kept.epoch, "train_seconds": round(seconds, 1),
            "wall_seconds": round(time.perf_counter() - start, 1), **parameter_report(model)}


def _data(settings: CompareSettings, backbone_dir: str, device: str):
    """Backbone, labelled scans and test scans, built once per process."""
    scans = json.dumps([settings.n_labelled, settings.test_seeds, settings.phantom_spec])
    return _cached_data(scans, backbone_dir, device)


@functools.lru_cache(maxsize=1)
def _cached_data(scans: str, backbone_dir: str, device: str):
    n_labelled, test_seeds, phantom_spec = json.loads(scans)
    spec = _phantom_spec(phantom_spec)
    backbone = load_backbone(backbone_dir, device=device)
    labelled = phantom_pairs(labelled_seeds(n_labelled), backbone.preprocessing, spec)
    test = list(phantom_pairs(range(*test_seeds), backbone.preprocessing, spec).values())
    return backbone, labelled, test


def labelled_seeds(n_labelled: int) -> list[int]:
    """The fixed random pick of labelled phantoms (explore trains on the same ones)."""
    pool = np.random.default_rng(SELECTION_SEED).choice(np.arange(*LABELLED_POOL), n_labelled, replace=False)
    return sorted(int(s) for s in pool)


# Settings full fine-tuning never reads: changing one re-runs SLPT alone and keeps fine-tuning's runs.
PROMPT_ONLY_FIELDS = PROMPT_SET_FIELDS + ("decoder_rank", "decoder_shifts", "encoder_stages")
# Settings that change how fast a result comes, never the result: not inputs, so a run kept before one of
# them changed is still found.
SPEED_ONLY_FIELDS = ("sw_batch_voxels",)
# The settings a run's result depends on: the design, its training and its inference. Storage, TESLA and
# server settings never reach a comparison run.
RESULT_FIELDS = frozenset(f.name for section in (ModelSettings, TrainingSettings, InferenceSettings)
                          for f in dataclasses.fields(section)) - set(SPEED_ONLY_FIELDS)
# Each method's own schedule length: the other method's never changes its result.
OWN_EPOCHS = {"slpt": "epochs", "full_finetune": "finetune_epochs"}
METHODS = ("slpt", "full_finetune")


def _run_seed(seed: int, settings: CompareSettings, backbone_dir: str, device: str, base: SLPTConfig, log,
              finished: SeedRuns | None, methods: Sequence[str] = METHODS) -> dict:
    """``methods`` on one seed's split of the labelled scans (each reused from ``finished`` when it ran
    with the same inputs; a method not asked for is there only if ``finished`` keeps it)."""
    backbone, labelled, test = _data(settings, backbone_dir, device)
    cfg = dataclasses.replace(base, seed=seed)
    inferer = task_inferer(cfg)  # both methods train on cfg.patch_size patches
    train, val = training_split(labelled, cfg, settings.keep)
    configs = {"slpt": cfg, "full_finetune": finetune_config(cfg, epochs=settings.finetune_epochs)}
    builders = {"slpt": lambda: build_model(backbone, cfg),
                "full_finetune": lambda: full_finetune(backbone, cfg)}
    results = {}
    for method in METHODS:
        inputs = _inputs(method, configs[method], settings, backbone.identity)
        kept = finished.get(seed, method, inputs) if finished else None
        if kept:
            log(f"seed {seed} {method}: finished earlier with the same inputs, kept in {finished.folder}")
            results[method] = kept
            continue
        if method not in methods:
            continue
        torch.manual_seed(seed)
        model = builders[method]().to(device)
        progress = finished.progress(seed, method, inputs) if finished else None
        results[method] = _train_and_test(method, model, configs[method], train, val, test, inferer, log, progress)
        if finished:
            finished.put(seed, method, inputs, results[method])
            progress.unlink()
    run = {"seed": seed, "train_size": len(train), "val_size": len(val), **results}
    log(json.dumps(run))
    return run


def _inputs(method: str, cfg: SLPTConfig, settings: CompareSettings, backbone_identity: dict) -> dict:
    """Everything a method's result depends on, as plain JSON."""
    config = {k: v for k, v in cfg.to_dict().items() if k in RESULT_FIELDS}
    if method == "full_finetune":
        config = {k: v for k, v in config.items() if k not in PROMPT_ONLY_FIELDS}
    # A setting left at None is not an input, so runs kept before it existed are still found.
    others = {v for m, v in OWN_EPOCHS.items() if m != method}
    settings = {k: v for k, v in dataclasses.asdict(settings).items() if v is not None and k not in others}
    # The design is an input: a run of an earlier SLPT design is not this one's, whatever its settings.
    return json.loads(json.dumps({"settings": settings, "config": config, "design": DESIGNS[FORMAT_VERSION],
                                  "backbone": backbone_identity["sha256"]}))


def _comparable(kept: dict, inputs: dict) -> dict:
    """A kept run's inputs without the config fields that today's inputs leave out (settings that never
    reached the run, such as a server setting recorded before :data:`RESULT_FIELDS` left them out, or one
    since removed). A field today's inputs have and the kept run lacks still makes them differ."""
    return {**kept, "config": {k: v for k, v in kept.get("config", {}).items() if k in inputs["config"]}}


class SeedRuns:
    """Finished runs under ``<out>/runs/``, one file per seed and method, each kept with its inputs.

    A run is reused only for identical inputs (:func:`_inputs`); otherwise it is trained again and
    replaces the old file, so a stopped comparison resumes where it stopped, and a change to SLPT's
    defaults does not repeat fine-tuning.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, seed: int, method: str) -> Path:
        return self.folder / f"seed{seed}-{method}.json"

    def get(self, seed: int, method: str, inputs: dict) -> dict | None:
        path = self._path(seed, method)
        kept = json.loads(path.read_text()) if path.exists() else None
        return kept["result"] if kept and _comparable(kept["inputs"], inputs) == inputs else None

    def put(self, seed: int, method: str, inputs: dict, result: dict) -> None:
        atomic_write_json(self._path(seed, method), {"inputs": inputs, "result": result})

    def progress(self, seed: int, method: str, inputs: dict) -> Path:
        """Where an unfinished run keeps its epochs (``apps.slpt.training.loop.fit``), named by its inputs so that a run with
        other inputs never continues it."""
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
        return self.folder / f"seed{seed}-{method}-{digest}.progress.pt"


def run(settings: CompareSettings, backbone_dir: Path, log=functools.partial(print, flush=True),
        device: str = "cpu", overrides: dict | None = None, out: Path | None = None,
        seeds: Sequence[int] | None = None, methods: Sequence[str] = METHODS) -> dict:
    """``overrides``: ``SLPTConfig`` fields to use instead of the app's defaults (for both methods).
    ``out``: keep each finished run under ``out/runs`` and reuse the ones that ran with the same inputs.
    ``seeds``: train only these of ``settings.run_seeds`` and return their runs and config alone (no summary).
    ``methods``: train only these; another method's run is returned only if ``out`` already keeps it."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base = SLPTConfig(epochs=settings.epochs, iterations_per_epoch=settings.iterations_per_epoch)
    base = base.with_overrides(**(overrides or {}))
    backbone = _data(settings, str(backbone_dir), device)[0]  # cached
    finished = SeedRuns(out / "runs") if out else None
    unknown = sorted(set(seeds or ()) - set(settings.run_seeds))
    if unknown:
        raise ValueError(f"seeds {unknown} are not among the compare's seeds {list(settings.run_seeds)}")
    if set(methods) - set(METHODS) or (seeds is None and set(methods) != set(METHODS)):
        raise ValueError(f"methods {list(methods)}: the report needs both of {list(METHODS)}; "
                         "train fewer only with seeds")
    runs = [_run_seed(seed, settings, str(backbone_dir), device, base, log, finished, methods)
            for seed in (settings.run_seeds if seeds is None else seeds)]
    if seeds is not None:
        return {"runs": runs, "slpt_config": base.to_dict(), "machine": machine(device)}
    labelled = [image_id(s) for s in labelled_seeds(settings.n_labelled)]
    test_size = settings.test_seeds[1] - settings.test_seeds[0]

    def stat(method, key):
        values = [r[method][key] for r in runs]
        return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}

    summary = {m: {k: stat(m, k) for k in ("dice_tumor", "dice_liver", "train_seconds",
                                           "trainable_percent_of_backbone")} for m in METHODS}
    return {"settings": dataclasses.asdict(settings), "labelled": labelled, "test_size": test_size,
            "tumour_free_test_cases": tumour_free_cases(settings.test_seeds, settings.phantom_spec),
            "backbone": backbone.identity, "slpt_config": base.to_dict(), "overrides": overrides or {},
            "machine": machine(device), "runs": runs, "summary": summary}


def tumour_free_cases(test_seeds: tuple[int, int], phantom_spec: dict | None = None) -> int:
    return sum(phantom_header(s, _phantom_spec(phantom_spec))["tumor_type"] == "none" for s in range(*test_seeds))


TABLE_HEAD = ("| method | tumour Dice per case | liver Dice per case | trainable % of backbone | train time (s) |",
              "| --- | --- | --- | --- | --- |")
LABELS = (("slpt", "SLPT v2 (K=3, FPU)"), ("full_finetune", "full fine-tuning"))
BAR_LABELS = 10  # the quality bar is judged with this many labelled scans


def seed_markdown(run: dict, settings: CompareSettings, result: dict) -> str:
    """One seed's runs from a ``--seed`` call's ``result``: progress to read while the other seeds train."""
    cfg, where = result["slpt_config"], result["machine"]
    rows = [f"| {label} | {run[key]['dice_tumor']:.4f} | {run[key]['dice_liver']:.4f} | "
            f"{run[key]['trainable_percent_of_backbone']:.2f} | {run[key]['train_seconds']:.0f} |"
            for key, label in LABELS if key in run]
    return "\n".join([
        f"# Seed {run['seed']} of SLPT vs full fine-tuning (written by `python -m benchmarks.compare --seed`)",
        "",
        f"One of the comparison's seeds {list(settings.run_seeds)}: the bar is judged on their mean, in "
        f"`result.md` once every seed has run. {cfg['epochs']} epochs x {cfg['iterations_per_epoch']} steps, "
        f"{run['train_size']} labelled scans to train on, {settings.test_seeds[1] - settings.test_seeds[0]} "
        f"held-out test phantoms. Run on {where['device']} ({where['gpu'] or where['cpu']}).",
        "",
        *TABLE_HEAD,
        *rows,
        "",
    ])


def markdown(result: dict) -> str:
    s = result["summary"]
    # LiTS scoring counts an empty prediction on a tumour-free case as Dice 1, so this is the floor that a
    # model which never predicts tumour reaches; a result at the floor has learnt no tumour at all.
    floor = result["tumour_free_test_cases"] / result["test_size"]
    rows = [*TABLE_HEAD]
    for key, label in LABELS:
        m = s[key]
        rows.append(f"| {label} | {m['dice_tumor']['mean']:.4f} ± {m['dice_tumor']['std']:.4f} | "
                    f"{m['dice_liver']['mean']:.4f} ± {m['dice_liver']['std']:.4f} | "
                    f"{m['trainable_percent_of_backbone']['mean']:.2f} | {m['train_seconds']['mean']:.0f} |")
    verdict = s["slpt"]["dice_tumor"]["mean"] >= s["full_finetune"]["dice_tumor"]["mean"]
    cfg, slpt_cfg = result["settings"], result["slpt_config"]
    by_validation = cfg.get("keep", "best") == "best"  # reports written before ``keep`` existed used "best"
    protocol = ("best epoch chosen on the fixed validation split of the labelled scans" if by_validation else
                "trained on all labelled scans, last epoch kept")
    kept = "; ".join(f"{label} {[r[key].get('best_epoch', 'not recorded') for r in result['runs']]}"
                     for key, label in (("slpt", "SLPT"), ("full_finetune", "full fine-tuning")))
    return "\n".join([
        "# SLPT vs full fine-tuning (written by `python -m benchmarks.compare`)",
        "",
        f"{cfg['n_labelled']} labelled phantoms (fixed random pick), {result['test_size']} held-out test phantoms, "
        f"seeds {cfg['run_seeds']}, {slpt_cfg['epochs']} epochs (full fine-tuning "
        f"{cfg.get('finetune_epochs', slpt_cfg['epochs'])}) x {slpt_cfg['iterations_per_epoch']} steps, "
        f"{protocol}; both infer in sliding windows of the training patch size ({slpt_cfg['patch_size']} voxels). "
        "Mean ± std over seeds. "
        f"Run on {result['machine']['device']} ({result['machine']['gpu'] or result['machine']['cpu']}).",
        "",
        f"SLPT settings differing from the app's defaults: {json.dumps(result['overrides'])}."
        if result["overrides"] else "SLPT settings: the app's defaults.",
        "",
        *rows,
        "",
        "Quick mode: a pipeline check on a tiny setting; these numbers say nothing about quality."
        if result.get("quick") else
        f"SLPT tumour Dice {'>=' if verdict else '<'} full fine-tuning: the bar is {'met' if verdict else 'NOT met'}.",
        "",
        f"Epoch kept per seed (best on validation; the last epoch means still improving): {kept}."
        if by_validation else f"Epoch kept per seed: {kept}.",
        "",
        f"{result['tumour_free_test_cases']} of {result['test_size']} test phantoms are tumour-free: a model that "
        f"never predicts tumour scores a tumour Dice per case of {floor:.4f}. "
        + ("SLPT is at that floor: it has learnt no tumour at this budget."
           if abs(s["slpt"]["dice_tumor"]["mean"] - floor) < 1e-3 else
           f"SLPT is {s['slpt']['dice_tumor']['mean'] - floor:+.4f} from that floor."),
        "",
    ])


def _runs_minutes(result: dict) -> float:
    """Minutes of training and testing summed over a count's runs (each run records its own)."""
    return sum(r[m].get("wall_seconds", float("nan")) for r in result["runs"] for m in METHODS) / 60


def curve_markdown(report: dict) -> str:
    """The whole report: the curve over labelled-scan counts, then each count's own table."""
    results = report["by_labels"]
    where = report["machine"]
    rows = ["| labelled scans | SLPT tumour Dice per case | full fine-tuning tumour Dice per case | SLPT >= full FT |",
            "| --- | --- | --- | --- |"]
    for n, r in sorted(results.items(), key=lambda item: int(item[0])):
        slpt, ft = r["summary"]["slpt"]["dice_tumor"], r["summary"]["full_finetune"]["dice_tumor"]
        rows.append(f"| {n} | {slpt['mean']:.4f} ± {slpt['std']:.4f} | {ft['mean']:.4f} ± {ft['std']:.4f} | "
                    f"{'yes' if slpt['mean'] >= ft['mean'] else 'no'} |")
    at_bar = _runs_minutes(results[str(BAR_LABELS)]) if str(BAR_LABELS) in results else float("nan")
    sections = [markdown(results[n]).replace("# SLPT vs full fine-tuning (written by `python -m benchmarks.compare`)",
                                             f"## {n} labelled scans") for n in sorted(results, key=int)]
    return "\n".join([
        "# SLPT vs full fine-tuning (written by `python -m benchmarks.compare`)",
        "",
        f"The bar is judged at {BAR_LABELS} labelled scans; the other counts are reported as they came out. "
        f"Machine: {where['device']} ({where['gpu'] or where['cpu']}, {where.get('cores', '?')} cores). "
        f"Wall time, training and testing every run one after another: {at_bar:.1f} min at {BAR_LABELS} labels, "
        f"{sum(_runs_minutes(r) for r in results.values()):.1f} min for every count "
        f"(runs kept from earlier calls count with their own time; this call took {report['wall_seconds'] / 60:.1f} min).",
        "",
        *rows,
        "",
        *sections,
    ])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder for result.json and result.md")
    parser.add_argument("--backbone", type=Path, default=Path("models/backbone"))
    parser.add_argument("--quick", action="store_true", help="tiny setting: checks the pipeline, not quality")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--set", dest="overrides", type=json.loads, default={},
                        help='JSON object of SLPTConfig fields replacing the app defaults, e.g. \'{"epochs": 120}\'')
    parser.add_argument("--seed", dest="seeds", type=int, action="append",
                        help="train only this seed (repeatable): its runs and a table of it go to OUT/labels<n>/runs, "
                             "without the report")
    parser.add_argument("--method", dest="methods", choices=METHODS, action="append",
                        help="with --seed: train only this method (repeatable); the table shows the other only "
                             "once it is kept")
    parser.add_argument("--labels", type=int, nargs="+",
                        help=f"labelled scans per comparison, e.g. 5 10 20 (default: {BAR_LABELS}, the bar's count)")
    args = parser.parse_args(argv)
    if args.methods and args.seeds is None:
        parser.error("--method needs --seed: the report compares both methods")
    settings = QUICK if args.quick else CompareSettings()
    counts = args.labels or [settings.n_labelled]
    start = time.perf_counter()
    results = {}
    for n in counts:
        at_n = dataclasses.replace(settings, n_labelled=n)
        out = args.out / f"labels{n}"
        results[n] = run(at_n, args.backbone, device=args.device, overrides=args.overrides, out=out,
                         seeds=args.seeds, methods=args.methods or METHODS)
        if args.seeds is not None:
            for seed_run in results[n]["runs"]:
                table = seed_markdown(seed_run, at_n, results[n])
                (out / "runs" / f"seed{seed_run['seed']}.md").write_text(table)
                print(table)
    if args.seeds is not None:
        return
    bar = BAR_LABELS if BAR_LABELS in results else counts[0]
    report = {**results[bar], "quick": args.quick, "by_labels": {str(n): r for n, r in results.items()},
              "wall_seconds": round(time.perf_counter() - start, 1)}
    for r in report["by_labels"].values():
        r["quick"] = args.quick
    write_report(args.out, report, curve_markdown(report))


if __name__ == "__main__":
    main()
