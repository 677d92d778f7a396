"""Where one SLPT training step and one evaluation spend their time on a GPU (or the CPU).

    python -m benchmarks.gpu_step_profile [--device cuda]

Prints the mean time of a step's parts (patch sampling, forward, loss, backward + optimiser) with and
without cuDNN autotuning, the profiler's top operators of one step, and one volume's prediction and
post-processing. It showed, on an H100, that a step is bound by kernel launches rather than GPU work,
which is why benchmarks/gpu_session.sh runs one process at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from apps.slpt.config import SLPTConfig
from apps.slpt.inference import predict, task_inferer, task_label
from apps.slpt.model.backbone import load_backbone
from apps.slpt.model.build import build_model
from apps.slpt.training.loop import PatchSampler, augmented_views, dvpt_loss, prompt_optimizer, task_loss
from phantoms.io import load_phantom_pair
from phantoms.phantom import make_phantom


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    dev, cfg = torch.device(args.device), SLPTConfig()
    backbone = load_backbone("models/backbone", device=dev)
    pair = load_phantom_pair(make_phantom(300045), backbone.preprocessing, target="task")
    model = build_model(backbone, cfg).to(dev)
    rng = np.random.default_rng(0)
    sampler = PatchSampler([pair], cfg.patch_size, rng, cfg.tumour_patch_ratio)
    loss_fn, optimizer = task_loss(cfg).to(dev), prompt_optimizer(model, cfg)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def timed(parts: dict, key: str):
        start = time.perf_counter()
        yield
        sync()
        parts[key] += time.perf_counter() - start

    def step(parts: dict) -> None:
        # apps.slpt.training.loop.train_step, unrolled so that each phase is timed on its own
        with timed(parts, "data"):
            x, y = sampler(cfg.batch_size)
            views, y = augmented_views(x, cfg.num_prompts, rng, cfg.view_jitter).to(dev), y.to(dev)
        with timed(parts, "forward"):
            logits = model.forward_views(views)
        with timed(parts, "loss"):
            loss, _ = dvpt_loss(logits, y, cfg.num_prompts, loss_fn, cfg.diversity_weight)
        with timed(parts, "backward_and_step"):
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def fresh() -> dict:
        return dict.fromkeys(("data", "forward", "loss", "backward_and_step"), 0.0)

    for autotune in (False, True):
        torch.backends.cudnn.benchmark = autotune
        for _ in range(3):
            step(fresh())  # warm-up
        parts = fresh()
        for _ in range(args.steps):
            step(parts)
        print(f"cudnn.benchmark={autotune}: seconds per step", {k: round(v / args.steps, 4) for k, v in parts.items()})
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(fresh())
    sort = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=12))
    image, _ = load_phantom_pair(make_phantom(600001), backbone.preprocessing, target="task")
    inferer = task_inferer(cfg)
    for _ in range(2):  # the first pass pays for CUDA/cuDNN set-up
        t = time.perf_counter()
        probs, _ = predict(model, image, inferer)
        t1 = time.perf_counter()
        task_label(probs)
        print(f"volume {tuple(image.shape[1:])}: predict {t1 - t:.3f}s, task_label {time.perf_counter() - t1:.3f}s")


if __name__ == "__main__":
    main()
