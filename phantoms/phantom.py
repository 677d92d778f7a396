"""Synthetic abdominal CT phantoms with liver tumours (the attenuation ranges and tumour looks of published abdominal CT).

Every structure is an implicit function of *world* coordinates (millimetres, RAS+), evaluated on a
voxel grid whose affine varies in spacing, size and orientation. Because anatomy is defined in world
space, an LPS-ordered volume shows the liver on the patient's right exactly like an RAS-ordered one,
which is what makes orientation handling testable.

One phantom is fully determined by its seed: ``make_phantom(seed)`` twice gives identical arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from apps.slpt.labels import LIVER, TUMOUR

# Task-agnostic organ classes used for pre-training; a tumour counts as liver here.
ORGAN_NAMES: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "kidney_left": 3,
    "kidney_right": 4,
    "aorta": 5,
    "bone": 6,
    "bowel": 7,
    "muscle": 8,  # the abdominal wall; without its own class it is the background most easily taken for liver
}

PHASES = ("non_contrast", "arterial", "portal_venous")

# Prevalence of the dominant tumour type per scan. Imbalanced on purpose: a good selector must find
# the rare ones. Sums to 1.
TUMOR_PREVALENCE: dict[str, float] = {
    "none": 0.20,
    "hcc": 0.30,
    "metastasis": 0.25,
    "cyst": 0.13,
    "hemangioma": 0.08,
    "infiltrative": 0.04,
}


@dataclass(frozen=True)
class PhantomSpec:
    """Ranges the generator samples from. Defaults give coarse, CPU-friendly volumes.

    Args:
        inplane_spacing: (min, max) in-plane pixel size in mm.
        slice_spacing: (min, max) slice spacing in mm.
        z_extent: (min, max) cranio-caudal field of view in mm.
        body_scale: (min, max) factor applied to body and organ sizes.
        noise_hu: (min, max) standard deviation of scanner noise in HU.
        prevalence: tumour-type prevalence, see ``TUMOR_PREVALENCE``.
        lps_fraction: share of volumes stored with an LPS voxel order (the rest RAS).
    """

    inplane_spacing: tuple[float, float] = (2.0, 3.0)
    slice_spacing: tuple[float, float] = (2.5, 5.0)
    z_extent: tuple[float, float] = (170.0, 220.0)
    body_scale: tuple[float, float] = (0.88, 1.12)
    noise_hu: tuple[float, float] = (8.0, 25.0)
    prevalence: dict[str, float] = field(default_factory=lambda: dict(TUMOR_PREVALENCE))
    lps_fraction: float = 0.5

    def __post_init__(self):
        if abs(sum(self.prevalence.values()) - 1.0) > 1e-6:
            raise ValueError(f"tumour prevalence must sum to 1, got {sum(self.prevalence.values())}")
        unknown = set(self.prevalence) - set(TUMOR_PREVALENCE)
        if unknown:
            raise ValueError(f"unknown tumour types {sorted(unknown)}; known: {sorted(TUMOR_PREVALENCE)}")


@dataclass
class Phantom:
    """One generated scan.

    Attributes:
        image: ``[X, Y, Z]`` int16 HU.
        label: ``[X, Y, Z]`` uint8 task labels (0 background, 1 liver, 2 tumour).
        organs: ``[X, Y, Z]`` uint8 organ map (``ORGAN_NAMES``; tumour counted as liver).
        affine: ``[4, 4]`` voxel-to-world (RAS+ mm), as nibabel expects.
        info: tumour type, phase, orientation, noise and lesion count.
    """

    image: np.ndarray
    label: np.ndarray
    organs: np.ndarray
    affine: np.ndarray
    info: dict


def sample_tumor_type(rng: np.random.Generator, prevalence: dict[str, float]) -> str:
    names = list(prevalence)
    return str(rng.choice(names, p=[prevalence[n] for n in names]))


def _sample_header(rng: np.random.Generator, spec: PhantomSpec) -> tuple[float, str, str, str]:
    """The first draws of every phantom: (body scale, phase, tumour type, orientation)."""
    scale = float(rng.uniform(*spec.body_scale))
    phase = str(rng.choice(PHASES))
    tumor_type = sample_tumor_type(rng, spec.prevalence)
    orientation = "LPS" if rng.random() < spec.lps_fraction else "RAS"
    return scale, phase, tumor_type, orientation


def phantom_header(seed: int, spec: PhantomSpec | None = None) -> dict[str, str]:
    """Phase, tumour type and orientation of ``make_phantom(seed)`` without building the volume."""
    _, phase, tumor_type, orientation = _sample_header(np.random.default_rng(seed), spec or PhantomSpec())
    return {"phase": phase, "tumor_type": tumor_type, "orientation": orientation}


def make_phantom(seed: int, spec: PhantomSpec | None = None, tumor_type: str | None = None) -> Phantom:
    """Generate the phantom for ``seed``; ``tumor_type`` overrides the sampled type (montages)."""
    spec = spec or PhantomSpec()
    rng = np.random.default_rng(seed)
    scale, phase, sampled_type, orientation = _sample_header(rng, spec)
    tumor_type = tumor_type or sampled_type

    half_w, half_d = 160.0 * scale * rng.uniform(0.93, 1.07), 115.0 * scale * rng.uniform(0.93, 1.07)
    spacing = np.array([rng.uniform(*spec.inplane_spacing)] * 2 + [rng.uniform(*spec.slice_spacing)])
    fov = np.array([2 * half_w + 24.0, 2 * half_d + 24.0, rng.uniform(*spec.z_extent)])
    shape = tuple(int(n) for n in np.ceil(fov / spacing))
    affine = voxel_affine(shape, spacing, orientation, z_centre=rng.uniform(0.0, 30.0) * scale)
    world = world_grid(shape, affine)

    hu, organs = _anatomy(world, rng, scale, half_w, half_d, phase)
    liver = organs == ORGAN_NAMES["liver"]
    tumor, n_lesions = _add_tumors(hu, world, liver, spacing, rng, tumor_type, phase, scale)

    label = np.zeros(shape, np.uint8)
    label[liver] = LIVER
    label[tumor & liver] = TUMOUR

    sigma_blur = rng.uniform(0.4, 0.9)  # partial-volume / reconstruction kernel, in voxels
    hu = ndimage.gaussian_filter(hu, sigma=(sigma_blur, sigma_blur, sigma_blur * 0.5))
    noise = rng.uniform(*spec.noise_hu)
    hu += rng.normal(0.0, noise, size=shape).astype(np.float32)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)

    info = {
        "seed": int(seed),
        "tumor_type": tumor_type,
        "phase": phase,
        "orientation": orientation,
        "noise_hu": round(float(noise), 2),
        "spacing": [round(float(s), 3) for s in spacing],
        "n_lesions": int(n_lesions),
        "tumor_voxels": int((label == TUMOUR).sum()),
    }
    return Phantom(image=image, label=label, organs=organs, affine=affine, info=info)


def voxel_affine(shape, spacing, orientation: str, z_centre: float) -> np.ndarray:
    """Voxel-to-RAS affine centring the grid at (0, 0, z_centre); LPS flips the first two axes."""
    signs = np.array([-1.0, -1.0, 1.0]) if orientation == "LPS" else np.ones(3)
    affine = np.diag(np.append(signs * spacing, 1.0))
    centre = np.array([0.0, 0.0, z_centre])
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return affine


def world_grid(shape, affine) -> np.ndarray:
    """``[3, X, Y, Z]`` float32 world coordinates of every voxel centre."""
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    # The affine is diagonal (axis-aligned volumes), so each world axis depends on one index only.
    coords = [affine[i, i] * axes[i] + affine[i, 3] for i in range(3)]
    return np.stack(np.meshgrid(*coords, indexing="ij")).astype(np.float32)


def wobble(world, rng, amplitude: float, wavelength: float = 90.0, n: int = 4) -> np.ndarray:
    """A smooth random field (sum of plane waves) used to make shapes irregular."""
    field_ = np.zeros(world.shape[1:], np.float32)
    for _ in range(n):
        k = rng.normal(size=3)
        k *= 2 * np.pi / (wavelength * np.linalg.norm(k))
        field_ += np.sin(np.tensordot(k.astype(np.float32), world, axes=1) + rng.uniform(0, 2 * np.pi))
    return amplitude * field_ / np.sqrt(n)


def ellipsoid(world, centre, radii, deform=None) -> np.ndarray:
    """Normalised radius: < 1 inside the (optionally wobbled) ellipsoid."""
    d = [(world[i] - centre[i]) / radii[i] for i in range(3)]
    r = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    return r if deform is None else r + deform


def _organ_hu(phase: str, rng) -> dict[str, float]:
    """Attenuation per tissue for one scan, sampled within the published ranges."""
    u = rng.uniform
    table = {
        "non_contrast": dict(liver=u(55, 65), spleen=u(45, 50), cortex=u(30, 40), blood=u(40, 50)),
        "arterial": dict(liver=u(60, 80), spleen=u(100, 150), cortex=u(150, 200), blood=u(250, 350)),
        "portal_venous": dict(liver=u(100, 130), spleen=u(110, 130), cortex=u(150, 180), blood=u(150, 200)),
    }[phase]
    table.update(fat=u(-110, -80), muscle=u(40, 60), trabecular=u(200, 300), cortical=u(700, 1000),
                 bowel_wall=u(20, 45), gas=-1000.0)
    table["medulla"] = table["cortex"] * (0.5 if phase == "arterial" else 0.9)
    return table


def _anatomy(world, rng, s, half_w, half_d, phase):
    """Paint body, organs and bones; returns float32 HU and uint8 organ labels."""
    shape = world.shape[1:]
    x, y, z = world
    hu_of = _organ_hu(phase, rng)
    hu = np.full(shape, -1000.0, np.float32)  # air
    organs = np.zeros(shape, np.uint8)
    j = lambda v: v * rng.uniform(0.9, 1.1)  # noqa: E731 - jitter for positions and radii

    body_r = np.sqrt((x / half_w) ** 2 + (y / half_d) ** 2) + wobble(world, rng, 0.015, 200.0)
    fat_mm = rng.uniform(10.0, 30.0)
    inner = 1.0 - fat_mm / half_d
    hu[body_r < 1.0] = hu_of["fat"]
    cavity = body_r <= inner - 0.07  # organs stay inside the abdominal wall
    wall = (body_r < inner) & ~cavity
    hu[wall] = hu_of["muscle"]
    organs[wall] = ORGAN_NAMES["muscle"]
    hu[cavity] = hu_of["fat"] * 0.6  # visceral fat, denser than subcutaneous

    # Bowel: soft-tissue loops with gas pockets, anterior and caudal of the liver.
    bowel = np.zeros(shape, bool)
    for _ in range(rng.integers(4, 8)):
        c = (rng.uniform(-80, 60) * s, rng.uniform(10, 70) * s, rng.uniform(-90, -10) * s)
        loop = (ellipsoid(world, c, (j(28 * s), j(18 * s), j(30 * s)), wobble(world, rng, 0.15, 60.0)) < 1) & cavity
        bowel |= loop
        gas = (ellipsoid(world, c, (j(12 * s), j(8 * s), j(12 * s))) < 1) & cavity
        hu[loop] = hu_of["bowel_wall"]
        hu[gas] = hu_of["gas"]
    organs[bowel] = ORGAN_NAMES["bowel"]

    liver = ellipsoid(world, (j(65 * s), j(10 * s), j(35 * s)), (j(80 * s), j(72 * s), j(78 * s)),
                       wobble(world, rng, 0.12))
    # The left lobe tapers towards the patient's left: cut the ellipsoid with a slanted plane.
    liver = (liver < 1) & (y - 0.55 * (x - 10 * s) < 70 * s) & cavity
    spleen = ellipsoid(world, (j(-85 * s), j(-40 * s), j(40 * s)), (j(32 * s), j(24 * s), j(48 * s)),
                        wobble(world, rng, 0.1)) < 1
    _paint(hu, organs, liver, hu_of["liver"], ORGAN_NAMES["liver"])
    _paint(hu, organs, spleen, hu_of["spleen"], ORGAN_NAMES["spleen"])
    if phase == "arterial":  # arterial spleen is heterogeneous ("zebra")
        hu[spleen] += 25.0 * np.sin(world[2][spleen] / 6.0 + world[0][spleen] / 9.0)

    for side, name in ((-1, "kidney_left"), (1, "kidney_right")):
        c = (side * j(65 * s), j(-55 * s), j(-25 * s))
        r = ellipsoid(world, c, (j(24 * s), j(20 * s), j(48 * s)), wobble(world, rng, 0.05))
        _paint(hu, organs, r < 1, hu_of["cortex"], ORGAN_NAMES[name])
        hu[r < 0.6] = hu_of["medulla"]

    aorta = ((x - j(-15 * s)) ** 2 + (y - j(-28 * s)) ** 2) < (j(11 * s)) ** 2
    _paint(hu, organs, aorta, hu_of["blood"], ORGAN_NAMES["aorta"])

    # Vertebral body (cortical shell, trabecular core) and posterior arch; ribs as curved bands.
    vx, vy = j(0.0), j(-78 * s)
    vr = np.sqrt((x - vx) ** 2 + ((y - vy) / 0.85) ** 2)
    vertebra = vr < 20 * s
    arch = (np.abs(x - vx) < 7 * s) & (y < vy - 12 * s) & (y > vy - 45 * s)
    level = np.mod(z, 32.0) < 26.0  # discs between vertebrae
    bone = (vertebra | arch) & level
    _paint(hu, organs, bone, hu_of["trabecular"], ORGAN_NAMES["bone"])
    hu[bone & ((vr > 17 * s) | arch)] = hu_of["cortical"]
    # Ribs run inside the muscle wall, around the back and sides (not across the anterior midline).
    ribs = (np.abs(body_r - inner + 0.035) < 0.02) & (np.mod(z + 8.0, 36.0) < 9.0) & (y < 0.3 * half_d)
    _paint(hu, organs, ribs, hu_of["cortical"] * 0.8, ORGAN_NAMES["bone"])
    return hu, organs


def _paint(hu, organs, mask, value, organ_id):
    hu[mask] = value
    organs[mask] = organ_id


def _add_tumors(hu, world, liver, spacing, rng, tumor_type, phase, s):
    """Insert lesions of one type into the liver; returns the tumour mask and lesion count."""
    tumor = np.zeros(liver.shape, bool)
    if tumor_type == "none" or liver.sum() == 0:
        return tumor, 0
    depth = ndimage.distance_transform_edt(liver, sampling=spacing)  # mm to the liver surface
    liver_hu = float(np.median(hu[liver]))
    blood = {"non_contrast": 45.0, "arterial": 300.0, "portal_venous": 170.0}[phase]
    count, radius = {
        "hcc": ((1, 3), (12, 30)),
        "metastasis": ((3, 9), (4, 12)),
        "cyst": ((1, 4), (6, 22)),
        "hemangioma": ((1, 3), (10, 24)),
        "infiltrative": ((1, 2), (28, 45)),
    }[tumor_type]
    n = int(rng.integers(count[0], count[1]))
    placed = 0
    for _ in range(n):
        r = rng.uniform(*radius) * s
        candidates = np.argwhere(depth > min(0.6 * r, depth.max() * 0.8))
        if len(candidates) == 0:
            continue
        c_idx = candidates[rng.integers(len(candidates))]
        c = world[(slice(None), *c_idx)]
        radii = r * rng.uniform(0.8, 1.2, size=3)
        wob = {"infiltrative": 0.35, "hcc": 0.08, "metastasis": 0.05}.get(tumor_type, 0.02)
        d = ellipsoid(world, c, radii, wobble(world, rng, wob, wavelength=max(2.5 * r, 20.0)))
        lesion = (d < 1) & liver
        _paint_lesion(hu, d, lesion, tumor_type, phase, liver_hu, blood, rng, r)
        tumor |= lesion
        placed += int(lesion.any())
    return tumor, placed


def _paint_lesion(hu, d, lesion, kind, phase, liver_hu, blood, rng, r):
    """Per-type enhancement patterns."""
    rim = lesion & (d > 0.9)  # the outer ~27% of the lesion volume
    if kind == "hcc":
        delta = {"non_contrast": -rng.uniform(5, 15), "arterial": rng.uniform(20, 40),
                 "portal_venous": -rng.uniform(10, 30)}[phase]
        hu[lesion] = liver_hu + delta
        if r > 20:  # large HCC is heterogeneous (necrosis, mosaic)
            hu[lesion] += rng.normal(0, 12, size=int(lesion.sum())).astype(np.float32)
        if phase == "portal_venous":  # enhancing capsule
            hu[lesion & (d > 0.88)] = liver_hu + rng.uniform(5, 15)
    elif kind == "metastasis":
        core_hu = {"non_contrast": rng.uniform(30, 45), "arterial": rng.uniform(40, 60),
                   "portal_venous": rng.uniform(40, 80)}[phase]
        hu[lesion] = core_hu
        if phase != "non_contrast":
            hu[rim] = liver_hu + rng.uniform(10, 30)
    elif kind == "cyst":
        hu[lesion] = rng.uniform(0, 20)
    elif kind == "hemangioma":
        hu[lesion] = rng.uniform(35, 45) if phase != "portal_venous" else liver_hu - 15
        if phase != "non_contrast":
            # Discontinuous peripheral nodules following the blood pool; fill-in grows with phase.
            extent = 0.7 if phase == "arterial" else 0.4
            ix, iy = np.nonzero(lesion)[:2]
            angle = np.arctan2(iy - iy.mean(), ix - ix.mean())  # around the lesion's own axis
            nodular = np.zeros_like(lesion)
            nodular[lesion] = np.sin(5 * angle + rng.uniform(0, 6.3)) > 0.2
            hu[nodular & (d > extent)] = blood * 0.9
    elif kind == "infiltrative":
        hu[lesion] = liver_hu - rng.uniform(8, 18)
    else:
        raise ValueError(f"unknown tumour type {kind!r}")
