"""The SLPT-vs-fine-tuning comparison keeps each finished run with its inputs, so a stopped run resumes,
and a new SLPT setting does not repeat full fine-tuning."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks import compare

pytestmark = pytest.mark.slow

TRAINING = ("[slpt]", "[full_finetune]")


def test_finished_runs_are_reused_only_for_the_same_inputs(root, tmp_path, one_thread):
    backbone = root / "models" / "backbone"
    messages: list[str] = []
    first = compare.run(compare.QUICK, backbone, log=messages.append, out=tmp_path)
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"seed0-slpt.json", "seed0-full_finetune.json"}
    assert all(any(m.startswith(prefix) for m in messages) for prefix in TRAINING)

    messages.clear()
    again = compare.run(compare.QUICK, backbone, log=messages.append, out=tmp_path)
    assert again["runs"] == first["runs"]
    assert not any(m.startswith(TRAINING) for m in messages)  # nothing trained twice
    assert sum("finished earlier" in m for m in messages) == 2

    # A run kept from another SLPT design is not this design's result, whatever its settings.
    kept = tmp_path / "runs" / "seed0-slpt.json"
    earlier_design = json.loads(kept.read_text())
    earlier_design["inputs"]["design"] = "SLPT v2"
    kept.write_text(json.dumps(earlier_design))
    messages.clear()
    compare.run(compare.QUICK, backbone, log=messages.append, out=tmp_path)
    assert any(m.startswith("[slpt]") for m in messages)
    assert not any(m.startswith("[full_finetune]") for m in messages)

    # A prompt-only setting trains SLPT again; full fine-tuning never reads it and is kept.
    messages.clear()
    wider = compare.run(compare.QUICK, backbone, log=messages.append, out=tmp_path, overrides={"hidden_ratio": 0.5})
    assert any(m.startswith("[slpt]") for m in messages)
    assert not any(m.startswith("[full_finetune]") for m in messages)
    assert wider["runs"][0]["full_finetune"] == first["runs"][0]["full_finetune"]
    assert wider["runs"][0]["slpt"]["trainable"] != first["runs"][0]["slpt"]["trainable"]

    # A setting both methods read trains both again: here the app trainer's protocol, which holds out a
    # validation split instead of training on every labelled scan.
    messages.clear()
    best = compare.run(dataclasses.replace(compare.QUICK, keep="best"), backbone, log=messages.append, out=tmp_path,
                       overrides={"val_fraction": 0.5})  # so that 3 labelled scans can spare one
    assert all(any(m.startswith(prefix) for m in messages) for prefix in TRAINING)
    assert first["runs"][0]["train_size"] == compare.QUICK.n_labelled and first["runs"][0]["val_size"] == 0
    assert best["runs"][0]["val_size"] > 0
    assert best["runs"][0]["train_size"] + best["runs"][0]["val_size"] == compare.QUICK.n_labelled


def test_a_seed_trained_on_its_own_is_reused_by_the_report(root, tmp_path, one_thread, capsys):
    args = ["--out", str(tmp_path), "--quick", "--backbone", str(root / "models" / "backbone")]
    # A seed can be split further by method: its table shows what is kept so far.
    runs = tmp_path / f"labels{compare.QUICK.n_labelled}" / "runs"
    compare.main([*args, "--seed", "0", "--method", "full_finetune"])
    assert {p.name for p in runs.iterdir()} == {"seed0-full_finetune.json", "seed0.md"}
    assert "full fine-tuning" in (runs / "seed0.md").read_text()
    assert "SLPT v2 (K=3" not in (runs / "seed0.md").read_text()
    capsys.readouterr()
    compare.main([*args, "--seed", "0"])
    assert "[full_finetune]" not in capsys.readouterr().out  # kept, not trained again
    assert {p.name for p in runs.iterdir()} == {"seed0-slpt.json", "seed0-full_finetune.json", "seed0.md"}
    assert not (tmp_path / "result.md").exists()  # one seed alone makes no report
    # The seed's own table holds the Dice its kept runs measured.
    seed_table = (runs / "seed0.md").read_text()
    for method in compare.METHODS:
        kept = json.loads((runs / f"seed0-{method}.json").read_text())["result"]
        assert f"| {kept['dice_tumor']:.4f} | {kept['dice_liver']:.4f} |" in seed_table
    capsys.readouterr()

    compare.main(args)
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 2 and "[slpt]" not in out
    # One epoch per run in quick mode, so the epoch kept can only be that one.
    report = (tmp_path / "result.md").read_text()
    assert "SLPT [1]; full fine-tuning [1]" in report and "Wall time, training and testing every run" in report
    assert json.loads((tmp_path / "result.json").read_text())["by_labels"].keys() == {str(compare.QUICK.n_labelled)}

    with pytest.raises(ValueError, match=r"seeds \[7\] are not among"):
        compare.main([*args, "--seed", "7"])
    with pytest.raises(SystemExit):  # the report compares both methods
        compare.main([*args, "--method", "slpt"])
