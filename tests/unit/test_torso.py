"""The pre-training torso scans: reproducible, chest above abdomen, and no attenuation that names the liver."""

from __future__ import annotations

import numpy as np
import pytest

from phantoms.phantom import ORGAN_NAMES
from phantoms.torso import ORGAN_OF_TISSUE, TISSUES, TorsoSpec, make_torso

COARSE = TorsoSpec(inplane_spacing=(4.0, 4.0), slice_spacing=(5.0, 5.0), z_extent=(300.0, 300.0),
                   z_centre=(40.0, 40.0))  # the liver and the lungs above it in every scan


@pytest.fixture(scope="module")
def scans():
    return [make_torso(seed, COARSE) for seed in range(6)]


def test_a_seed_gives_the_same_scan():
    a, b = make_torso(3, COARSE), make_torso(3, COARSE)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.organs, b.organs)


def test_every_tissue_counts_as_a_backbone_class():
    assert set(TISSUES.values()) <= set(ORGAN_NAMES)
    assert len(ORGAN_OF_TISSUE) == len(TISSUES)


def _enclosed_gas(axial: np.ndarray) -> int:
    """Voxels of an axial slice below -700 HU with tissue on both sides along both axes: lungs or bowel gas,
    not the air round the patient."""
    tissue = axial > -300
    between = [(np.cumsum(tissue, a) > 0) & (np.flip(np.cumsum(np.flip(tissue, a), a), a) > 0) for a in (0, 1)]
    return int(((axial < -700) & between[0] & between[1]).sum())


def test_the_lungs_lie_above_the_liver(scans):
    for ph in scans:
        liver = ph.organs == ORGAN_NAMES["liver"]
        assert liver.any(), ph.info
        top = int(np.nonzero(liver.any((0, 1)))[0].max())
        above = ph.image[..., min(top + 3, ph.image.shape[2] - 1)]
        assert _enclosed_gas(above) > 0.1 * (ph.image[..., top] > -300).sum(), f"no lungs above the liver: {ph.info}"
        assert np.array_equal(ph.label > 0, liver)  # lesions count as liver, nothing else does


def test_half_the_scans_draw_attenuations_that_do_not_name_the_liver():
    scans = [make_torso(seed, COARSE) for seed in range(12)]
    randomised = [ph for ph in scans if ph.info["randomised_intensities"]]
    assert 2 <= len(randomised) <= 10
    medians = [float(np.median(ph.image[ph.organs == ORGAN_NAMES["liver"]])) for ph in randomised]
    assert max(medians) - min(medians) > 150, medians  # far beyond the phases' 50-135 HU
