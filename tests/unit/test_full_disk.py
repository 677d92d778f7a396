"""A full disk under the prompt checkpoints and the TESLA score records (issue 42, part 3): a real small
filesystem (a tmpfs this test mounts as root; else it skips and says why), filled to its last byte."""

from __future__ import annotations


import pytest
import torch

from apps.slpt.model.checkpoints import PromptCheckpointStore, read_checkpoint
from lib.activelearning.tesla_scoring import ScoreCache, _disk_full
from tests.small_disk import fill, tmpfs


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs at ``tmp_path/disk``, and a function that fills it."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        yield disk, lambda: fill(disk)


def test_checkpoint_publish_on_a_full_disk(full_disk):
    disk, fill = full_disk
    store = PromptCheckpointStore(disk / "prompts")
    assert store.save({"w": torch.ones(4)}, {"round": 1}) == 1
    before = {p.name: p.read_bytes() for p in store.directory.iterdir()}
    fill()
    with pytest.raises(OSError, match="no space left on device: prompt checkpoint v2 could not be written to "
                                      + str(store.directory)):
        store.save({"w": torch.ones(100_000)}, {"round": 2})
    with pytest.raises(OSError, match="v1 could not be written"):  # a round improving its own best
        store.replace(1, {"w": torch.ones(100_000)}, {"round": 1})
    assert {p.name: p.read_bytes() for p in store.directory.iterdir()} == before  # no temporary file left
    assert store.current() == 1 and torch.equal(read_checkpoint(store.path(1))["state_dict"]["w"], torch.ones(4))


def test_score_records_on_a_full_disk(full_disk):
    disk, fill = full_disk
    cache = ScoreCache(disk, "studies", "backbone")
    cache.put("kept", {"embedding": [0.5] * 192})
    fill()
    with pytest.raises(Exception) as raised:
        for i in range(100):
            cache.put(f"scan{i}", {"embedding": [0.5] * 192, "pad": "x" * 8000})
    assert _disk_full(raised.value), raised.value  # what stops a scoring run with "no space left on device"
    assert cache.records()["kept"] == {"embedding": [0.5] * 192}
    assert not _disk_full(ValueError("unreadable scan")) and not _disk_full(FileNotFoundError(2, "gone"))
