"""The label-efficiency and speed benchmarks in quick mode: the whole pipeline runs and writes well-formed outputs.

Nothing here judges quality or speed (quick settings are far too small for that). Each test runs its
benchmark's quick setting once, single-threaded: about a minute each on an idle 2-core machine.
"""

from __future__ import annotations

import dataclasses
import json

import matplotlib.image
import pytest

from apps.slpt.model.backbone import load_backbone
from benchmarks import speed
from benchmarks.label_efficiency import METHODS, QUICK, STRATEGIES, Benchmark
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
    assert "Quick mode" in table
    for label in (*STRATEGIES.values(), *METHODS.values()):
        assert f"| {label} |" in table, label
    for png in ("learning_curve.png", "predictions.png"):
        assert matplotlib.image.imread(tmp_path / png).ndim == 3

    # Every training, score and selection is cached: a second run trains nothing and repeats the numbers.
    cached = {p.name for p in (tmp_path / "cache" / "runs").iterdir()}
    again = Benchmark(QUICK, backbone, tmp_path, log=lambda m: None).run()
    assert {p.name for p in (tmp_path / "cache" / "runs").iterdir()} == cached
    assert again["strategies"] == saved["strategies"] and again["methods"] == saved["methods"]


def test_label_efficiency_cache_refuses_other_settings(backbone, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "settings.json").write_text(json.dumps({"settings": {}, "backbone": "other"}))
    with pytest.raises(ValueError, match="other settings"):
        Benchmark(QUICK, backbone, tmp_path)


def test_speed_quick_run_writes_every_figure(root, tmp_path, one_thread):
    settings = dataclasses.replace(speed.QUICK, server=False)  # the server path is covered by tests/app
    result = {**speed.run(settings, root / "models" / "backbone", log=lambda m: None), "quick": True}
    table = speed.markdown(result)

    assert {"settings", "machine", "scoring", "training", "scale"} <= set(result)
    assert result["machine"]["device"] in ("cpu", "cuda")
    scoring = result["scoring"]
    for key in ("slpt_inference", "tesla_scoring", "tesla_uncertainty", f"mc_dropout_{settings.mc_samples}"):
        assert len(scoring[key]["runs_s"]) == settings.repeats and scoring[key]["median_s"] > 0
    assert 0 < scoring["windows_computed"] <= scoring["windows_total"]
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
    for heading in ("## Scoring one scan", "## Training", "## Scale", "Quick mode"):
        assert heading in table
