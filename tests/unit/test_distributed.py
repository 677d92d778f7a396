"""Data-parallel prompt training on 2 CPU processes (gloo) trains what one process trains.

One spawned run serves every test of the module; each rank saves its whole model, its reports and (rank 0)
the checkpoints ``on_best`` publishes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from apps.slpt.config import SLPTConfig
from apps.slpt.inference import sliding_window
from apps.slpt.model.prompts import is_backbone_key
from apps.slpt.training import distributed
from apps.slpt.training.loop import fit
from tests.unit.test_tuning import prompted, tiny_pair

# A global batch of 3 on 2 ranks: shards of 2 and 1 (padded), so the padding is exercised too.
CFG = SLPTConfig(stages=("up_layers.0",), epochs=3, iterations_per_epoch=2, patch_size=16, batch_size=3,
                 num_prompts=2, val_interval=1, precision="fp32")
TRAIN = [(0,), (1,)]
VAL = [(2,), (3,), (4,)]  # 3 validation scans: 2 on rank 0, 1 on rank 1
# What "the same" means for weights trained apart: the shards' forward passes and the gradient sum add up
# floats in another order, and six AdamW steps carry that along: about 1e-7 mostly, but AdamW divides by
# the root of a weight's squared gradients, so a weight whose gradients are nearly zero turns a rounding
# difference into up to 1e-5 (one of 972 weights, with the organ-first task logits). A real difference
# (another batch, another loss) moves the weights by about the learning rate, 1e-2.
TOLERANCE = 1e-4


def train(checkpoints: list | None = None) -> tuple[torch.nn.Module, list]:
    torch.manual_seed(0)
    model, reports = prompted(), []
    fit(model, [tiny_pair(*s) for s in TRAIN], [tiny_pair(*s) for s in VAL], CFG, sliding_window((32, 32, 32)),
        on_epoch=reports.append, log=lambda m: None,
        on_best=lambda r: checkpoints.append(model.trainable_state_dict()) if checkpoints is not None else None)
    return model, reports


def _rank(rank: int, world_size: int, folder: str) -> None:
    torch.set_num_threads(1)
    with distributed.process_group(rank, world_size, "cpu", f"file://{folder}/rendezvous"):
        checkpoints = []
        model, reports = train(checkpoints)
        torch.save({"model": model.state_dict(), "reports": [dataclasses.asdict(r) for r in reports],
                    "checkpoints": checkpoints}, f"{folder}/rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank, args=(2, str(folder)), nprocs=2)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def alone():
    checkpoints = []
    model, reports = train(checkpoints)
    return {"model": model.state_dict(), "reports": [dataclasses.asdict(r) for r in reports],
            "checkpoints": checkpoints}


def test_both_ranks_hold_identical_trainable_weights(ranks):
    first, second = (r["model"] for r in ranks)
    trained = [k for k in first if not is_backbone_key(k)]
    assert trained and all(torch.equal(first[k], second[k]) for k in trained)


def test_the_frozen_backbone_is_bit_identical_to_the_untrained_one(ranks):
    untrained = prompted().state_dict()
    frozen = [k for k in untrained if is_backbone_key(k)]
    assert frozen
    for rank in ranks:
        assert all(torch.equal(rank["model"][k], untrained[k]) for k in frozen)


def test_only_rank_zero_publishes(ranks):
    assert ranks[0]["checkpoints"] and not ranks[1]["checkpoints"]


def test_the_checkpoint_equals_one_process_with_the_same_global_batch_and_seed(ranks, alone):
    written, single = ranks[0]["checkpoints"], alone["checkpoints"]
    assert len(written) == len(single)  # the same epochs improved
    untrained = prompted().trainable_state_dict()
    for got, want in zip(written, single):
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=TOLERANCE)
    moved = max((single[-1][k] - untrained[k]).abs().max().item() for k in untrained)
    assert moved > 100 * TOLERANCE  # training moved the weights far beyond the tolerance


def test_losses_and_validation_metrics_are_the_global_ones(ranks, alone):
    for rank in ranks:  # every rank reports the reduced metrics, not its own shard's
        for got, want in zip(rank["reports"], alone["reports"]):
            assert got["val"]["cases"] == want["val"]["cases"] == len(VAL)
            assert got["loss"] == pytest.approx(want["loss"], abs=1e-5)
            assert got["val"]["mean_dice"] == pytest.approx(want["val"]["mean_dice"], abs=1e-4)
            assert got["improved"] == want["improved"]


@pytest.mark.parametrize("batch, world, parts", [
    (4, 2, [(0, 2), (2, 4)]), (3, 2, [(0, 2), (2, 3)]), (1, 2, [(0, 1), (1, 1)]), (5, 3, [(0, 2), (2, 4), (4, 5)]),
])
def test_shards_cover_the_global_batch_in_order(batch, world, parts):
    got = [distributed.shard(batch, r, world)[0] for r in range(world)]
    assert [(s.start, s.stop) for s in got] == parts
    per_rank = distributed.shard(batch, 0, world)[1]
    x = torch.arange(batch)[:, None]
    gathered = torch.cat([distributed.padded(x, s, per_rank) for s in got])
    assert torch.equal(gathered[:batch], x)  # what GlobalBatch cuts off is padding only


def test_without_a_process_group_nothing_is_distributed():
    assert not dist.is_initialized() and distributed.world() == (0, 1)
    assert distributed.from_rank_zero({"a": 1}) == {"a": 1}
