"""Speed and scale benchmark: is SLPT fast enough, and does TESLA scale?

Every figure is a median over ``--repeats`` runs, next to its baseline measured in the same run:

* **server** — ``POST /infer/slpt`` end to end on a demo volume vs ``POST /infer/backbone`` (the frozen
  backbone's own sliding-window inference) on the same volume, through a real ``monailabel start_server``
  (``tools/server.py``) after one tiny prompt training through ``/train/slpt``. Target: SLPT <= 1.3x.
* **scoring** — TESLA's first scoring of a scan (the backbone pass for the embedding and the liver mask, then
  the K-prompt uncertainty in the sliding windows that touch the liver) and its re-scoring after each new prompt
  checkpoint (the uncertainty alone: the app keeps the liver mask) vs one SLPT inference (the full-volume
  K-prompt pass) vs MC-dropout scoring with 5 samples (MONAI Label's epistemic approach, full volume). Targets:
  TESLA <= 1.0x one SLPT inference and >= 3x faster than MC-dropout(5).
* **training** — prompt-only (SLPT K=3) vs full fine-tuning: seconds per epoch (the app's
  ``iterations_per_epoch`` steps) and peak memory (process RSS on CPU, ``torch.cuda.max_memory_allocated`` on
  GPU), each in a fresh subprocess so one peak does not hide the other.
* **scale** — scoring pools of 100 / 300 / 1000 small phantoms (time and peak memory per pool size, each pool in
  a fresh subprocess; phantoms are generated one at a time, as a datastore streams them) and stage-2 selection
  over 10,000 synthetic embeddings (target <= 5 s) next to stage 1, coreset and random selection.

The device is CUDA when available, else CPU; the machine is recorded in the output.

    python -m benchmarks.speed --out docs/results/speed         # full run (2 CPU cores: hours, mostly the 1000-pool)
    python -m benchmarks.speed --out /tmp/speed-quick --quick   # the pipeline on a tiny setting
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from apps.slpt.active.rounds import budget_plan
from apps.slpt.active.scoring import OrganWindows, embed_scan, prompt_uncertainty
from apps.slpt.active.selection import coreset_select, diversity_select, random_select, uncertain_diverse_select
from apps.slpt.active.uncertainty import dropout_enabled, mc_dropout_probabilities
from apps.slpt.config import SLPTConfig
from apps.slpt.inference import predict, task_inferer
from apps.slpt.model.backbone import load_backbone
from apps.slpt.model.build import build_model
from apps.slpt.training.loop import PatchSampler, prompt_optimizer, task_loss, train_step
from benchmarks.ablations import EnsembleMean
from benchmarks.baselines import finetune_config, full_finetune
from benchmarks.reporting import machine, write_report
from phantoms.io import image_id, load_phantom_pair, write_studies
from phantoms.phantom import PhantomSpec, make_phantom, phantom_header

# The targets each run is judged against (its result.md says which hold).
INFER_VS_BACKBONE_MAX = 1.3  # /infer/slpt over /infer/backbone
SCORING_VS_INFER_MAX = 1.0  # TESLA scoring of a scan over one SLPT inference
MC_DROPOUT_VS_SCORING_MIN = 3  # MC-dropout(5) over TESLA scoring

ROOT = Path(__file__).resolve().parents[1]
DEMO_FIRST_SEED = 720_000  # disjoint from every other seed range of the project
SCALE_FIRST_SEED = 730_000
SMALL = {"z_extent": (48.0, 48.0), "inplane_spacing": (3.0, 3.0), "slice_spacing": (3.0, 3.0), "body_scale": (0.5, 0.5)}


@dataclasses.dataclass
class SpeedSettings:
    repeats: int = 5
    server: bool = True
    server_train: dict = dataclasses.field(default_factory=lambda: {"max_epochs": 2, "iterations_per_epoch": 2})
    mc_samples: int = 5
    train_epochs: int = 3  # timed epochs per method (median); the app's iterations_per_epoch each
    iterations_per_epoch: int = SLPTConfig.iterations_per_epoch
    batch_size: int = SLPTConfig.batch_size
    patch_size: int = SLPTConfig.patch_size
    pool_sizes: tuple[int, ...] = (100, 300, 1000)
    small_spec: dict = dataclasses.field(default_factory=lambda: dict(SMALL))
    selection_embeddings: int = 10_000
    selection_target_seconds: float = 5.0
    demo_spec: dict | None = None  # None: the default (full-size) phantom


QUICK = SpeedSettings(repeats=2, server_train={"max_epochs": 1, "iterations_per_epoch": 1, "patch_size": 16},
                      mc_samples=2, train_epochs=1, iterations_per_epoch=1, batch_size=1, patch_size=16,
                      pool_sizes=(2, 4), selection_embeddings=500, demo_spec=dict(SMALL))


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


# -- in-process: scoring vs inference vs MC dropout -------------------------------------------------------
def measure_scoring(s: SpeedSettings, backbone_dir: Path, log) -> dict:
    dev = device()
    backbone = load_backbone(backbone_dir, device=dev)
    cfg = SLPTConfig()
    spec = PhantomSpec(**s.demo_spec) if s.demo_spec else None
    image, _ = load_phantom_pair(make_phantom(demo_seed(s.demo_spec), spec), backbone.preprocessing, target="task")
    image = image.to(dev)
    inferer = task_inferer(cfg)
    model = build_model(backbone, cfg).to(dev).eval()  # untrained prompts cost exactly what trained ones do
    liver = backbone.labels.get("liver")
    _, organ = embed_scan(backbone.network, image, cfg.embed_stage, liver)

    def scoring():  # what the app's tesla scoring does the first time it sees a scan
        _, organ_ = embed_scan(backbone.network, image, cfg.embed_stage, liver)
        prompt_uncertainty(model, image, organ_, inferer, cfg.uncertainty_margin, cfg.uncertainty_top_fraction)

    def uncertainty_only():  # re-scoring after a new checkpoint: the liver mask is kept from the first time
        prompt_uncertainty(model, image, organ, inferer, cfg.uncertainty_margin, cfg.uncertainty_top_fraction)

    wrapped = EnsembleMean(model).eval()

    def mc():
        with dropout_enabled(wrapped):
            mc_dropout_probabilities(wrapped, image, inferer, samples=s.mc_samples)

    computed, total = OrganWindows(inferer, organ).count(image[None])
    out = {"volume": list(image.shape[1:]), "organ_fraction": 0.0 if organ is None else float(organ.mean()),
           "windows_computed": computed, "windows_total": total}
    for name, fn in (("slpt_inference", lambda: predict(model, image, inferer)),
                     ("tesla_scoring", scoring), ("tesla_uncertainty", uncertainty_only),
                     (f"mc_dropout_{s.mc_samples}", mc)):
        out[name] = timed(fn, s.repeats)
        log(f"scoring: {name} median {out[name]['median_s']:.3f}s")
    base, mc_key = out["slpt_inference"]["median_s"], f"mc_dropout_{s.mc_samples}"
    out["ratios"] = {
        "tesla_scoring_vs_slpt_inference": out["tesla_scoring"]["median_s"] / base,
        "tesla_rescoring_vs_slpt_inference": out["tesla_uncertainty"]["median_s"] / base,
        "mc_dropout_vs_tesla_scoring": out[mc_key]["median_s"] / out["tesla_scoring"]["median_s"],
    }
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
    sampler = PatchSampler([pair], cfg.patch_size, rng)
    loss_fn, optimizer = task_loss(cfg).to(dev), prompt_optimizer(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rss_before = psutil.Process().memory_info().rss / 2**20
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def epoch():
        model.train()
        for _ in range(cfg.iterations_per_epoch):
            train_step(model, *sampler(cfg.batch_size), cfg, loss_fn, optimizer, rng)

    result = {"epoch": timed(epoch, s.train_epochs), "iterations_per_epoch": cfg.iterations_per_epoch,
              "batch_size": cfg.batch_size, "patch_size": cfg.patch_size, "trainable_parameters": trainable,
              "rss_before_training_mb": rss_before, **_peak_memory(dev)}
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
        _embedding, organ = embed_scan(backbone.network, image, cfg.embed_stage, liver)
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


def measure_training(s: SpeedSettings, backbone_dir: Path, log) -> dict:
    out = {}
    for method in ("slpt", "full_finetune"):
        out[method] = in_child(_train_child, method, s, str(backbone_dir), torch.get_num_threads())
        log(f"training: {method} median epoch {out[method]['epoch']['median_s']:.3f}s, "
            f"peak RSS {out[method]['peak_rss_mb']:.0f} MB")
    out["epoch_time_ratio_slpt_vs_full_finetune"] = (out["slpt"]["epoch"]["median_s"]
                                                     / out["full_finetune"]["epoch"]["median_s"])
    return out


def measure_scale(s: SpeedSettings, backbone_dir: Path, log) -> dict:
    pools = []
    for n in s.pool_sizes:
        pools.append(in_child(_score_pool_child, n, s, str(backbone_dir), torch.get_num_threads()))
        log(f"scale: pool {n}: {pools[-1]['scoring_s']:.1f}s scoring, peak RSS {pools[-1]['peak_rss_mb']:.0f} MB")
    for p in pools:
        p["seconds_per_scan"] = p["scoring_s"] / p["pool"]
    backbone = load_backbone(backbone_dir)
    dim = len(embed_scan(backbone.network, torch.zeros(1, 32, 32, 32), SLPTConfig.embed_stage, None)[0])
    n = s.selection_embeddings
    rng = np.random.default_rng(0)
    feats, scores = rng.normal(size=(n, dim)), rng.random(n)
    _, k = budget_plan(n, SLPTConfig.budget_fraction, SLPTConfig.rounds)
    selection = {"embeddings": n, "dim": dim, "k": k}
    for name, fn in (("stage2_uncertain_diverse",
                      lambda: uncertain_diverse_select(feats, scores, k, np.random.default_rng(1))),
                     ("stage1_diversity", lambda: diversity_select(feats, k, np.random.default_rng(1))),
                     ("coreset_k_center", lambda: coreset_select(feats, feats[:0], k)),
                     ("random", lambda: random_select(n, k, np.random.default_rng(1)))):
        selection[name] = timed(fn, s.repeats, warmup=0)
        log(f"scale: {name} over {n} embeddings, k={k}: {selection[name]['median_s']:.2f}s")
    selection["target_seconds"] = s.selection_target_seconds
    return {"pools": pools, "selection": selection}


# -- the real server ----------------------------------------------------------------------------------------
def measure_server(s: SpeedSettings, log) -> dict:
    from tools.server import start_server, stop_server

    workdir = Path(tempfile.mkdtemp(prefix="slpt_speed_"))
    seed = demo_seed(s.demo_spec)
    other = next(x for x in range(seed + 1, seed + 100) if phantom_header(x)["orientation"] == "RAS")
    spec = PhantomSpec(**s.demo_spec) if s.demo_spec else None
    write_studies(workdir / "studies", [seed, other], spec=spec, ground_truth=workdir / "truth")
    server = start_server(workdir, workdir / "studies", {"slpt_model_dir": str(workdir / "prompts"),
                                                         "slpt_train_after_labels": "1000000"})
    try:
        for x in (seed, other):
            name = image_id(x)
            with open(workdir / "truth" / f"{name}.nii.gz", "rb") as f:
                server.put(f"/datastore/label?image={name}&tag=final",
                           files={"label": (f"{name}.nii.gz", f)}).raise_for_status()
        server.post("/train/slpt", json=s.server_train).raise_for_status()
        deadline = time.time() + 3600
        while time.time() < deadline:
            task = server.get("/train/").json()
            if task.get("status") not in ("SUBMITTED", "RUNNING"):
                break
            time.sleep(2)
        if task.get("status") != "DONE":
            raise RuntimeError(f"prompt training through the server did not finish: {task}")
        name = image_id(seed)
        times: dict[str, list[float]] = {"backbone": [], "slpt": []}
        for model in times:  # warm-up: model loading happens on the first call
            server.post(f"/infer/{model}?image={name}&output=image").raise_for_status()
        for _ in range(s.repeats):  # interleaved, so drifting load hits both alike
            for model in times:
                t = time.perf_counter()
                server.post(f"/infer/{model}?image={name}&output=image").raise_for_status()
                times[model].append(time.perf_counter() - t)
        latencies = server.post(f"/infer/slpt?image={name}&output=json").json().get("latencies")
    finally:
        stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)
    out = {m: {"median_s": statistics.median(v), "runs_s": v} for m, v in times.items()}
    out["ratio_slpt_vs_backbone"] = out["slpt"]["median_s"] / out["backbone"]["median_s"]
    out["slpt_latencies"] = latencies
    out["volume_seed"] = seed
    log(f"server: /infer/slpt {out['slpt']['median_s']:.2f}s vs /infer/backbone {out['backbone']['median_s']:.2f}s")
    return out


# -- report ---------------------------------------------------------------------------------------------------
def markdown(r: dict) -> str:
    m, quick = r["machine"], r.get("quick")

    def _verdict(ok: bool) -> str:
        return "not judged in quick mode" if quick else "holds" if ok else "does NOT hold"
    lines = ["# Speed and scale (written by `python -m benchmarks.speed`)", "",
             *(["**Quick mode: a pipeline check on a tiny setting; these numbers say nothing about speed.**", ""]
               if quick else []),
             (f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, device {m['device']}"
              f"{', GPU ' + m['gpu'] if m['gpu'] else ''}; torch {m['torch']}. "
              f"Medians over {r['settings']['repeats']} runs."), ""]
    if "server" in r:
        v = r["server"]
        lines += ["## End-to-end inference through the server", "",
                  "| request | median s | vs backbone |", "| --- | --- | --- |",
                  f"| `/infer/backbone` (frozen backbone, sliding window) | {v['backbone']['median_s']:.3f} | 1.00x |",
                  f"| `/infer/slpt` (K=3 prompts) | {v['slpt']['median_s']:.3f} | {v['ratio_slpt_vs_backbone']:.2f}x |",
                  "",
                  f"Target SLPT <= {INFER_VS_BACKBONE_MAX}x the backbone: "
                  f"{_verdict(v['ratio_slpt_vs_backbone'] <= INFER_VS_BACKBONE_MAX)}.", ""]
    v = r["scoring"]
    mc = next(k for k in v if k.startswith("mc_dropout_"))
    ratios = v["ratios"]
    lines += ["## Scoring one scan", "", (f"Volume {v['volume']} voxels (backbone space); the liver is "
              f"{100 * v['organ_fraction']:.0f}% of it, and {v['windows_computed']} of its {v['windows_total']} "
              f"sliding windows touch the liver."), "",
              "| work | median s | vs one SLPT inference |", "| --- | --- | --- |"]
    base = v["slpt_inference"]["median_s"]
    for key, label in (("slpt_inference", "one SLPT inference (every window, K=3)"),
                       ("tesla_scoring", "TESLA first scoring (backbone pass for embedding and liver mask, "
                                         "then PU in the liver's windows)"),
                       ("tesla_uncertainty", "TESLA re-scoring after a new checkpoint (PU alone; the mask is kept)"),
                       (mc, f"MC-dropout, {mc.rsplit('_', 1)[1]} samples (every window)")):
        lines.append(f"| {label} | {v[key]['median_s']:.3f} | {v[key]['median_s'] / base:.2f}x |")
    rescoring = ratios.get("tesla_rescoring_vs_slpt_inference")  # absent from reports before the mask was kept
    lines += ["", (f"Target TESLA <= {SCORING_VS_INFER_MAX}x one SLPT inference: first scoring "
              f"{ratios['tesla_scoring_vs_slpt_inference']:.2f}x "
              f"({_verdict(ratios['tesla_scoring_vs_slpt_inference'] <= SCORING_VS_INFER_MAX)})"
              + (f", re-scoring {rescoring:.2f}x ({_verdict(rescoring <= SCORING_VS_INFER_MAX)})."
                 if rescoring else ".")),
              (f"Target TESLA >= {MC_DROPOUT_VS_SCORING_MIN:g}x faster than MC-dropout: "
               f"{ratios['mc_dropout_vs_tesla_scoring']:.2f}x "
               f"({_verdict(ratios['mc_dropout_vs_tesla_scoring'] >= MC_DROPOUT_VS_SCORING_MIN)})."), ""]
    t = r["training"]
    mem = "cuda_max_allocated_mb" if "cuda_max_allocated_mb" in t["slpt"] else "peak_rss_mb"
    mem_label = "CUDA max allocated" if mem == "cuda_max_allocated_mb" else "peak RSS of the process"
    lines += ["## Training", "", (f"One epoch = {t['slpt']['iterations_per_epoch']} steps of {t['slpt']['batch_size']} "
              f"patches of {t['slpt']['patch_size']}³; each method in a fresh process."), "",
              f"| method | trainable parameters | median s per epoch | {mem_label} (MB) |", "| --- | --- | --- | --- |"]
    for key, label in (("slpt", "prompt-only (SLPT K=3)"), ("full_finetune", "full fine-tuning")):
        lines.append(f"| {label} | {t[key]['trainable_parameters']:,} | {t[key]['epoch']['median_s']:.3f} | "
                     f"{t[key][mem]:.0f} |")
    sc = r["scale"]
    lines += ["", "## Scale", "",
              ("TESLA first scoring of pools of small phantoms (untrained prompts; the cost is the same), "
               "each pool in a fresh process:"), "",
              "| pool | scoring s | s per scan | peak RSS MB | RSS first -> last scan MB |",
              "| --- | --- | --- | --- | --- |"]
    for p in sc["pools"]:
        lines.append(f"| {p['pool']} | {p['scoring_s']:.1f} | {p['seconds_per_scan']:.3f} | {p['peak_rss_mb']:.0f} | "
                     f"{p['rss_first_mb']:.0f} -> {p['rss_last_mb']:.0f} |")
    sel = sc["selection"]
    lines += ["", (f"Selection of k={sel['k']} from {sel['embeddings']:,} synthetic embeddings "
                   f"of dimension {sel['dim']}:"), "",
              "| selection | median s |", "| --- | --- |"]
    for key in ("stage2_uncertain_diverse", "stage1_diversity", "coreset_k_center", "random"):
        lines.append(f"| {key} | {sel[key]['median_s']:.3f} |")
    lines += ["", (f"Target stage 2 <= {sel['target_seconds']:.0f} s: "
              f"{_verdict(sel['stage2_uncertain_diverse']['median_s'] <= sel['target_seconds'])}."), ""]
    return "\n".join(lines)


def run(s: SpeedSettings, backbone_dir: Path, log=lambda m: print(m, flush=True)) -> dict:
    result = {"settings": dataclasses.asdict(s), "machine": machine(device())}
    t0 = time.perf_counter()
    result["scoring"] = measure_scoring(s, backbone_dir, log)
    result["training"] = measure_training(s, backbone_dir, log)
    result["scale"] = measure_scale(s, backbone_dir, log)
    if s.server:
        result["server"] = measure_server(s, log)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder for result.json and result.md")
    parser.add_argument("--backbone", type=Path, default=ROOT / "models" / "backbone")
    parser.add_argument("--quick", action="store_true", help="tiny setting: checks the pipeline, not speed")
    parser.add_argument("--no-server", action="store_true", help="skip the end-to-end server measurement")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--pool-sizes", type=int, nargs="+", help="scale: scoring pool sizes (default 100 300 1000)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = dataclasses.replace(QUICK if args.quick else SpeedSettings(), server=not args.no_server)
    if args.pool_sizes:
        settings = dataclasses.replace(settings, pool_sizes=tuple(args.pool_sizes))
    result = {**run(settings, args.backbone.resolve()), "quick": args.quick}
    write_report(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
