from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from monai.networks.nets import SegResNet

from apps.slpt.model.checkpoints import CheckpointError, PromptCheckpointStore, load_into
from apps.slpt.model.prompts import PromptedSegmenter

IDENTITY = {"name": "tiny", "sha256": "a" * 64}


def tiny_model(seed=0, k=2):
    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=4, init_filters=8,
                    blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)).eval()
    return PromptedSegmenter(net, organ_channel=1, num_prompts=k, seed=seed)


def trained(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


def test_save_reload_reproduces_outputs_and_holds_only_trained_tensors(tmp_path):
    model = trained(tiny_model())
    store = PromptCheckpointStore(tmp_path)
    version = store.save(model.trainable_state_dict(), {"backbone": IDENTITY, "classes": {"liver": 1}})
    payload = store.read()
    assert payload["version"] == version == store.current() == 1
    assert not any(k.startswith("backbone.") for k in payload["state_dict"])
    backbone_bytes = sum(p.numel() for p in model.backbone.parameters()) * 4
    assert store.path(version).stat().st_size < backbone_bytes / 4

    fresh = tiny_model(seed=1)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(fresh.tumour_log_odds(x), model.tumour_log_odds(x))
        load_into(fresh, payload, IDENTITY)
        torch.testing.assert_close(fresh.tumour_log_odds(x), model.tumour_log_odds(x))


def test_checkpoint_for_another_backbone_is_refused(tmp_path):
    store = PromptCheckpointStore(tmp_path)
    store.save(tiny_model().trainable_state_dict(), {"backbone": {"name": "wholeBody", "sha256": "b" * 64}})
    with pytest.raises(CheckpointError, match="trained on backbone 'wholeBody'.*this app runs 'tiny'"):
        load_into(tiny_model(), store.read(), IDENTITY)


def test_checkpoint_with_other_prompt_shapes_is_refused(tmp_path):
    store = PromptCheckpointStore(tmp_path)
    store.save(tiny_model(k=3).trainable_state_dict(), {"backbone": IDENTITY})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_into(tiny_model(k=2), store.read(), IDENTITY)


def test_a_checkpoint_of_the_first_design_is_refused_with_what_to_do(tmp_path):
    store = PromptCheckpointStore(tmp_path)
    store.save(tiny_model().trainable_state_dict(), {"backbone": IDENTITY})
    payload = torch.load(store.path(1), weights_only=True)
    torch.save({**payload, "format_version": 1}, store.path(1))  # as SLPT v1 wrote them
    with pytest.raises(CheckpointError, match=r"holds SLPT v1 .* serves SLPT v2 on the frozen backbone's organ: "
                                              "train a new version"):
        store.read(1)


def test_a_checkpoint_trained_against_the_tuned_decoders_organ_is_refused(tmp_path):
    store = PromptCheckpointStore(tmp_path)
    store.save(tiny_model().trainable_state_dict(), {"backbone": IDENTITY})
    payload = torch.load(store.path(1), weights_only=True)
    torch.save({**payload, "format_version": 2}, store.path(1))  # as SLPT v2 wrote them before
    with pytest.raises(CheckpointError, match=r"holds SLPT v2, but .* train a new version"):
        store.read(1)


def test_foreign_and_truncated_files_are_named(tmp_path):
    store = PromptCheckpointStore(tmp_path)
    store.save(tiny_model().trainable_state_dict(), {"backbone": IDENTITY})
    torch.save({"weights": 1}, store.path(2))
    store.path(3).write_bytes(store.path(1).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not an SLPT prompt checkpoint"):
        store.read(2)
    with pytest.raises(CheckpointError, match="not a readable prompt checkpoint"):
        store.read(3)


def test_versions_are_kept_and_rollback_is_one_command(tmp_path):
    store = PromptCheckpointStore(tmp_path)
    for i in range(3):
        store.save(trained(tiny_model()).trainable_state_dict(), {"backbone": IDENTITY, "metrics": {"i": i}})
    assert store.versions() == [1, 2, 3] and store.current() == 3
    command = [sys.executable, "-m", "apps.slpt.model.checkpoints", "--model-dir", str(tmp_path), "rollback"]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    assert '"current": 2' in out.stdout
    assert store.current() == 2 and store.read()["metadata"]["metrics"] == {"i": 1}
    assert store.versions() == [1, 2, 3]  # nothing deleted
    store.rollback()
    with pytest.raises(CheckpointError, match="nothing to roll back"):
        store.rollback()


def test_no_checkpoint_yet_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train the model first"):
        PromptCheckpointStore(tmp_path / "none").read()


def test_a_torn_write_never_replaces_the_current_file(tmp_path, monkeypatch):
    store = PromptCheckpointStore(tmp_path)
    store.save(tiny_model().trainable_state_dict(), {"backbone": IDENTITY})
    good = store.path(1).read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.replace(1, trained(tiny_model()).trainable_state_dict(), {"backbone": IDENTITY})
    assert store.path(1).read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
