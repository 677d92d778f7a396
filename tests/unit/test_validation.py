"""Upload and request-parameter checks (``lib.validation``, ``lib.request_params``) on tiny files."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from apps.slpt.config import SLPTConfig
from lib.request_params import (
    CHECKED_SETTINGS,
    TRAIN_RANGES,
    InvalidParameter,
    RequestSpec,
    check_request,
    client_id,
    device,
    flag,
    one_of,
    parse_params,
    task_specs,
)
from lib.validation import (
    MB,
    InvalidUpload,
    check_image,
    check_label,
    check_safe_id,
    check_upload_size,
    volume_geometry,
    volume_shape,
)

SHAPE = (8, 7, 6)


AFFINE = np.array([[2.0, 0, 0, -40], [0, 2.0, 0, 12], [0, 0, 3.0, -90], [0, 0, 0, 1]])


def nifti(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def ct(shape=SHAPE, seed=0):
    return np.random.default_rng(seed).normal(40, 20, shape).astype(np.float32)


def label(shape=SHAPE, values=(0, 1, 2), dtype=np.uint8):
    return np.resize(np.array(values, dtype=dtype), shape)


# ---- images ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii"])
def test_a_ct_volume_passes_and_its_shape_comes_from_the_header(tmp_path, name):
    path = nifti(tmp_path / name, ct())
    assert check_image(path) == SHAPE
    assert volume_shape(path) == SHAPE


def test_an_nrrd_volume_passes(tmp_path):
    itk = pytest.importorskip("itk")
    path = tmp_path / "scan.nrrd"
    itk.imwrite(itk.image_from_array(np.ascontiguousarray(ct().transpose(2, 1, 0))), str(path))
    assert check_image(path) == SHAPE  # same [X, Y, Z] order as NIfTI


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"\x00garbage bytes, not a scan" * 20), "not a readable NIfTI"),
        (lambda p: p.write_bytes(gzip.compress(b"gzip, but no NIfTI header inside")), "not a readable NIfTI"),
        (lambda p: nifti(p, ct((8, 7))), r"3D volume; got 2 dimension\(s\)"),
        (lambda p: nifti(p, ct((8, 7, 6, 2))), r"got 4 dimension\(s\), shape \(8, 7, 6, 2\)$"),
        (lambda p: nifti(p, ct((8, 7, 6, 1))), "drop the trailing singleton"),
        (lambda p: nifti(p, np.full(SHAPE, np.nan, np.float32)), "all NaN"),
        (lambda p: nifti(p, np.where(ct() > 60, np.nan, ct())), "NaN or infinite voxels of 336"),
        (lambda p: nifti(p, np.full(SHAPE, -1000, np.int16)), r"constant \(every voxel is -1000\)"),
    ],
    ids=["empty", "garbage", "gzip-not-nifti", "2d", "4d", "4d-singleton", "all-nan", "some-nan", "constant"],
)
def test_unusable_images_are_refused_with_the_reason(tmp_path, write, message):
    path = tmp_path / "scan.nii.gz"
    write(path)
    with pytest.raises(InvalidUpload, match=message):
        check_image(path)


@pytest.mark.parametrize("name", ["scan.txt", "scan", "label.bin", "scan.png"])
def test_unsupported_file_types_are_named(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(InvalidUpload, match="not supported: upload NIfTI"):
        check_image(path)


# ---- labels ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_a_task_label_of_the_image_shape_passes(tmp_path, dtype):
    check_label(nifti(tmp_path / "l.nii.gz", label(dtype=dtype)), SHAPE)


@pytest.mark.parametrize(
    "array, message",
    [
        (label(shape=(8, 7, 5)), r"label shape \(8, 7, 5\) differs from its image's shape \(8, 7, 6\)"),
        (label(shape=(7, 8, 6)), "differs from its image's shape"),
        (label(values=(0, 1, 2, 3, 7)), r"values \[3, 7\] outside \{0, 1, 2\}"),
        (label(values=(0, -1), dtype=np.int16), r"values \[-1\] outside"),
        (label(values=(0, 1, 0.5), dtype=np.float32), r"non-integer values, e\.g\. \[0\.5\]"),
        (label(values=(0, 1, np.nan), dtype=np.float32), "non-integer values"),
        (label(shape=(8, 7)), r"label must be a 3D volume; got 2"),
    ],
    ids=["shape", "transposed", "values", "negative", "fraction", "nan", "2d"],
)
def test_bad_task_labels_are_refused_naming_the_problem(tmp_path, array, message):
    with pytest.raises(InvalidUpload, match=message):
        check_label(nifti(tmp_path / "l.nii.gz", array), SHAPE)


def test_many_offending_values_are_listed_briefly(tmp_path):
    with pytest.raises(InvalidUpload, match=r"values \[3, 4, 5, 6, 7, 8, 9, 10\] and 29 more outside"):
        check_label(nifti(tmp_path / "l.nii.gz", label(values=range(40))), SHAPE)


def test_other_tags_skip_the_value_check_but_not_the_shape_check(tmp_path):
    organs = nifti(tmp_path / "organs.nii.gz", label(values=range(9)))
    check_label(organs, SHAPE, values=None)  # e.g. the backbone's organ map saved as "original"
    with pytest.raises(InvalidUpload, match="differs"):
        check_label(organs, (8, 7, 5), values=None)


def test_unreadable_label_is_named_as_the_label(tmp_path):
    path = tmp_path / "l.nii.gz"
    path.write_bytes(b"not an image")
    with pytest.raises(InvalidUpload, match="^label is not a readable NIfTI image"):
        check_label(path, SHAPE)


def _mirrored(affine):  # the same numbers read in LPS: x and y flip
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def _doubled_spacing(affine):
    return affine @ np.diag([2.0, 2.0, 2.0, 1.0])


def _shifted(affine):
    return affine + np.array([[0, 0, 0, 1.5], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    "move, message",
    [
        (_mirrored, "orientation LPS vs the image's RAS"),
        (_doubled_spacing, r"spacing \(4, 4, 6\) mm vs \(2, 2, 3\) mm"),
        (_shifted, r"origin \(-38.5, 12, -90\) mm vs \(-40, 12, -90\) mm"),
    ],
    ids=["mirrored", "doubled-spacing", "shifted"],
)
def test_a_label_in_another_geometry_is_refused_naming_the_mismatch(tmp_path, move, message):
    image = volume_geometry(nifti(tmp_path / "scan.nii.gz", ct()))
    with pytest.raises(InvalidUpload, match=f"label geometry differs from its image's.*{message}"):
        check_label(nifti(tmp_path / "l.nii.gz", label(), move(AFFINE)), image)
    check_label(nifti(tmp_path / "l.nii.gz", label(), move(AFFINE)), image.shape)  # a bare shape: grid only


def test_a_label_in_the_image_geometry_passes_despite_header_rounding(tmp_path):
    image = volume_geometry(nifti(tmp_path / "scan.nii.gz", ct()))
    check_label(nifti(tmp_path / "l.nii.gz", label(), AFFINE + 1e-4), image)  # float32 headers, DICOM rounding


def test_an_lps_nrrd_label_of_the_image_grid_passes(tmp_path):
    """What OHIF's Save Label and Slicer write: NRRD in LPS describing the RAS image's own grid."""
    pytest.importorskip("nrrd")
    import nrrd

    image = volume_geometry(nifti(tmp_path / "scan.nii.gz", ct()))
    lps = _mirrored(AFFINE)
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3],
              "kinds": ["domain"] * 3}
    nrrd.write(str(tmp_path / "l.nrrd"), label(), header)
    check_label(tmp_path / "l.nrrd", image)
    nrrd.write(str(tmp_path / "m.nrrd"), label(), {**header, "space directions": AFFINE[:3, :3].T})
    with pytest.raises(InvalidUpload, match="orientation"):
        check_label(tmp_path / "m.nrrd", image)


def test_an_image_without_voxels_is_refused(tmp_path):
    # nibabel reads a zero-length axis back as a 1-D shape (0,); either way it is no scan, and not a 500.
    with pytest.raises(InvalidUpload, match=r"image has no voxels|image must be a 3D volume; got 1 .*\(0,\)"):
        check_image(nifti(tmp_path / "scan.nii.gz", np.zeros((8, 0, 6), np.float32)))


def test_uploads_over_the_size_limit_are_refused():
    check_upload_size(1024 * MB, 1024)
    with pytest.raises(InvalidUpload, match=r"uploaded file is 1024.0 MB, over the server's limit of 1 MB"):
        check_upload_size(1024 * MB, 1, "uploaded file")


# ---- ids and tags ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["phantom_000123", "liver_001", "liver_001.nii", "final", "original",
                                   "1.2.840.113619.2.55.3", "Case-7"])
def test_ids_monai_label_uses_are_safe(value):
    assert check_safe_id(value) == value


@pytest.mark.parametrize("value", ["", None, "../x", "..", "a/b", "a\\b", "/etc/passwd", ".hidden", "x..y",
                                   "a b", "id;rm", "tag\n", "é", "x" * 129, 42])
def test_ids_that_could_leave_their_folder_or_confuse_it_are_refused(value):
    with pytest.raises(InvalidUpload, match="label tag"):
        check_safe_id(value, "label tag")


# ---- request parameters ---------------------------------------------------------------------------------

TRAIN = RequestSpec("train/slpt", settings={"max_epochs": "epochs", "learning_rate": "learning_rate"},
                    checks={"warm_start": flag}, framework=frozenset({"model", "device", "client_id"}))
LEASE = RequestSpec("activelearning/tesla", settings={"lease_seconds": "lease_seconds"},
                    checks={"client_id": client_id}, framework=frozenset({"strategy"}))
INFER = RequestSpec("infer/slpt", checks={"slpt_output": one_of(["label", "uncertainty"]),
                                          "device": device(["NVIDIA H100"])}, open=True)


def test_valid_requests_pass_and_apply_their_overrides():
    checked = check_request({"model": "slpt", "max_epochs": "3", "learning_rate": 0.001, "warm_start": "false",
                             "device": "cuda", "client_id": "reader-1"}, TRAIN, SLPTConfig())
    assert checked.config.epochs == 3 and checked.config.learning_rate == 0.001
    # What the trainer receives: the overridden fields, parsed ("3" -> 3), and nothing else.
    assert checked.overrides == {"epochs": 3, "learning_rate": 0.001}
    assert SLPTConfig().with_overrides(**checked.overrides) == checked.config
    assert check_request({"strategy": "tesla", "lease_seconds": 60, "client_id": "r1"}, LEASE,
                         SLPTConfig()).config.lease_seconds == 60.0
    assert check_request({"model": "slpt"}, TRAIN, SLPTConfig()).overrides == {}
    check_request({"slpt_output": ["label", "uncertainty"], "device": "NVIDIA H100", "result_extension": ".nrrd",
                   "restore_label_idx": False, "label_info": [{"name": "liver"}]}, INFER, SLPTConfig())


@pytest.mark.parametrize(
    "request_, spec, name, message",
    [
        ({"max_epochs": "abc"}, TRAIN, "max_epochs", r"'max_epochs' of train/slpt has a bad value 'abc'.*expects int"),
        ({"max_epochs": -1}, TRAIN, "max_epochs", "bad value -1: slpt_epochs.* must be >= 1$"),
        ({"max_epochs": 2.5}, TRAIN, "max_epochs", "expects int"),
        ({"max_epochs": True}, TRAIN, "max_epochs", "expects int"),
        ({"learning_rate": 0}, TRAIN, "learning_rate", "learning_rate must be > 0"),
        ({"warm_start": "maybe"}, TRAIN, "warm_start", "must be true or false"),
        ({"max_epoch": 3}, TRAIN, "max_epoch", "unknown parameter 'max_epoch' for train/slpt"),
        # Only the server hands a run its checked settings; a client cannot slip them past the checks.
        ({CHECKED_SETTINGS: {"epochs": 0}}, TRAIN, CHECKED_SETTINGS, f"unknown parameter '{CHECKED_SETTINGS}'"),
        ({"lease_seconds": "soon"}, LEASE, "lease_seconds", "expects float"),
        ({"lease_seconds": -5}, LEASE, "lease_seconds", "slpt_lease_seconds must be > 0"),
        ({"lease_seconds": float("nan")}, LEASE, "lease_seconds", "must be > 0"),
        ({"client_id": ["a"]}, LEASE, "client_id", "non-empty string"),
        ({"round_size": 5}, LEASE, "round_size", r"unknown parameter 'round_size'.*--conf slpt_\*"),
        ({"min_round_size": 5}, LEASE, "min_round_size", r"server setting \(--conf slpt_min_round_size"),
        ({"slpt_rounds": 5}, LEASE, "slpt_rounds", "server setting"),
        ({"slpt_output": "bogus"}, INFER, "slpt_output", r"must be one of \['label', 'uncertainty'\]"),
        ({"device": "abc"}, INFER, "device", "'device' of infer/slpt must be 'cpu', 'cuda'"),
        ({"sw_overlap": "abc"}, INFER, "sw_overlap", r"server setting \(--conf slpt_sw_overlap"),
        ({"slpt_outptu": "label"}, INFER, "slpt_outptu", "unknown parameter 'slpt_outptu'"),
    ],
)
def test_bad_parameters_are_refused_naming_them(request_, spec, name, message):
    with pytest.raises(InvalidParameter, match=message) as err:
        check_request(request_, spec, SLPTConfig())
    assert err.value.name == name and name in str(err.value)


RANGED = RequestSpec("train/slpt", settings={"max_epochs": "epochs", "patch_size": "patch_size",
                                             "batch_size": "batch_size", "learning_rate": "learning_rate",
                                             "iterations_per_epoch": "iterations_per_epoch"}, ranges=TRAIN_RANGES)


@pytest.mark.parametrize("key, field_", [("max_epochs", "epochs"), ("patch_size", "patch_size"),
                                         ("batch_size", "batch_size"), ("learning_rate", "learning_rate"),
                                         ("iterations_per_epoch", "iterations_per_epoch")])
def test_training_values_outside_their_range_are_refused(key, field_):
    low, high = TRAIN_RANGES[field_]
    kind = float if field_ == "learning_rate" else int
    for value in (low, high):
        assert getattr(check_request({key: kind(value)}, RANGED, SLPTConfig()).config, field_) == value
    too_big = kind(high * 2) if field_ != "patch_size" else 100000
    with pytest.raises(InvalidParameter, match=rf"'{key}' of train/slpt is {too_big!r}, outside its range") as err:
        check_request({key: too_big}, RANGED, SLPTConfig())
    assert err.value.name == key
    # The server's own setting passes, in or out of range: clients echo the advertised config back.
    assert check_request({key: too_big}, RANGED, SLPTConfig(**{field_: too_big})).overrides == {field_: too_big}


def test_defaults_lie_within_the_training_ranges():
    for name, (low, high) in TRAIN_RANGES.items():
        assert low <= getattr(SLPTConfig(), name) <= high, name


@pytest.mark.parametrize("text, message", [("{bad json", "params is not valid JSON"),
                                           ("[1, 2]", "must be a JSON object, got list"),
                                           ('"x"', "got str")])
def test_params_field_must_be_a_json_object(text, message):
    with pytest.raises(InvalidParameter, match=message):
        parse_params(text)
    assert parse_params('{"a": 1}') == {"a": 1} and parse_params("") == {}


# ---- files dropped into the prompt-checkpoint folder by hand ---------------------------------------------

class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling calls open(marker, "w"): a stand-in for any code in a foreign pickle
        return open, (self.marker, "w")


def test_a_checkpoint_that_would_run_code_is_refused_unread(tmp_path):
    import torch

    from apps.slpt.model.checkpoints import FORMAT_VERSION, CheckpointError, PromptCheckpointStore

    store, marker = PromptCheckpointStore(tmp_path), tmp_path / "code_ran"
    torch.save({"format": "slpt-prompts", "format_version": 1, "metadata": _RunsCode(marker), "state_dict": {}},
               store.path(1))
    torch.save({"format": "slpt-prompts", "format_version": FORMAT_VERSION, "state_dict": {"w": "not a tensor"},
                "metadata": {}}, store.path(2))
    with pytest.raises(CheckpointError, match=r"prompts_v0001.pt is not a readable.*not unpickled"):
        store.read(1)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="prompts_v0002.pt is damaged"):
        store.read(2)
    assert store.summary(1)["error"] and store.summary(2)["error"]  # /info/ reports, never raises


def test_task_specs_follow_what_each_task_advertises():
    specs = task_specs({"slpt": {"slpt_output": ["label", "uncertainty"], "note": "x"}},
                       {"slpt": {"max_epochs": 200, "warm_start": True, "multi_gpu": False}}, ["NVIDIA H100"])
    assert sorted(specs) == ["activelearning/first", "activelearning/random", "activelearning/tesla", "infer/slpt",
                             "train/slpt"]
    with pytest.raises(InvalidParameter, match="must be one of"):
        check_request({"slpt_output": "bogus"}, specs["infer/slpt"], SLPTConfig())
    # A trainer's advertised settings come back from Slicer and MONAI Label; they are accepted, and parsed.
    checked = check_request({"model": "slpt", "max_epochs": "7", "multi_gpu": False, "bundle_path": "/b"},
                            specs["train/slpt"], SLPTConfig())
    assert checked.overrides == {"epochs": 7}
    with pytest.raises(InvalidParameter, match="unknown parameter 'max_epoch'"):
        check_request({"max_epoch": 3}, specs["train/slpt"], SLPTConfig())


@pytest.mark.parametrize("gpus, gpu_count, error", [
    ("all", 0, None), ("0,1", 2, None), ("0,1", 0, None),  # without a GPU the server trains in one process
    ("0,2", 2, "names GPU 2, but this server has 2"), ("1,1", 2, "lists a GPU twice"), ("0,x", 2, "'0,1'"),
    ("", 2, "'0,1'"), (True, 2, "'0,1'"),
])
def test_a_training_request_names_gpus_the_server_has(gpus, gpu_count, error):
    spec = task_specs({}, {"slpt": {"max_epochs": 200}}, [], gpu_count)["train/slpt"]
    if error is None:
        check_request({"multi_gpu": True, "gpus": gpus}, spec, SLPTConfig())
    else:
        with pytest.raises(InvalidParameter, match=error):
            check_request({"multi_gpu": True, "gpus": gpus}, spec, SLPTConfig())
    with pytest.raises(InvalidParameter, match="JSON boolean"):
        check_request({"multi_gpu": "false"}, spec, SLPTConfig())
