"""Label-efficiency benchmark: which scans to label, and how to learn from them.

A pool of unlabelled phantoms whose hidden ground truth plays the annotator, a fixed test set, and the frozen
task-agnostic backbone from its own pre-training set (``models/backbone``). The budget (5% of the pool) is
labelled in two rounds: pick, label, prompt-tune, re-score, pick again.

* **Selection strategies** at equal budget, each followed by SLPT (K=3) tuning: ``random``; ``top_uncertainty``
  (predictive entropy of the prompt ensemble); ``mc_dropout`` (MONAI Label's epistemic scorer: the backbone's
  dropout switched on at inference, variance of the class probabilities over samples); ``coreset`` (k-center
  greedy on backbone embeddings); ``tesla`` (stage 1 diversity, then stage 2 prompt uncertainty + diversity);
  ``tesla_stage1`` (diversity in every round) and ``tesla_stage2`` (a random first round, then stage 2).
  Strategies that need a task model start with a random first round (the common cold start); their second
  round is scored by the SLPT model trained on the first round's labels. Every score is computed in the
  sliding windows that touch the scan's liver (what the app's ``tesla`` scoring does), for every strategy alike.
* **Tuning methods** on TESLA's labelled set: from scratch, full fine-tuning, head only, prompts without the
  feature-aware updater, SLPT K=1, SLPT K=3.
* **Upper bound:** SLPT K=3 and full fine-tuning on 100% of the pool.

Hyperparameters are the app's defaults (:class:`~apps.slpt.config.SLPTConfig`, whose schedule was picked on
validation phantoms by ``benchmarks.explore``) and are not tuned here: every training uses all its labelled scans
and keeps its last epoch, as ``benchmarks.compare`` does (``keep="best"`` picks the epoch on a fixed validation
split of them instead, the app trainer's protocol), and the test set is only ever used for the final numbers.
Seed ranges: pool 700000-700199, test 710000-710059 (disjoint from the backbone's pre-training 100000-200015,
compare's 300000-400029, the scoring benchmark's 500000-510007 and the validation range 600000-600099).

    python -m benchmarks.label_efficiency --out docs/results/benchmark            # full run: many hours on 2 cores
    python -m benchmarks.label_efficiency --out /tmp/benchmark-quick --quick      # the pipeline on a tiny setting

Every finished training (method, seed, labelled set), every scoring pass and every selection is cached under
``<out>/cache``, written whole or not at all, so an interrupted full run (killed, or stopped with its session)
resumes where it stopped when started again with the same ``--out`` (same settings only); the report gives
the wall time over all invocations. Every invocation first prints the plan and an estimate of the full run's
cost on this machine (one unit of each kind of work timed at the full settings); ``--plan`` stops there.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from apps.slpt import labels
from apps.slpt.active.rounds import budget_plan
from apps.slpt.active.scoring import embed_scan
from apps.slpt.active.selection import (
    coreset_select,
    diversity_select,
    foreground_random_select,
    random_select,
    top_select,
    uncertain_diverse_select,
)
from apps.slpt.active.uncertainty import dropout_enabled, ensemble, entropy, mc_dropout_probabilities, scan_uncertainty
from apps.slpt.config import SLPTConfig
from apps.slpt.evaluation import case_scores
from apps.slpt.inference import predict, sliding_window, stitched_logits, task_inferer, task_label
from apps.slpt.model.backbone import Backbone, load_backbone
from apps.slpt.model.build import build_model
from apps.slpt.model.checkpoints import DESIGNS, FORMAT_VERSION, atomic_write_bytes
from apps.slpt.model.prompts import is_backbone_key, model_device, parameter_report
from apps.slpt.training.loop import fit, fit_keeping_best, training_split
from apps.slpt.windows import OrganWindows
from benchmarks.ablations import EnsembleMean, build_plain_model, from_scratch
from benchmarks.baselines import finetune_config, full_finetune, head_only
from benchmarks.label_efficiency_report import (
    aggregate,
    bars,
    paired_difference,
    summarise_cases,
    type_counts,
    write_outputs,
)
from benchmarks.reporting import machine, tree_state
from phantoms.io import image_id, load_phantom_pair
from phantoms.phantom import PhantomSpec, make_phantom

POOL_SEEDS = (700_000, 700_200)
TEST_SEEDS = (710_000, 710_060)

STRATEGIES = {
    "random": "random",
    "foreground_random": "foreground-aware random (backbone liver mask non-empty)",
    "top_uncertainty": "top-uncertainty (ensemble entropy)",
    "mc_dropout": "MC-dropout epistemic",
    "coreset": "coreset (k-center greedy)",
    "tesla": "TESLA (stage 1 + stage 2)",
    "tesla_stage1": "TESLA stage 1 only",
    "tesla_stage2": "TESLA stage 2 only",
}
METHODS = {
    "scratch": "from scratch",
    "full_finetune": "full fine-tuning",
    "head_only": "head only",
    "plain_prompts": "prompts without FPU (K=3)",
    "slpt_k1": "SLPT K=1",
    "slpt_k3": "SLPT K=3 (FPU + DVPT)",
}
SELECTION_METHOD = "slpt_k3"  # the tuning that follows every selection strategy, and scores the second round
COLD_START = {"random", "top_uncertainty", "mc_dropout", "tesla_stage2"}  # random first round


@dataclasses.dataclass
class BenchmarkSettings:
    pool_seeds: tuple[int, int] = POOL_SEEDS
    test_seeds: tuple[int, int] = TEST_SEEDS
    budget_fraction: float = 0.05
    rounds: int = 2
    run_seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = SLPTConfig.epochs
    iterations_per_epoch: int = SLPTConfig.iterations_per_epoch
    batch_size: int = SLPTConfig.batch_size
    patch_size: int = SLPTConfig.patch_size
    mc_samples: int = 5
    roi_size: tuple[int, ...] | None = None  # sliding window; None: the training patch size (apps.slpt.inference.task_inferer)
    phantom_spec: dict | None = None  # PhantomSpec overrides (quick mode: small volumes); None: the defaults
    grid_cases: int = 4
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    methods: tuple[str, ...] = tuple(METHODS)
    keep: str = "last"  # apps.slpt.training.loop.training_split: "last" epoch on all labelled scans, or "best" on a held-out split


QUICK = BenchmarkSettings(
    pool_seeds=(700_000, 700_008), test_seeds=(710_000, 710_002), budget_fraction=0.25, run_seeds=(0,), epochs=1,
    iterations_per_epoch=1, batch_size=1, patch_size=16, mc_samples=2, roi_size=(32, 32, 16),
    phantom_spec={"z_extent": (48.0, 48.0), "inplane_spacing": (3.0, 3.0), "slice_spacing": (3.0, 3.0),
                  "body_scale": (0.5, 0.5)},
    grid_cases=2)


def benchmark_inferer(settings: BenchmarkSettings):
    """``settings.roi_size`` windows when set (quick mode), else the training patch size, as the app infers."""
    if settings.roi_size:
        return sliding_window(settings.roi_size, SLPTConfig.sw_overlap)
    return task_inferer(SLPTConfig(patch_size=settings.patch_size))


def _digest(values) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:12]


def _write_json(path: Path, value) -> None:
    """Whole or not at all: a run killed mid-write leaves the old file or none, so a resumed run never reads
    a torn one."""
    atomic_write_bytes(path, json.dumps(value).encode())


class Benchmark:
    """One benchmark run: data in memory, every result cached under ``out/cache``."""

    def __init__(self, settings: BenchmarkSettings, backbone: Backbone, out: Path, log=None):
        self.s, self.backbone = settings, backbone
        self.log = log or functools.partial(print, flush=True)
        self.cache = out / "cache"
        for sub in ("runs", "scores", "selections"):
            (self.cache / sub).mkdir(parents=True, exist_ok=True)
        self._check_settings()
        self._invocation_start = time.perf_counter()
        self._earlier = self._read_wall()  # compute spent by earlier invocations of this run
        self._code = tree_state()
        self.spec = PhantomSpec(**settings.phantom_spec) if settings.phantom_spec else None
        self.inferer = benchmark_inferer(settings)
        self.timings: dict[str, list[float]] = {}
        self.pool_seeds = list(range(*settings.pool_seeds))
        self.test_seeds = list(range(*settings.test_seeds))
        self.pool = self._load(self.pool_seeds, "pool")
        self.test = self._load(self.test_seeds, "test")
        self.grid = self._grid_cases()
        self.embeddings, self.organs = self._embed_pool()

    # -- setup ---------------------------------------------------------------------------------------
    def _check_settings(self) -> None:
        current = {"settings": dataclasses.asdict(self.s), "backbone": self.backbone.identity["sha256"],
                   "design": DESIGNS[FORMAT_VERSION]}
        current = json.loads(json.dumps(current))
        path = self.cache / "settings.json"
        if path.exists() and json.loads(path.read_text()) != current:
            raise ValueError(f"{self.cache} holds results of other settings, another backbone or another SLPT design; "
                             "use another --out folder (or delete that cache) to start afresh")
        _write_json(path, current)

    def _read_wall(self) -> dict:
        path = self.cache / "wall.json"
        return json.loads(path.read_text()) if path.exists() else {"seconds": 0.0, "invocations": 0, "code": []}

    def wall(self) -> dict:
        """Wall time of the whole run so far, over every invocation (a killed one counts up to its last finished
        training: what came after it is done again), and the code each invocation ran: the cache is keyed by
        settings, not code, so a run resumed on other code says so."""
        code = self._earlier.get("code", [])
        return {"seconds": round(self._earlier["seconds"] + time.perf_counter() - self._invocation_start, 1),
                "invocations": self._earlier["invocations"] + 1,
                "code": code if self._code in code else [*code, self._code]}

    def _record_wall(self) -> None:
        _write_json(self.cache / "wall.json", self.wall())

    def _time(self, key: str, seconds: float) -> None:
        self.timings.setdefault(key, []).append(seconds)

    def _load(self, seeds, what) -> list[dict]:
        items, t0 = [], time.perf_counter()
        for seed in seeds:
            t = time.perf_counter()
            ph = make_phantom(seed, self.spec)
            image, label = load_phantom_pair(ph, self.backbone.preprocessing, target="task")
            self._time("load_phantom", time.perf_counter() - t)
            # uint8 labels keep a 200-scan pool small in memory; training gets long tensors.
            items.append({"seed": seed, "id": image_id(seed), "tumor_type": ph.info["tumor_type"],
                          "image": image, "label": label.to(torch.uint8)})
        self.log(f"{what}: {len(items)} phantoms generated in {time.perf_counter() - t0:.0f}s")
        return items

    def _grid_cases(self) -> list[tuple[int, int]]:
        """``(test index, axial slice)`` of a few test scans with tumour, at their largest tumour section."""
        picks = []
        for n, case in enumerate(self.test):
            tumour = labels.tumour(case["label"][0]).sum(dim=(0, 1))
            if tumour.sum() > 0 and len(picks) < self.s.grid_cases:
                picks.append((n, int(tumour.argmax())))
        return picks

    def _embed_pool(self) -> tuple[np.ndarray, list]:
        """Backbone embeddings and liver masks (``None`` where no liver was found) of the pool, cached."""
        path = self.cache / "embeddings.npz"
        if path.exists():
            data = np.load(path)
            organs = [data[f"organ_{i}"] if f"organ_{i}" in data else None for i in range(len(self.pool))]
            return data["embeddings"], organs
        cfg, embeddings, organs = SLPTConfig(), [], []
        for case in self.pool:
            t = time.perf_counter()
            emb, organ = embed_scan(self.backbone.network, case["image"], cfg.embed_stage,
                                    self.backbone.labels.get("liver"), precision=cfg.precision)
            self._time("embed_scan", time.perf_counter() - t)
            embeddings.append(emb)
            organs.append(organ)
        embeddings = np.stack(embeddings)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, embeddings=embeddings,
                            **{f"organ_{i}": organ for i, organ in enumerate(organs) if organ is not None})
        atomic_write_bytes(path, buffer.getvalue())
        return embeddings, organs

    # -- models --------------------------------------------------------------------------------------
    def config(self, method: str, seed: int) -> SLPTConfig:
        cfg = SLPTConfig(epochs=self.s.epochs, iterations_per_epoch=self.s.iterations_per_epoch,
                         batch_size=self.s.batch_size, patch_size=self.s.patch_size, seed=seed)
        if method in ("scratch", "full_finetune"):
            return finetune_config(cfg)
        if method == "head_only":
            return dataclasses.replace(cfg, diversity_weight=0.0)
        if method == "slpt_k1":
            return dataclasses.replace(cfg, num_prompts=1)
        return cfg

    def model(self, method: str, cfg: SLPTConfig) -> torch.nn.Module:
        """A fresh ``method`` model, on the backbone's device."""
        torch.manual_seed(cfg.seed)
        b = self.backbone
        build = {
            "scratch": lambda: from_scratch(b, cfg),
            "full_finetune": lambda: full_finetune(b, cfg),
            "head_only": lambda: head_only(b, cfg),
            "plain_prompts": lambda: build_plain_model(b, cfg),
            "slpt_k1": lambda: build_model(b, cfg),
            "slpt_k3": lambda: build_model(b, cfg),
        }[method]
        return build().to(model_device(b.network))

    def _pair(self, case: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return case["image"], case["label"].long()

    def train(self, method: str, labelled: list[int], seed: int) -> dict:
        """Train ``method`` on pool indices ``labelled`` (split and epoch kept by ``settings.keep``), test it.

        Cached by (method, seed, labelled set); the K=3 SLPT model also keeps its trained tensors for scoring.
        """
        labelled = sorted(labelled)
        key = f"{method}_s{seed}_n{len(labelled)}_{_digest([self.pool_seeds[i] for i in labelled])}"
        path = self.cache / "runs" / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        cfg = self.config(method, seed)
        pairs = {self.pool[i]["id"]: self._pair(self.pool[i]) for i in labelled}
        train, val = training_split(pairs, cfg, self.s.keep)
        model = self.model(method, cfg)
        kept, seconds = fit_keeping_best(model, train, val, cfg, self.inferer, log=lambda m: None)
        self._time(f"train_step/{method}", seconds / (cfg.epochs * cfg.iterations_per_epoch))
        start = time.perf_counter()
        cases, slices = self.evaluate(model)
        self._time(f"test_case/{method}", (time.perf_counter() - start) / len(self.test))
        result = {"key": key, "method": method, "seed": seed, "labelled": [self.pool_seeds[i] for i in labelled],
                  "train_size": len(train), "val_size": len(val), "best_epoch": kept.epoch,
                  "train_seconds": round(seconds, 2),
                  "parameters": parameter_report(model), **summarise_cases(cases), "cases": cases, "grid": slices}
        if method == SELECTION_METHOD:  # written before the run's JSON, which marks the run finished
            buffer = io.BytesIO()
            torch.save(model.trainable_state_dict(), buffer)
            atomic_write_bytes(self.cache / "runs" / f"{key}.pt", buffer.getvalue())
        _write_json(path, result)
        self._record_wall()
        self.log(f"[{key}] tumour Dice {result['dice_tumor']:.4f} liver {result['dice_liver']:.4f} "
                 f"({seconds:.0f}s training)")
        return result

    def trained_model(self, run: dict) -> torch.nn.Module:
        model = self.model(run["method"], self.config(run["method"], run["seed"]))
        state = torch.load(self.cache / "runs" / f"{run['key']}.pt", weights_only=True,
                           map_location=model_device(model))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not is_backbone_key(k) for k in missing):
            raise ValueError(f"cached model {run['key']} does not fit: missing {missing}, unexpected {unexpected}")
        return model.eval()

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> tuple[list[dict], dict]:
        """Per test case: tumour and liver Dice (LiTS: empty in both = 1) and the counts for global Dice."""
        cases, slices = [], {}
        grid = dict(self.grid)
        for n, case in enumerate(self.test):
            probs, _ = predict(model, case["image"], self.inferer)
            pred = task_label(probs)
            cases.append({"seed": case["seed"], "tumor_type": case["tumor_type"],
                          **case_scores(pred, case["label"][0].long())})
            if n in grid:
                slices[str(n)] = pred[:, :, grid[n]].to(torch.uint8).tolist()
        return cases, slices

    # -- scoring and selection -----------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, run: dict, candidates: list[int], mc: bool) -> dict[str, dict[str, float]]:
        """Per candidate (pool index), in the windows that touch the scan's liver: prompt uncertainty and
        ensemble entropy, or (``mc``) the MC-dropout variance.

        PU is exactly what the app's scorer computes (:func:`apps.slpt.active.scoring.prompt_uncertainty`); the
        entropy is aggregated over the same lesion-relevant region.
        """
        path = self.cache / "scores" / f"{run['key']}{'_mc' if mc else ''}.json"
        if path.exists():
            return json.loads(path.read_text())
        model, cfg = self.trained_model(run), self.config(run["method"], run["seed"])
        out = {}
        for i in candidates:
            image, organ = self.pool[i]["image"].to(model_device(model)), self.organs[i]
            t = time.perf_counter()
            if mc:
                out[str(i)] = {"mc_variance": mc_variance(model, image, organ, self.inferer, self.s.mc_samples,
                                                          seed=run["seed"] * 100_003 + i)}
                self._time("score_mc_dropout", time.perf_counter() - t)
                continue
            logits, _ = stitched_logits(model, image[None], self.inferer, liver=organ)
            probs, pu = ensemble(logits.cpu(), model.num_prompts)
            label = task_label(probs[0]).numpy()
            out[str(i)] = {
                "pu": scan_uncertainty(pu[0].numpy(), label, margin=cfg.uncertainty_margin,
                                       top_fraction=cfg.uncertainty_top_fraction),
                "entropy": scan_uncertainty(entropy(probs[0], dim=0).numpy(), label, margin=cfg.uncertainty_margin,
                                            top_fraction=cfg.uncertainty_top_fraction)}
            self._time("score_prompt_uncertainty", time.perf_counter() - t)
        _write_json(path, out)
        return out

    def select(self, strategy: str, seed: int) -> list[list[int]]:
        """The pool indices ``strategy`` labels in each round (cached)."""
        path = self.cache / "selections" / f"{strategy}_s{seed}.json"
        if path.exists():
            return json.loads(path.read_text())["rounds"]
        budget, round_size = budget_plan(len(self.pool), self.s.budget_fraction, self.s.rounds)
        labelled: list[int] = []
        rounds = []
        for r in range(self.s.rounds):
            k = min(round_size, budget - len(labelled))
            if k <= 0:
                break
            unlabelled = [i for i in range(len(self.pool)) if i not in labelled]
            rng = np.random.default_rng([seed, r])
            feats = self.embeddings[unlabelled]
            t = time.perf_counter()
            if strategy == "random" or (r == 0 and strategy in COLD_START):
                picks = random_select(len(unlabelled), k, rng)
            elif strategy == "foreground_random":
                has_liver = [self.organs[i] is not None and bool(self.organs[i].any()) for i in unlabelled]
                picks = foreground_random_select(has_liver, k, rng)
            elif strategy == "coreset":
                picks = coreset_select(feats, self.embeddings[labelled], k)
            elif strategy == "tesla_stage1" or (r == 0 and strategy == "tesla"):
                picks = diversity_select(feats, k, rng)
            else:
                scores = self.scores(self.train(SELECTION_METHOD, labelled, seed), unlabelled,
                                     mc=strategy == "mc_dropout")
                column = {"top_uncertainty": "entropy", "mc_dropout": "mc_variance"}.get(strategy, "pu")
                values = np.array([scores[str(i)][column] for i in unlabelled])
                if strategy in ("tesla", "tesla_stage2"):
                    picks = uncertain_diverse_select(feats, values, k, rng)
                else:
                    picks = top_select(values, k)
            self._time(f"select/{strategy}", time.perf_counter() - t)
            chosen = [unlabelled[j] for j in picks]
            rounds.append(chosen)
            labelled += chosen
        _write_json(path, {"rounds": rounds, "seeds": [[self.pool_seeds[i] for i in r] for r in rounds]})
        return rounds

    # -- the whole run -------------------------------------------------------------------------------
    def run(self) -> dict:
        s = self.s
        start = time.perf_counter()
        strategies: dict[str, dict] = {}
        final_runs: dict[str, list[dict]] = {}  # per strategy, its last round's run of each seed
        for strategy in s.strategies:
            per_round: list[list[dict]] = [[] for _ in range(s.rounds)]
            picked_types = []
            for seed in s.run_seeds:
                rounds = self.select(strategy, seed)
                labelled: list[int] = []
                for r, picks in enumerate(rounds):
                    labelled += picks
                    per_round[r].append(self.train(SELECTION_METHOD, labelled, seed))
                picked_types.append([self.pool[i]["tumor_type"] for i in labelled])
            final_runs[strategy] = [runs for runs in per_round if runs][-1]
            strategies[strategy] = {
                "label": STRATEGIES[strategy],
                "rounds": [{"labelled": len(runs[0]["labelled"]),
                            "percent_labelled": 100.0 * len(runs[0]["labelled"]) / len(self.pool),
                            **aggregate(runs)} for runs in per_round if runs],
                "selected_types": type_counts(picked_types),
                "selected_seeds": [[self.pool_seeds[i] for r in self.select(strategy, seed) for i in r]
                                   for seed in s.run_seeds],
            }
        # What a MONAI Label user does today: random scans, the whole network fine-tuned.
        status_quo = None
        if "random" in s.strategies:
            final_runs["status_quo"] = [self.train("full_finetune", [i for r in self.select("random", seed) for i in r],
                                                   seed) for seed in s.run_seeds]
            status_quo = {"label": "full fine-tuning on random picks", **aggregate(final_runs["status_quo"])}
        comparisons = {}
        if "tesla" in final_runs:
            comparisons = {name: paired_difference(final_runs["tesla"], runs)
                           for name, runs in final_runs.items() if name != "tesla"}
        everything = list(range(len(self.pool)))
        full = {m: {"label": METHODS[m], **aggregate([self.train(m, everything, seed) for seed in s.run_seeds])}
                for m in ("slpt_k3", "full_finetune")}
        # The tuning methods come last: the headline bars (share of full data, status quo, baselines)
        # need only the runs above, so a run stopped across sessions has measured those first.
        tesla_sets = {seed: [i for r in self.select("tesla", seed) for i in r] for seed in s.run_seeds}
        methods = {m: {"label": METHODS[m], **aggregate([self.train(m, tesla_sets[seed], seed)
                                                         for seed in s.run_seeds])} for m in s.methods}
        reference = full["slpt_k3"]["dice_tumor"]["mean"]
        for block in [*(r for v in strategies.values() for r in v["rounds"]), *methods.values(), *full.values(),
                      *([status_quo] if status_quo else [])]:
            block["percent_of_full_data_slpt"] = 100.0 * block["dice_tumor"]["mean"] / reference if reference else None
        budget, round_size = budget_plan(len(self.pool), s.budget_fraction, s.rounds)
        return {
            "settings": dataclasses.asdict(s), "backbone": self.backbone.identity,
            "machine": machine(model_device(self.backbone.network)),
            "pool_size": len(self.pool), "test_size": len(self.test), "budget": budget, "round_size": round_size,
            "pool_types": type_counts([[c["tumor_type"] for c in self.pool]]),
            "pool_with_liver": sum(organ is not None and bool(organ.any()) for organ in self.organs),
            "test_types": type_counts([[c["tumor_type"] for c in self.test]]),
            "strategies": strategies, "methods": methods, "full_data": full, "status_quo": status_quo,
            "tesla_minus": comparisons,
            "grid": self._grid_rows(tesla_sets, everything),
            "bars": bars(strategies, methods, full, comparisons),
            "seconds_this_invocation": round(time.perf_counter() - start, 1), "wall": self.wall(),
            "unit_seconds": {k: float(np.median(v)) for k, v in self.timings.items()},
        }

    def _grid_rows(self, tesla_sets, everything) -> dict:
        """Seed-0 predictions on the grid cases, for :func:`plot_grid` (image and truth are stored too)."""
        seed = self.s.run_seeds[0]
        random_set = [i for r in self.select("random", seed) for i in r]
        columns = {"TESLA + SLPT": ("slpt_k3", tesla_sets[seed]), "random + SLPT": ("slpt_k3", random_set),
                   "TESLA + full FT": ("full_finetune", tesla_sets[seed]), "100% SLPT": ("slpt_k3", everything)}
        rows = []
        for n, z in self.grid:
            case = self.test[n]
            rows.append({"seed": case["seed"], "tumor_type": case["tumor_type"], "slice": z,
                         "image": case["image"][0, :, :, z].numpy().round(3).tolist(),
                         "truth": case["label"][0, :, :, z].tolist(),
                         "predictions": {name: self.train(m, labelled, seed)["grid"][str(n)]
                                         for name, (m, labelled) in columns.items()}})
        return {"run_seed": seed, "rows": rows}


def mc_variance(model: torch.nn.Module, image: torch.Tensor, organ: np.ndarray | None, inferer, samples: int,
                seed: int) -> float:
    """MONAI Label-style epistemic score: the backbone's dropout on, ``samples`` passes of the ensemble mean in
    the windows that touch ``organ``, variance over samples of the foreground class probabilities, summed over
    classes, averaged over the organ (the whole scan without one)."""
    wrapped = EnsembleMean(model).eval()
    with dropout_enabled(wrapped):
        probs = mc_dropout_probabilities(wrapped, image, OrganWindows(inferer, organ), samples=samples,
                                         seed=seed)  # [S, 1, C, *S]
    variance = probs[:, 0, 1:].var(0, unbiased=False).sum(0).cpu()
    inside = organ is not None and organ.any()
    return float(variance[torch.as_tensor(organ)].mean() if inside else variance.mean())


def first_round(strategy: str) -> str:
    """What ``strategy`` picks in its first round: strategies that pick alike share that round's training."""
    if strategy in COLD_START:
        return "random"
    return "diversity" if strategy in ("tesla", "tesla_stage1") else strategy


def plan(settings: BenchmarkSettings, pool_size: int) -> dict:
    """How many trainings, test evaluations, validation passes and scoring passes a run of ``settings`` does.

    Counts distinct cached jobs: cold-start strategies share their random first round, TESLA and stage 1
    share their diversity round.
    """
    budget, round_size = budget_plan(pool_size, settings.budget_fraction, settings.rounds)
    cfg = SLPTConfig()
    validations = 0 if settings.keep == "last" else len(
        {e for e in range(1, settings.epochs + 1) if e % cfg.val_interval == 0 or e == settings.epochs})
    sizes = [min(budget, round_size * (r + 1)) for r in range(settings.rounds)]

    def val_scans(n):
        from apps.slpt.training.splits import val_target
        return val_target(n, cfg.val_fraction, cfg.min_val_scans, cfg.min_train_scans)

    trainings: dict[str, list[int]] = {m: [] for m in METHODS}  # method -> labelled-set sizes
    first_rounds = {first_round(s) for s in settings.strategies}  # trained once each
    per_seed_slpt = [sizes[0]] * len(first_rounds) + sizes[1:] * len(settings.strategies)
    for _ in settings.run_seeds:
        trainings["slpt_k3"] += per_seed_slpt + [pool_size]
        trainings["full_finetune"].append(pool_size)
        for m in settings.methods:
            if m != "slpt_k3":
                trainings[m].append(sizes[-1])
        if "random" in settings.strategies:  # the status quo: full fine-tuning on the random picks
            trainings["full_finetune"].append(sizes[-1])
    scored = pool_size - sizes[0]
    return {"trainings": trainings, "validations_per_training": validations, "val_scans": val_scans,
            "score_passes": 2 * scored * len(settings.run_seeds),  # cold-start model + TESLA's model, per seed
            "mc_passes": scored * len(settings.run_seeds), "embeddings": pool_size,
            "phantoms": pool_size + (settings.test_seeds[1] - settings.test_seeds[0])}


def estimate(backbone: Backbone, full: BenchmarkSettings, log=print) -> dict:
    """Time one unit of each kind of work at ``full``'s settings on a full-size phantom; extrapolate the plan."""
    pool_size = full.pool_seeds[1] - full.pool_seeds[0]
    test_size = full.test_seeds[1] - full.test_seeds[0]
    inferer = benchmark_inferer(full)
    t = time.perf_counter()
    ph = make_phantom(full.pool_seeds[0])
    image, label = load_phantom_pair(ph, backbone.preprocessing, target="task")
    unit = {"phantom": time.perf_counter() - t}
    bench = Benchmark.__new__(Benchmark)
    bench.s, bench.backbone = full, backbone
    step, case = {}, {}
    for method in METHODS:
        cfg = dataclasses.replace(bench.config(method, 0), epochs=1, iterations_per_epoch=2)
        model = bench.model(method, cfg)
        t = time.perf_counter()
        fit(model, [(image, label)], [], cfg, inferer, log=lambda m: None)
        step[method] = (time.perf_counter() - t) / 2
        t = time.perf_counter()
        predict(model, image, inferer)
        case[method] = time.perf_counter() - t
    t = time.perf_counter()
    _emb, organ = embed_scan(backbone.network, image, SLPTConfig.embed_stage, backbone.labels.get("liver"))
    unit["embed"] = time.perf_counter() - t
    image = image.to(model_device(backbone.network))
    model = build_model(backbone, SLPTConfig()).to(image.device)
    t = time.perf_counter()
    ensemble(stitched_logits(model, image[None], inferer, liver=organ)[0], model.num_prompts)
    unit["score"] = time.perf_counter() - t
    t = time.perf_counter()
    mc_variance(model, image, organ, inferer, full.mc_samples, seed=0)
    unit["mc"] = time.perf_counter() - t
    p = plan(full, pool_size)
    steps = full.epochs * full.iterations_per_epoch
    seconds = {m: sum(steps * step[m] * full.batch_size / SLPTConfig.batch_size
                      + (test_size + p["validations_per_training"] * p["val_scans"](n)) * case[m]
                      for n in sizes) for m, sizes in p["trainings"].items()}
    total = (sum(seconds.values()) + p["score_passes"] * unit["score"] + p["mc_passes"] * unit["mc"]
             + p["embeddings"] * unit["embed"] + p["phantoms"] * unit["phantom"])
    n = sum(len(v) for v in p["trainings"].values())
    log(f"estimated full run: {total / 3600:.1f} h for {n} trainings on this machine")
    return {"hours": total / 3600, "trainings": n, "train_and_test_seconds_by_method": seconds,
            "unit_seconds": {**unit, "train_step": step, "test_case": case}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (result.json/.md, PNGs, cache/)")
    parser.add_argument("--backbone", type=Path, default=Path("models/backbone"))
    parser.add_argument("--quick", action="store_true", help="tiny setting: checks the pipeline, not quality")
    parser.add_argument("--no-estimate", action="store_true",
                        help="skip timing one unit of each kind of work to estimate the full run's cost")
    parser.add_argument("--plan", action="store_true", help="print the plan and the estimate, run nothing")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where training, inference and scoring run (default: cuda when available)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(args.backbone, device=args.device)
    settings = QUICK if args.quick else BenchmarkSettings()
    pool_size = settings.pool_seeds[1] - settings.pool_seeds[0]
    work = plan(settings, pool_size)
    print(f"plan: pool {pool_size}, test {settings.test_seeds[1] - settings.test_seeds[0]}, seeds "
          f"{list(settings.run_seeds)}; trainings " + ", ".join(f"{m} {len(n)}" for m, n in work["trainings"].items())
          + f"; {work['score_passes']} scoring and {work['mc_passes']} MC-dropout passes", flush=True)
    estimated = None if args.no_estimate else estimate(backbone, BenchmarkSettings())  # printed as it ends
    if args.plan:
        return
    t0 = time.perf_counter()
    result = {**Benchmark(settings, backbone, args.out).run(), "quick": args.quick}
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if estimated:
        result["estimate"] = estimated
    write_outputs(args.out, result)


if __name__ == "__main__":
    main()
