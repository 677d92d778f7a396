from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from apps.slpt.labels import CLASSES, LIVER, TUMOUR
from phantoms.phantom import (
    ORGAN_NAMES,
    TUMOR_PREVALENCE,
    PhantomSpec,
    make_phantom,
    phantom_header,
)

TUMOR = TUMOUR


def _seed_with(**wanted) -> int:
    return next(s for s in range(10_000) if all(phantom_header(s)[k] == v for k, v in wanted.items()))


def _core(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Interior voxels, away from partial-volume blur at edges."""
    return ndimage.binary_erosion(mask, iterations=iterations)


def test_same_seed_same_phantom_and_seeds_differ():
    a, b, c = make_phantom(11), make_phantom(11), make_phantom(12)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.affine, b.affine) and a.info == b.info
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_header_predicts_the_generated_phantom():
    for seed in range(4):
        assert {k: make_phantom(seed).info[k] for k in ("phase", "tumor_type", "orientation")} == phantom_header(seed)


@pytest.mark.parametrize("kind", [k for k in TUMOR_PREVALENCE if k != "none"])
def test_tumours_lie_inside_the_liver_and_labels_are_valid(kind):
    ph = make_phantom(3, tumor_type=kind)
    assert set(np.unique(ph.label)) <= set(CLASSES.values())
    assert set(np.unique(ph.organs)) <= set(ORGAN_NAMES.values())
    tumour = ph.label == TUMOR
    assert tumour.sum() > 0, f"{kind} phantom has no tumour voxels"
    # Task-agnostic organ map: tumour counts as liver and there is no tumour class.
    assert np.all(ph.organs[tumour] == ORGAN_NAMES["liver"])
    assert np.array_equal(ph.label > 0, ph.organs == ORGAN_NAMES["liver"])


def test_tumour_free_liver_has_no_tumour():
    ph = make_phantom(5, tumor_type="none")
    assert (ph.label == LIVER).sum() > 1000 and (ph.label == TUMOR).sum() == 0


@pytest.mark.parametrize(
    "phase, liver_range, blood_range",
    [("non_contrast", (50, 70), (35, 55)), ("arterial", (55, 85), (240, 360)),
     ("portal_venous", (95, 135), (140, 210))],
)
def test_hu_ranges_follow_the_phase(phase, liver_range, blood_range):
    ph = make_phantom(_seed_with(phase=phase, tumor_type="none"))
    median = lambda organ: float(np.median(ph.image[_core(ph.organs == ORGAN_NAMES[organ])]))  # noqa: E731
    assert liver_range[0] <= median("liver") <= liver_range[1]
    assert blood_range[0] <= median("aorta") <= blood_range[1]
    assert median("bone") > 180
    assert ph.image.min() == -1024  # air outside the body
    body = ph.image > -500
    fat = _core(body, 3) & (ph.organs == 0) & (ph.image < -40)
    assert -125 <= float(np.median(ph.image[fat])) <= -40


def test_tumour_types_look_different():
    """Contrast of each type against the liver, in the phase where the type is defined by it."""

    def contrast(kind, phase):
        ph = make_phantom(_seed_with(phase=phase), tumor_type=kind)
        tumour, liver = ph.label == TUMOR, ph.label == LIVER
        return float(np.median(ph.image[tumour]) - np.median(ph.image[_core(liver)]))

    assert contrast("hcc", "arterial") > 10  # arterial hyper-enhancement
    assert contrast("hcc", "portal_venous") < 0  # wash-out
    assert contrast("metastasis", "portal_venous") < -15  # hypodense, despite its thin rim
    assert contrast("cyst", "portal_venous") < -70  # water density
    assert -30 < contrast("infiltrative", "portal_venous") < 0  # subtle
    cyst = make_phantom(_seed_with(phase="arterial"), tumor_type="cyst")
    assert -15 < np.median(cyst.image[_core(cyst.label == TUMOR, 1)]) < 35


def test_prevalence_is_imbalanced_as_configured_and_both_orientations_occur():
    n = 2000
    headers = [phantom_header(s) for s in range(n)]
    counts = Counter(h["tumor_type"] for h in headers)
    for kind, p in TUMOR_PREVALENCE.items():
        sd = np.sqrt(n * p * (1 - p))
        assert abs(counts[kind] - n * p) < 4 * sd, (kind, counts[kind], n * p)
    assert min(TUMOR_PREVALENCE.values()) <= 0.05
    assert Counter(h["orientation"] for h in headers).keys() == {"RAS", "LPS"}
    assert len({h["phase"] for h in headers}) == 3


def test_orientation_does_not_move_anatomy():
    """The liver sits on the patient's right (RAS x > 0) whatever the voxel order."""
    for orientation in ("RAS", "LPS"):
        ph = make_phantom(_seed_with(orientation=orientation))
        assert (ph.affine[0, 0] < 0) == (orientation == "LPS")
        idx = np.argwhere(ph.organs == ORGAN_NAMES["liver"]).mean(0)
        world = ph.affine @ np.append(idx, 1.0)
        assert world[0] > 20, orientation
        spleen = ph.affine @ np.append(np.argwhere(ph.organs == ORGAN_NAMES["spleen"]).mean(0), 1.0)
        assert spleen[0] < -20, orientation


def test_spec_rejects_bad_prevalence():
    with pytest.raises(ValueError, match="sum to 1"):
        PhantomSpec(prevalence={"none": 0.5, "hcc": 0.2})
    with pytest.raises(ValueError, match="unknown tumour types"):
        PhantomSpec(prevalence={"none": 0.5, "adenoma": 0.5})
