"""The label-efficiency and speed benchmarks in quick mode: the whole pipeline runs and writes well-formed outputs.

Nothing here judges quality or speed (quick settings are far too small for that). Each test runs its
benchmark's quick setting once, single-threaded: about a minute each on an idle 2-core machine.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest

from apps.slpt.model.backbone import load_backbone
from benchmarks import speed
from benchmarks.label_efficiency import METHODS, QUICK, STRATEGIES, Benchmark, plan
from benchmarks.label_efficiency_report import write_outputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backbone(root):
    return load_backbone(root / "models" / "backbone")


def test_label_efficiency_quick_run_writes_every_row_and_resumes_from_its_cache(backbone, tmp_path, one_thread):
    result = {**Benchmark(QUICK, backbone, tmp_path, log=lambda m: None).run(), "quick": True}
    write_outputs(tmp_path, result)

    saved = json.loads((tmp_path / "result.json").read_text())
    assert {"settings", "machine", "strategies", "methods", "full_data", "bars", "grid", "pool_types"} <= set(saved)
    assert set(saved["strategies"]) == set(STRATEGIES) and set(saved["methods"]) == set(METHODS)
    assert set(saved["full_data"]) == {"slpt_k3", "full_finetune"}
    assert len(saved["status_quo"]["dice_tumor"]["values"]) == len(QUICK.run_seeds)  # fine-tuning on random picks
    assert set(saved["tesla_minus"]) == (set(STRATEGIES) - {"tesla"}) | {"status_quo"}
    assert all(d["low"] <= d["difference"] <= d["high"] for d in saved["tesla_minus"].values())
    budget = saved["budget"]
    for name, strategy in saved["strategies"].items():
        assert [r["labelled"] for r in strategy["rounds"]][-1] == budget, name
        assert all(len(picks) == budget == len(set(picks)) for picks in strategy["selected_seeds"]), name
        assert sum(strategy["selected_types"].values()) == budget
    for block in (*saved["methods"].values(), *saved["full_data"].values()):
        assert {"dice_tumor", "dice_tumor_global", "dice_liver", "dice_tumor_per_type", "train_seconds",
                "trainable_percent_of_backbone", "percent_of_full_data_slpt"} <= set(block)
        assert len(block["dice_tumor"]["values"]) == len(QUICK.run_seeds)
    table = (tmp_path / "result.md").read_text()
    assert "Quick mode" in table and "Wall time of the run" in table
    for label in (*STRATEGIES.values(), *METHODS.values()):
        assert f"| {label} |" in table, label
    assert "| full fine-tuning on random picks (what MONAI Label users do today) |" in table
    assert "| foreground_random |" in table and "| status_quo |" in table  # the paired differences
    for png in ("learning_curve.png", "predictions.png"):
        assert matplotlib.image.imread(tmp_path / png).ndim == 3

    # The plan printed before a run (and behind its estimate) counts the trainings the run does. Strategies that
    # pick the same scans share one cached SLPT training, common on this tiny pool: there the plan is a bound.
    cached = {p.name for p in (tmp_path / "cache" / "runs").iterdir()}
    planned = plan(QUICK, saved["pool_size"])["trainings"]
    for method in METHODS:
        trained = sum(name.startswith(f"{method}_s") and name.endswith(".json") for name in cached)
        assert trained <= len(planned[method]) if method == "slpt_k3" else trained == len(planned[method]), method

    # Every training, score and selection is cached: a second run trains nothing and repeats the numbers.
    again = Benchmark(QUICK, backbone, tmp_path, log=lambda m: None).run()
    assert {p.name for p in (tmp_path / "cache" / "runs").iterdir()} == cached
    assert again["strategies"] == saved["strategies"] and again["methods"] == saved["methods"]


def test_label_efficiency_resumes_after_a_killed_run_without_redoing_finished_work(backbone, root, tmp_path,
                                                                                    one_thread):
    runs = tmp_path / "cache" / "runs"
    command = [sys.executable, "-m", "benchmarks.label_efficiency", "--out", str(tmp_path), "--quick",
               "--no-estimate", "--threads", "1"]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while len(list(runs.glob("*.json"))) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        process.kill()  # SIGKILL: no clean-up runs
        process.wait()
    finished = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    assert len(finished) >= 2 and not (tmp_path / "result.json").exists()

    result = Benchmark(QUICK, backbone, tmp_path, log=lambda m: None).run()
    assert set(result["strategies"]) == set(STRATEGIES) and set(result["methods"]) == set(METHODS)
    assert result["wall"]["invocations"] == 2 and result["wall"]["seconds"] > result["seconds_this_invocation"]
    for name, content in finished.items():  # kept as they were: read back, not trained again
        assert (runs / name).read_bytes() == content, name


def test_label_efficiency_cache_refuses_other_settings(backbone, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "settings.json").write_text(json.dumps({"settings": {}, "backbone": "other"}))
    with pytest.raises(ValueError, match="other settings"):
        Benchmark(QUICK, backbone, tmp_path)


def test_speed_quick_run_writes_every_figure_and_judges_every_target(root, tmp_path, one_thread):
    settings = dataclasses.replace(speed.QUICK, server=False)  # the server path is covered by tests/app
    result = {**speed.run(settings, root / "models" / "backbone", log=lambda m: None), "quick": True}
    table = speed.markdown(result)

    assert {"settings", "machine", "precision", "scoring", "training", "scale"} <= set(result)
    assert result["machine"]["device"] in ("cpu", "cuda")
    scoring = result["scoring"]
    for key in ("slpt_inference", "tesla_scoring", "tesla_uncertainty", f"mc_dropout_{settings.mc_samples}"):
        assert len(scoring[key]["runs_s"]) == settings.repeats and scoring[key]["median_s"] > 0
    assert 0 < scoring["organ_fraction"] <= scoring["box_fraction"] <= 1
    assert set(scoring["ratios"]) == {"tesla_scoring_vs_slpt_inference", "tesla_rescoring_vs_slpt_inference",
                                      "mc_dropout_vs_tesla_scoring"}
    assert "first scoring" in table and "re-scoring" in table
    for method in ("slpt", "full_finetune"):
        measured = result["training"][method]
        assert measured["peak_rss_mb"] >= measured["rss_before_training_mb"] > 0 and measured["epoch"]["median_s"] > 0
    training = result["training"]
    assert training["slpt"]["trainable_parameters"] < training["full_finetune"]["trainable_parameters"]
    assert [p["pool"] for p in result["scale"]["pools"]] == list(settings.pool_sizes)
    assert result["scale"]["selection"]["embeddings"] == settings.selection_embeddings
    assert result["scale"]["large_selection"]["embeddings"] == settings.large_selection_embeddings
    workers = result["scale"]["workers"]  # the app's scoring task at each worker count, every scan scored
    assert [w["workers"] for w in workers] == list(settings.scoring_workers)
    assert all(w["scans"] == settings.worker_pool and w["scoring_s"] > 0 for w in workers)
    for heading in ("## Scoring one scan", "## Training", "## Scale", "Quick mode", "not measured in this run",
                    "## Projection to large pools", "| 100,000 | this CPU ("):
        assert heading in table

    # Outside quick mode every target gets a verdict, from the figures measured.
    judged = speed.markdown({**result, "quick": False, "training": {**training, "slpt_v1": {
        **training["slpt"], "epoch": {"median_s": 10 * training["slpt"]["epoch"]["median_s"]},
        "code": {"tree": "/tmp/v1", "commit": "cc22fdd" + "0" * 33}}, "epoch_speedup_vs_slpt_v1": 10.0}})
    assert "not judged" not in judged and "SLPT v1" in judged and "`cc22fdd`" in judged
    assert judged.count("holds") + judged.count("does NOT hold") == 6  # scoring x2, MC, epoch x2, selection
    assert "10.00x (holds)" in judged


def test_speed_full_size_ct_is_512_square_in_the_same_world_place():
    small = speed.make_phantom(5, speed.PhantomSpec(**speed.SMALL))
    padded = speed.pad_inplane(small, 80)

    assert padded.image.shape == (80, 80, small.image.shape[2]) and padded.label.shape == padded.image.shape
    lo = [(80 - n) // 2 for n in small.image.shape[:2]]
    assert (padded.image[lo[0]:lo[0] + small.image.shape[0], lo[1]:lo[1] + small.image.shape[1]] == small.image).all()
    assert padded.image[0, 0, 0] == -1024 and padded.label.sum() == small.label.sum()
    # The original voxel (0, 0, 0) sits at (lo0, lo1, 0) now, at the same world position.
    np.testing.assert_allclose(padded.affine @ [lo[0], lo[1], 0, 1], small.affine @ [0, 0, 0, 1])
    spec = speed.PhantomSpec(**speed.FULL_SIZE_CT)  # what the full run makes, checked without making it
    assert spec.inplane_spacing == (0.8, 0.8) and spec.slice_spacing == (1.5, 1.5)
    assert spec.z_extent[0] / spec.slice_spacing[1] >= 200
    widest = 2 * 160 * spec.body_scale[1] * 1.07 + 24  # phantom.py's largest field of view across, in mm
    assert widest / spec.inplane_spacing[0] <= speed.FULL_SIZE_INPLANE


def test_speed_reads_monai_label_latencies_from_a_multipart_answer():
    from requests_toolbelt import MultipartEncoder

    params = {"latencies": {"pre": 1.0, "infer": 2.0, "invert": 0.5, "post": 0.3, "write": 0.2, "total": 4.0}}
    body = MultipartEncoder(fields={"params": (None, json.dumps(params), "application/json"),
                                    "image": ("label.nii.gz", b"\x00" * 16, "application/gzip")})

    answer = SimpleNamespace(headers={"content-type": body.content_type}, content=body.to_string())
    assert speed.answer_params(answer) == params


def test_speed_v1_tree_must_hold_v1s_benchmark(root, tmp_path):
    with pytest.raises(ValueError, match="git worktree add"):
        speed.v1_epoch(tmp_path, speed.QUICK, root / "models" / "backbone", 1)
