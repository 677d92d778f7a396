"""How fast TESLA scores, and what scoring in the liver's windows only costs in ranking quality.

For a pool of phantoms: time the frozen-backbone pass (embedding and liver mask) and the K-prompt uncertainty
in the sliding windows that touch the liver (what the ``tesla`` scoring method runs), and on a subset also
the K-prompt pass over every window (what one ``/infer/slpt`` computes), then compare the two uncertainty
rankings (Spearman).

    python -m benchmarks.scoring --out docs/results/scoring --pool 200 --compare 40

A prompt checkpoint is needed for the uncertainty; the script first trains one, with the app's default
round, on labelled phantoms disjoint from the pool (its settings are in the output).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from apps.slpt.active.scoring import embed_scan, prompt_uncertainty
from apps.slpt.active.uncertainty import scan_uncertainty
from apps.slpt.config import SLPTConfig
from apps.slpt.inference import predict, task_inferer, task_label
from apps.slpt.model.backbone import load_backbone
from apps.slpt.model.build import build_model
from apps.slpt.training.loop import fit
from apps.slpt.windows import OrganWindows
from benchmarks.reporting import write_report
from phantoms.io import load_phantom_pair
from phantoms.phantom import make_phantom

POOL_FIRST_SEED = 500_000
TRAIN_SEEDS = range(510_000, 510_008)


def run(pool: int, compare: int, backbone_dir: Path, cfg: SLPTConfig, log=print) -> dict:
    backbone = load_backbone(backbone_dir)
    inferer = task_inferer(cfg)
    train = [load_phantom_pair(make_phantom(s), backbone.preprocessing, target="task") for s in TRAIN_SEEDS]
    model = build_model(backbone, cfg)
    t0 = time.time()
    fit(model, train, [], cfg, inferer, log=lambda m: None)
    log(f"trained the scoring checkpoint in {time.time() - t0:.0f}s")

    rows = []
    for n, seed in enumerate(range(POOL_FIRST_SEED, POOL_FIRST_SEED + pool)):
        ph = make_phantom(seed)
        image, _ = load_phantom_pair(ph, backbone.preprocessing, target="task")
        t = time.perf_counter()
        embedding, organ = embed_scan(backbone.network, image, cfg.embed_stage, backbone.labels.get("liver"),
                                         precision=cfg.precision)
        t_embed = time.perf_counter() - t
        t = time.perf_counter()
        roi_pu = prompt_uncertainty(model, image, organ, inferer, cfg.uncertainty_margin, cfg.uncertainty_top_fraction)
        t_roi = time.perf_counter() - t
        computed, total = OrganWindows(inferer, organ).count(image[None])
        row = {"seed": seed, "tumor_type": ph.info["tumor_type"], "embed_s": t_embed, "roi_pu_s": t_roi,
               "roi_pu": roi_pu, "window_fraction": computed / total}
        if n < compare:
            t = time.perf_counter()
            probs, pu = predict(model, image, inferer)
            row["full_pass_s"] = time.perf_counter() - t
            row["full_pu"] = scan_uncertainty(pu.numpy(), task_label(probs).numpy(), cfg.uncertainty_margin,
                                              top_fraction=cfg.uncertainty_top_fraction)
        rows.append(row)
        if (n + 1) % 20 == 0:
            log(f"scored {n + 1}/{pool}")

    compared = [r for r in rows if "full_pu" in r]
    rho = (spearmanr([r["roi_pu"] for r in compared], [r["full_pu"] for r in compared]).statistic
           if len(compared) > 2 else None)
    mean = lambda key, rs=rows: float(np.mean([r[key] for r in rs]))  # noqa: E731
    return {
        "pool": pool,
        "threads": torch.get_num_threads(),
        "per_scan_seconds": {"backbone_pass": mean("embed_s"), "liver_window_uncertainty": mean("roi_pu_s"),
                             "scoring": mean("embed_s") + mean("roi_pu_s"),
                             "full_volume_k_prompt_pass": mean("full_pass_s", compared) if compared else None},
        "pool_seconds": float(sum(r["embed_s"] + r["roi_pu_s"] for r in rows)),
        "mean_window_fraction": mean("window_fraction"),
        "spearman_roi_vs_full_uncertainty": rho,
        "compared_scans": len(compared),
        "scoring_checkpoint": {"train_scans": len(train),
                               **{k: v for k, v in cfg.to_dict().items()
                                  if k in ("epochs", "iterations_per_epoch", "num_prompts")}},
        "rows": rows,
    }


def markdown(r: dict) -> str:
    p, s = r["per_scan_seconds"], r["pool_seconds"]  # s: the whole pool's scoring seconds
    return "\n".join([
        "# TESLA scoring speed (written by `python -m benchmarks.scoring`)",
        "",
        f"Pool of {r['pool']} phantoms, {r['threads']} CPU threads. Per scan, mean seconds:",
        "",
        "| work | seconds |",
        "| --- | --- |",
        f"| backbone pass: embedding and liver mask | {p['backbone_pass']:.2f} |",
        f"| K-prompt uncertainty in the windows that touch the liver | {p['liver_window_uncertainty']:.2f} |",
        f"| scoring a scan (both; first time and after each new checkpoint) | {p['scoring']:.2f} |",
        f"| full-volume K-prompt pass (the network part of one /infer/slpt) | {_fmt(p['full_volume_k_prompt_pass'])} |",
        "",
        f"Whole pool: {s:.0f} s. On average {100 * r['mean_window_fraction']:.0f}% of a scan's sliding windows "
        f"touch the liver and are computed.",
        "",
        f"Ranking given up by scoring in the liver's windows instead of every window: Spearman "
        f"{_fmt(r['spearman_roi_vs_full_uncertainty'])} between the two per-scan uncertainties over "
        f"{r['compared_scans']} scans.",
        "",
    ])


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--compare", type=int, default=40, help="scans also scored on the full volume")
    parser.add_argument("--backbone", type=Path, default=Path("models/backbone"))
    parser.add_argument("--epochs", type=int, default=SLPTConfig.epochs,
                        help="epochs of the scoring checkpoint (default: the app's own training round)")
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(SLPTConfig(), epochs=args.epochs)
    result = run(args.pool, args.compare, args.backbone, cfg, log=lambda m: print(m, flush=True))
    write_report(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
