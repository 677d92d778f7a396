"""Synthetic torso CTs for pre-training the backbone: the fields of view real CTs have, and no intensity shortcut.

The task phantoms (:mod:`phantoms.phantom`) show an upper abdomen in which the liver is nearly the only tissue at
its attenuation. A backbone trained on them alone calls the heart, the diaphragm and muscle "liver" on a real
chest CT. These scans follow SynthSeg's recipe (Billot et al., MedIA 2023; ``../shared/RESEARCH.md``):

* **a label map of many tissues, fewer classes**: lungs, heart, mediastinum, diaphragm, stomach, gallbladder,
  pancreas, IVC, portal and hepatic veins, psoas and paraspinal muscle, pelvis, bladder, arms and the table are
  drawn as tissues of their own, then mapped onto the backbone's classes (``phantom.ORGAN_NAMES``), so that
  "not background" never means "liver";
* **fields of view from chest to pelvis**, with the liver under the right hemidiaphragm and lungs and heart above;
* **intensities drawn per scan**: half of the scans take each tissue's attenuation from its contrast phase
  (the HU table in RESEARCH.md, jittered), half from a uniform draw per tissue, so that shape and context must
  decide; then tissue texture, partial-volume blur and spatially correlated noise.

A scan is fully determined by its seed. Lesions inside the liver are painted but counted as liver: the backbone
never sees a tumour class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from apps.slpt.labels import LIVER, TUMOUR
from phantoms.phantom import ORGAN_NAMES, PHASES, Phantom, ellipsoid, voxel_affine, wobble, world_grid

# Generation tissues and the backbone class each one counts as.
TISSUES: dict[str, str] = {
    "air": "background", "subcutaneous_fat": "background", "visceral_fat": "background",
    "wall_muscle": "muscle", "diaphragm": "muscle", "paraspinal": "muscle", "psoas": "muscle",
    "liver": "liver", "liver_vessel": "liver", "lesion": "liver",
    "spleen": "spleen", "kidney_cortex_left": "kidney_left", "kidney_medulla_left": "kidney_left",
    "kidney_cortex_right": "kidney_right", "kidney_medulla_right": "kidney_right", "aorta": "aorta",
    "trabecular_bone": "bone", "cortical_bone": "bone",
    "bowel_wall": "bowel", "bowel_gas": "bowel", "stomach_wall": "bowel", "stomach_content": "bowel",
    "ivc": "background", "great_vessel": "background", "heart_muscle": "background", "heart_blood": "background",
    "lung": "background", "lung_vessel": "background", "trachea": "background", "pancreas": "background",
    "gallbladder": "background", "bladder": "background", "table": "background",
}
TISSUE_ID = {name: i for i, name in enumerate(TISSUES)}
ORGAN_OF_TISSUE = np.array([ORGAN_NAMES[TISSUES[name]] for name in TISSUES], np.uint8)
# Tissues whose attenuation stays physical in randomised scans: gas is gas on every scanner.
GAS = ("air", "bowel_gas", "lung", "trachea")


@dataclass(frozen=True)
class TorsoSpec:
    """Ranges the torso generator samples from (millimetres, HU)."""

    inplane_spacing: tuple[float, float] = (2.0, 3.0)
    slice_spacing: tuple[float, float] = (2.5, 5.0)
    z_extent: tuple[float, float] = (150.0, 400.0)
    # Centre of the field of view relative to the liver's centre: from the chest to the pelvis.
    z_centre: tuple[float, float] = (-220.0, 200.0)
    body_scale: tuple[float, float] = (0.85, 1.15)
    noise_hu: tuple[float, float] = (5.0, 30.0)
    randomised_share: float = 0.5  # scans whose tissue attenuations are drawn uniformly, not by phase
    arms_down_share: float = 0.3
    table_share: float = 0.8


def make_torso(seed: int, spec: TorsoSpec | None = None) -> Phantom:
    """One pre-training scan; ``label`` holds liver (lesions included) and ``organs`` the backbone classes."""
    spec = spec or TorsoSpec()
    rng = np.random.default_rng([seed, 0x70250])
    s = float(rng.uniform(*spec.body_scale))
    half_w, half_d = 160.0 * s * rng.uniform(0.9, 1.1), 115.0 * s * rng.uniform(0.9, 1.1)
    arms = rng.random() < spec.arms_down_share
    spacing = np.array([rng.uniform(*spec.inplane_spacing)] * 2 + [rng.uniform(*spec.slice_spacing)])
    margin = 24.0 + (2 * 55.0 * s if arms else 0.0) + rng.uniform(0.0, 40.0)
    fov = np.array([2 * half_w + margin, 2 * half_d + 24.0 + rng.uniform(20.0, 60.0), rng.uniform(*spec.z_extent)])
    shape = tuple(int(n) for n in np.ceil(fov / spacing))
    orientation = "LPS" if rng.random() < 0.5 else "RAS"
    affine = voxel_affine(shape, spacing, orientation, z_centre=35.0 * s + rng.uniform(*spec.z_centre) * s)
    world = world_grid(shape, affine)

    tissue = _tissue_map(world, rng, s, half_w, half_d, arms, rng.random() < spec.table_share)
    phase = str(rng.choice(PHASES))
    randomised = rng.random() < spec.randomised_share
    hu = _render(tissue, rng, phase, randomised, spacing, spec.noise_hu)

    organs = ORGAN_OF_TISSUE[tissue]
    label = np.zeros(shape, np.uint8)
    label[organs == ORGAN_NAMES["liver"]] = LIVER
    label[tissue == TISSUE_ID["lesion"]] = TUMOUR
    info = {"seed": int(seed), "phase": phase, "randomised_intensities": bool(randomised), "arms_down": bool(arms),
            "orientation": orientation, "spacing": [round(float(v), 3) for v in spacing],
            "z_range_mm": [round(float(affine[2, 3]), 1), round(float(affine[2, 3] + spacing[2] * (shape[2] - 1)), 1)]}
    return Phantom(image=hu, label=label, organs=organs, affine=affine, info=info)


def _tissue_map(world, rng, s, half_w, half_d, arms: bool, table: bool) -> np.ndarray:
    """Paint tissues in world space (RAS+ mm; the liver's centre near z = 35 s); later paint wins."""
    x, y, z = world
    t = np.full(world.shape[1:], TISSUE_ID["air"], np.uint8)
    j = lambda v: v * rng.uniform(0.88, 1.12)  # noqa: E731 - jitter for positions and radii

    def paint(mask, name):
        t[mask] = TISSUE_ID[name]

    def segment(p, q, radius):
        """Voxels within ``radius`` of the segment p-q (a vessel or duct)."""
        p, q = np.asarray(p, np.float32), np.asarray(q, np.float32)
        d = q - p
        along = np.clip(np.tensordot(d / (d @ d), world - p[:, None, None, None], axes=1), 0.0, 1.0)
        closest = p[:, None, None, None] + d[:, None, None, None] * along
        return ((world - closest) ** 2).sum(0) < radius**2

    body_r = np.sqrt((x / half_w) ** 2 + (y / half_d) ** 2) + wobble(world, rng, 0.015, 200.0)
    inner = 1.0 - rng.uniform(8.0, 35.0) / half_d
    body, cavity = body_r < 1.0, body_r <= inner - 0.07
    paint(body, "subcutaneous_fat")
    paint(body & (body_r < inner), "wall_muscle")
    paint(cavity, "visceral_fat")

    # The diaphragm: two domes, the right one higher; lungs above, abdomen below.
    right_top, left_top = j(115.0 * s), j(100.0 * s)
    dome = np.maximum(right_top - 75.0 * s * (((x - 60 * s) / (110 * s)) ** 2 + ((y + 5 * s) / (100 * s)) ** 2),
                      left_top - 75.0 * s * (((x + 65 * s) / (100 * s)) ** 2 + ((y + 5 * s) / (100 * s)) ** 2))
    dome += wobble(world, rng, 4.0 * s, 120.0)
    abdomen, thorax = cavity & (z < dome - 6.0 * s), cavity & (z >= dome)
    paint(cavity & ~abdomen & ~thorax, "diaphragm")

    # Muscles beside the spine and, below the kidneys' hila, the psoas widening towards the pelvis.
    vx, vy = j(0.0), j(-62.0 * s)
    for side in (-1, 1):
        paint(body & (ellipsoid(world, (side * 30 * s + vx, vy - 30 * s, 0), (22 * s, 18 * s, 1e6)) < 1), "paraspinal")
        psoas_r = np.clip(6 * s + 0.12 * (-20 * s - z), 0, 26 * s)
        paint(abdomen & (z < -20 * s) & ((x - side * 42 * s) ** 2 + (y - vy - 4 * s) ** 2 < psoas_r**2), "psoas")
        if rng.random() < 0.8:  # gluteal muscle behind the pelvis
            paint(body & (z < -160 * s) & (ellipsoid(world, (side * 75 * s, -85 * s, 0), (55 * s, 35 * s, 1e6)) < 1),
                  "wall_muscle")

    # Bowel loops with gas, from below the stomach into the pelvis; a rectum in the pelvis.
    for _ in range(rng.integers(6, 12)):
        c = (rng.uniform(-90, 80) * s, rng.uniform(-10, 70) * s, rng.uniform(-200, -10) * s)
        loop = (ellipsoid(world, c, (j(26 * s), j(18 * s), j(28 * s)), wobble(world, rng, 0.15, 60.0)) < 1) & abdomen
        paint(loop, "bowel_wall")
        if rng.random() < 0.7:
            paint(loop & (ellipsoid(world, c, (j(11 * s), j(8 * s), j(11 * s))) < 1), "bowel_gas")
    rectum = abdomen & (z < -150 * s) & ((x - vx) ** 2 + (y - vy - 30 * s) ** 2 < (j(16 * s)) ** 2)
    paint(rectum, "bowel_wall")
    paint(rectum & ((x - vx) ** 2 + (y - vy - 30 * s) ** 2 < (7 * s) ** 2), "bowel_gas")
    paint(abdomen & (ellipsoid(world, (j(0.0), j(45 * s), j(-235 * s)), (j(45 * s), j(35 * s), j(35 * s)),
                               wobble(world, rng, 0.05)) < 1), "bladder")

    # Stomach under the left dome: wall, contents, often a gas cap.
    sc = np.array([j(-50 * s), j(30 * s), j(55 * s)])
    sr = ellipsoid(world, sc, (j(45 * s), j(35 * s), j(50 * s)), wobble(world, rng, 0.1, 70.0))
    paint(abdomen & (sr < 1), "stomach_wall")
    paint(abdomen & (sr < 0.85), "stomach_content")
    if rng.random() < 0.6:
        paint(abdomen & (sr < 0.85) & (z > sc[2] + rng.uniform(0.2, 0.6) * 50 * s), "bowel_gas")
    paint(abdomen & segment((j(-65 * s), -25 * s, 20 * s), (j(25 * s), 0.0, j(0.0)), j(12 * s)), "pancreas")

    for side, name in ((-1, "left"), (1, "right")):
        r = ellipsoid(world, (side * j(65 * s), j(-50 * s), j(-25 * s)), (j(24 * s), j(20 * s), j(48 * s)),
                      wobble(world, rng, 0.05))
        paint(abdomen & (r < 1), f"kidney_cortex_{name}")
        paint(abdomen & (r < 0.6), f"kidney_medulla_{name}")
    spleen = ellipsoid(world, (j(-85 * s), j(-40 * s), j(40 * s)), (j(32 * s), j(24 * s), j(48 * s)),
                       wobble(world, rng, 0.1))
    paint(abdomen & (spleen < 1), "spleen")

    lc = np.array([j(65 * s), j(10 * s), j(35 * s)])
    liver = ellipsoid(world, lc, (j(80 * s), j(72 * s), j(85 * s)), wobble(world, rng, 0.12))
    liver = abdomen & (liver < 1) & (y - 0.55 * (x - 10 * s) < 70 * s)
    paint(liver, "liver")
    paint(liver & (ellipsoid(world, (j(45 * s), j(45 * s), j(-5 * s)), (j(15 * s), j(15 * s), j(32 * s))) < 1),
          "gallbladder")
    # Portal branches from the hilum and hepatic veins towards the IVC: vessels inside the liver label.
    hilum, ivc_xy = lc + np.array([-35, -10, -25]) * s, np.array([j(20 * s), j(-25 * s)])
    vessels = np.zeros_like(liver)
    for _ in range(rng.integers(4, 9)):
        tip = lc + rng.normal(0, 1, 3) * np.array([45, 35, 40]) * s
        vessels |= segment(hilum, tip, rng.uniform(2.5, 6.0) * s)
    for _ in range(3):
        tip = lc + np.array([rng.uniform(-40, 60), rng.uniform(-10, 50), rng.uniform(10, 50)]) * s
        vessels |= segment((ivc_xy[0], ivc_xy[1], lc[2] + 50 * s), tip, rng.uniform(3.0, 6.0) * s)
    paint(liver & vessels & (t == TISSUE_ID["liver"]), "liver_vessel")
    for _ in range(rng.integers(0, 6)):  # lesions, counted as liver
        c, r = lc + rng.normal(0, 1, 3) * np.array([35, 30, 35]) * s, rng.uniform(5, 30) * s
        lesion = ellipsoid(world, c, r * rng.uniform(0.8, 1.2, 3), wobble(world, rng, 0.1, max(2.5 * r, 20.0))) < 1
        paint(lesion & np.isin(t, [TISSUE_ID["liver"], TISSUE_ID["liver_vessel"]]), "lesion")
    paint((abdomen | thorax) & (z < dome + 25 * s) & ((x - ivc_xy[0]) ** 2 + (y - ivc_xy[1]) ** 2 < (j(12 * s)) ** 2),
          "ivc")

    # Thorax: lungs everywhere above the diaphragm but the mediastinum, which holds the heart and vessels.
    paint(thorax, "lung")
    vessel_field = ndimage.gaussian_filter(rng.normal(size=t.shape).astype(np.float32), 1.2)
    paint(thorax & (vessel_field > 2.2 * vessel_field.std()), "lung_vessel")
    mediastinum = thorax & (np.abs(x - j(-5 * s)) < j(32 * s)) & (y > vy + 20 * s)
    paint(mediastinum, "visceral_fat")
    hc = (j(-25 * s), j(20 * s), (right_top + left_top) / 2 + j(55 * s))
    heart = thorax & (ellipsoid(world, hc, (j(62 * s), j(50 * s), j(58 * s)), wobble(world, rng, 0.05)) < 1)
    paint(heart, "heart_muscle")
    paint(heart & (ellipsoid(world, hc, (j(42 * s), j(32 * s), j(40 * s)), wobble(world, rng, 0.1)) < 1),
          "heart_blood")
    paint(thorax & (z > hc[2]) & ((x - j(10 * s)) ** 2 + (y - j(15 * s)) ** 2 < (j(14 * s)) ** 2), "great_vessel")
    paint(thorax & (z > hc[2] - 20 * s) & ((x - vx) ** 2 + (y - vy - 35 * s) ** 2 < (j(9 * s)) ** 2), "trachea")
    paint(body & ((x - j(-15 * s)) ** 2 + (y - vy - 30 * s) ** 2 < (j(11 * s)) ** 2), "aorta")

    # Bones: spine, ribs (all round in the chest, at the back and sides lower down), pelvis, femoral heads.
    vr = np.sqrt((x - vx) ** 2 + ((y - vy) / 0.85) ** 2)
    level = np.mod(z + rng.uniform(0, 32), 32.0 * s) < 26.0 * s
    arch = (np.abs(x - vx) < 7 * s) & (y < vy - 12 * s) & (y > vy - 42 * s)
    paint(((vr < 19 * s) | arch) & level, "trabecular_bone")
    paint(((vr < 19 * s) & (vr > 16 * s) | arch) & level, "cortical_bone")
    ribs = (np.abs(body_r - inner + 0.035) < 0.02) & (np.mod(z + rng.uniform(0, 36), 36.0 * s) < 9.0 * s)
    paint(ribs & ((y < 0.3 * half_d) | (z > dome.mean())) & (z > -60 * s), "cortical_bone")
    paint(body & (z > dome.mean() + 20 * s) & (np.abs(x) < 14 * s) & (y > half_d * inner - 18 * s), "cortical_bone")
    iliac = np.sqrt(((np.abs(x) - 75 * s) / (40 * s)) ** 2 + ((y + 40 * s) / (55 * s)) ** 2)
    paint(body & (np.abs(iliac - 1) < 0.15) & (y < 20 * s) & (z < -110 * s) & (z > -205 * s), "trabecular_bone")
    for side in (-1, 1):
        head = ellipsoid(world, (side * j(85 * s), j(0.0), j(-255 * s)), (25 * s, 25 * s, 25 * s))
        paint(body & (head < 1), "cortical_bone")
        paint(body & (head < 0.8), "trabecular_bone")

    if arms:  # arms down beside the body: muscle round a humerus
        for side in (-1, 1):
            ax, ay = side * (half_w + 50 * s), j(-10 * s)
            r = np.sqrt((x - ax) ** 2 + (y - ay) ** 2)
            paint(r < 45 * s, "subcutaneous_fat")
            paint(r < 38 * s, "wall_muscle")
            paint(r < 11 * s, "cortical_bone")
            paint(r < 7 * s, "trabecular_bone")
    if table:  # a curved couch under the patient
        gap, thick = rng.uniform(3, 25), rng.uniform(6, 15)
        top = -half_d - gap + 0.0015 * x**2
        paint((y < top) & (y > top - thick) & (t == TISSUE_ID["air"]), "table")
    return t


def _attenuation(name: str, phase: str, rng) -> float:
    """One tissue's mean HU for one scan, by contrast phase (RESEARCH.md's table, jittered)."""
    u = rng.uniform
    nc, art, pv = {
        "subcutaneous_fat": ((-120, -80),) * 3, "visceral_fat": ((-110, -60),) * 3,
        "wall_muscle": ((40, 60), (45, 70), (50, 75)), "liver": ((50, 70), (65, 95), (95, 135)),
        "liver_vessel": ((30, 45), (110, 160), (150, 210)), "spleen": ((35, 55), (100, 150), (105, 135)),
        "kidney_cortex_left": ((25, 40), (150, 210), (150, 200)), "kidney_medulla_left": ((20, 35), (60, 110), (120, 180)),
        "aorta": ((35, 55), (250, 360), (150, 200)), "ivc": ((35, 55), (60, 130), (130, 190)),
        "heart_muscle": ((35, 50), (80, 120), (80, 110)), "pancreas": ((35, 50), (90, 130), (80, 120)),
        "trabecular_bone": ((150, 400),) * 3, "cortical_bone": ((500, 1100),) * 3,
        "bowel_wall": ((20, 50), (40, 80), (50, 90)), "stomach_wall": ((30, 55), (50, 90), (60, 100)),
        "stomach_content": ((-5, 60),) * 3, "gallbladder": ((0, 25),) * 3, "bladder": ((0, 20),) * 3,
        "lung": ((-910, -820),) * 3, "lung_vessel": ((-100, 60), (0, 200), (0, 150)), "table": ((-200, 400),) * 3,
        "air": ((-1000, -1000),) * 3, "bowel_gas": ((-1000, -950),) * 3, "trachea": ((-1000, -950),) * 3,
    }[_alias(name)]
    lo, hi = {"non_contrast": nc, "arterial": art, "portal_venous": pv}[phase]
    return float(u(lo, hi))


def _alias(name: str) -> str:
    """Tissues that share an attenuation table row with another."""
    return {"diaphragm": "wall_muscle", "paraspinal": "wall_muscle", "psoas": "wall_muscle",
            "kidney_cortex_right": "kidney_cortex_left", "kidney_medulla_right": "kidney_medulla_left",
            "great_vessel": "aorta", "heart_blood": "aorta", "lesion": "liver"}.get(name, name)


def _render(tissue, rng, phase, randomised: bool, spacing, noise_hu) -> np.ndarray:
    """HU from the tissue map: a mean and a texture per tissue, partial-volume blur, correlated noise."""
    means, textures = np.zeros(len(TISSUES), np.float32), np.zeros(len(TISSUES), np.float32)
    for name, i in TISSUE_ID.items():
        if randomised and name not in GAS:
            means[i] = rng.uniform(-200.0, 350.0)
        else:
            means[i] = _attenuation(name, phase, rng)
        textures[i] = rng.uniform(2.0, 20.0)
    if not randomised:  # a lesion differs from its own liver, darker more often than brighter
        means[TISSUE_ID["lesion"]] = means[TISSUE_ID["liver"]] + rng.uniform(-70.0, 35.0)
    grain = ndimage.gaussian_filter(rng.normal(size=tissue.shape).astype(np.float32), rng.uniform(1.0, 3.0))
    hu = means[tissue] + textures[tissue] * grain / max(float(grain.std()), 1e-6)
    blur = rng.uniform(0.3, 1.2) / np.asarray(spacing) * spacing.min()  # partial volume, in voxels
    hu = ndimage.gaussian_filter(hu, blur)
    noise = ndimage.gaussian_filter(rng.normal(size=tissue.shape).astype(np.float32), rng.uniform(0.5, 1.2))
    hu += rng.uniform(*noise_hu) * noise / max(float(noise.std()), 1e-6)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)
