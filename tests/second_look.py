"""Held-out synthetic upper-abdomen CTs, built independently of ``phantoms/``.

An app trained on the project's own phantoms can learn the generator rather than the anatomy. These
"phantoms of a second look" share no code with it and differ on purpose: organs are smoothly deformed
metaballs and thresholded random fields instead of wobbled ellipsoids; the slab lies above the kidneys
(none in view), with lung bases, heart, stomach, pancreas and IVC that the project's phantoms lack;
noise is spatially correlated; voxels are stored LPS on a fixed 128x128x48 grid at about
2.8x2.8x4 mm, with the patient slightly rotated on a table. A test that the out-of-distribution check
still calls them abdominal is then a test of the check, not of the generator.

Attenuation (portal venous phase): air -1000, subcutaneous fat about -100, muscle about 50, liver
100-130, hypodense tumours 40-70, spleen 110-120, aorta 150-200, bone 400-700, lung -850.
Only numpy, scipy and nibabel are used, so the module stays importable without the app.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

SHAPE = (128, 128, 48)
LIVER, TUMOUR = 1, 2


def second_look_scan(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One upper-abdomen CT, fully determined by ``seed``.

    Returns:
        ``(hu, affine, label)``: ``hu`` ``[X, Y, Z]`` int16, ``affine`` ``[4, 4]`` voxel to RAS+ mm
        (negative x and y diagonal: LPS voxel order), ``label`` ``[X, Y, Z]`` uint8 with 0 background,
        1 liver (intrahepatic vessels included), 2 liver tumour.
    """
    rng = np.random.default_rng(seed)
    spacing = np.array([rng.uniform(2.7, 2.9)] * 2 + [rng.uniform(3.75, 4.25)])
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    centre = np.array([rng.uniform(-15, 15), rng.uniform(-30, 0), rng.uniform(-200, 100)])
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2.0)
    u, v, w = _patient_grid(spacing, rng)
    hu, liver, tumour = _anatomy(u, v, w, spacing, rng)

    # Scanner: reconstruction-kernel blur, then noise correlated over about a voxel.
    hu = ndimage.gaussian_filter(hu, sigma=(0.7, 0.7, 0.35))
    noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE).astype(np.float32), sigma=(0.9, 0.9, 0.4))
    hu += noise * (rng.uniform(10.0, 20.0) / noise.std())
    ii, jj = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE[:2]), indexing="ij")
    hu[ii**2 + jj**2 > 1.0] = -1024.0  # outside the reconstruction circle
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)

    label = np.zeros(SHAPE, np.uint8)
    label[liver] = LIVER
    label[tumour] = TUMOUR
    return image, affine, label


def write_second_look(studies: Path, seeds: Iterable[int], truth: Path | None = None) -> list[str]:
    """Write ``<studies>/second_<seed:03d>.nii.gz`` (and labels under ``truth``); returns the image ids."""
    studies = Path(studies)
    studies.mkdir(parents=True, exist_ok=True)
    if truth is not None:
        Path(truth).mkdir(parents=True, exist_ok=True)
    ids = []
    for seed in seeds:
        image, affine, label = second_look_scan(seed)
        name = f"second_{seed:03d}"
        _save(image, affine, studies / f"{name}.nii.gz")
        if truth is not None:
            _save(label, affine, Path(truth) / f"{name}.nii.gz")
        ids.append(name)
    return ids


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)  # both set, so nibabel and ITK readers agree on the geometry
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _patient_grid(spacing: np.ndarray, rng: np.random.Generator):
    """Patient coordinates in mm of every voxel: ``u`` to the left, ``v`` posterior, ``w`` up from the slab's floor.

    Voxel order is LPS, so ``u`` and ``v`` grow with the index. The patient lies rotated by a few
    degrees on the table, and a smooth displacement (about 8 mm) deforms all anatomy at once.
    """
    x = (np.arange(SHAPE[0]) - (SHAPE[0] - 1) / 2) * spacing[0] + rng.uniform(-10, 10)
    y = (np.arange(SHAPE[1]) - (SHAPE[1] - 1) / 2) * spacing[1] + rng.uniform(-10, 10)
    x, y = np.meshgrid(x, y, indexing="ij")
    a = np.deg2rad(rng.uniform(-6, 6))
    u = (np.cos(a) * x - np.sin(a) * y)[..., None].astype(np.float32)
    v = (np.sin(a) * x + np.cos(a) * y)[..., None].astype(np.float32)
    w = (np.arange(SHAPE[2]) * spacing[2]).astype(np.float32)[None, None, :]
    warp = [8.0 * _field(rng, (5, 5, 4)) for _ in range(3)]
    return u + warp[0], v + warp[1], w + warp[2]


def _field(rng: np.random.Generator, cells: tuple[int, int, int]) -> np.ndarray:
    """A smooth Gaussian random field ``[X, Y, Z]`` float32, unit std, with ``cells`` bumps along each axis.

    Random weights on a lattice of Gaussian bumps (one spare row past each edge), summed separably:
    far faster than ``ndimage.zoom`` and just as smooth.
    """
    bases = []
    for n, c in zip(SHAPE, cells):
        t = (np.arange(n) + 0.5) / n * c - 0.5  # voxel centres in lattice units
        bases.append(np.exp(-0.5 * ((t[:, None] - np.arange(-1, c + 1)[None, :]) / 0.7) ** 2))
    weights = rng.standard_normal(tuple(c + 2 for c in cells))
    out = np.einsum("ijk,ai,bj,ck->abc", weights, *bases, optimize=True).astype(np.float32)
    return (out - out.mean()) / out.std()


def _blobs(u, v, w, blobs, rng) -> np.ndarray:
    """Metaball potential: a sum of Gaussian bumps ``(cu, cv, cw, su, sv, sw, degrees in the u-v plane)``."""
    p = np.zeros(SHAPE, np.float32)
    for cu, cv, cw, su, sv, sw, deg in blobs:
        j = rng.uniform(0.9, 1.1, size=3)  # each patient's organ is a little different
        a = np.deg2rad(deg)
        du, dv = u - cu, v - cv
        ru, rv = np.cos(a) * du + np.sin(a) * dv, -np.sin(a) * du + np.cos(a) * dv
        p += np.exp(-0.5 * ((ru / (su * j[0])) ** 2 + (rv / (sv * j[1])) ** 2 + ((w - cw) / (sw * j[2])) ** 2))
    return p


def _organ(potential: np.ndarray, allowed: np.ndarray, volume_ml: float, voxel_ml: float) -> np.ndarray:
    """The ``volume_ml`` of ``allowed`` where ``potential`` is highest, as one connected piece."""
    values = potential[allowed]
    n = min(int(volume_ml / voxel_ml), values.size - 1)
    if n <= 0:
        return np.zeros(SHAPE, bool)
    level = np.partition(values, values.size - n)[values.size - n]
    mask = allowed & (potential >= level)
    parts, count = ndimage.label(mask)
    if count > 1:
        mask = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(mask, structure=in_plane) & allowed  # no pinholes where the potential dips


def _anatomy(u, v, w, spacing, rng):
    """Paint the slab; returns HU ``[X, Y, Z]`` float32 and the liver and tumour masks."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    top = (SHAPE[2] - 1) * spacing[2]
    half_w, half_d = rng.uniform(150, 170), rng.uniform(110, 130)  # a body of about 320 x 240 mm
    hu = np.full(SHAPE, -1000.0, np.float32)

    # Patient table: a shallow cradle under the back.
    cradle = v - (half_d + 8 - 0.001 * u**2)
    hu[(cradle > 0) & (cradle < 6) & (np.abs(u) < 200)] = 150.0

    # Body outline: a superellipse with a random wavy edge; rho < 1 inside, ~1 - depth / half_d.
    theta = np.arctan2(v, u)
    edge = sum(rng.normal(0, 0.012) * np.cos(k * theta + rng.uniform(0, 6.3)) for k in range(2, 6))
    rho = ((np.abs(u) / half_w) ** 2.4 + (np.abs(v) / half_d) ** 2.4) ** (1 / 2.4) * (1 + edge)
    fat_in = 1 - rng.uniform(10, 25) / half_d
    wall_in = fat_in - rng.uniform(8, 15) / half_d
    texture = _field(rng, (24, 24, 10))
    body, cavity = rho < 1, rho < wall_in
    hu[body] = rng.uniform(-110, -90) + 8 * texture[body]
    hu[(rho < fat_in) & ~cavity] = rng.uniform(45, 60)  # abdominal wall muscle
    hu[cavity] = rng.uniform(-90, -70) + 15 * texture[cavity]  # visceral fat with strands

    # Spine, canal and posterior elements, with discs every vertebra; back muscles beside them.
    sv = half_d - rng.uniform(55, 70)
    vert = (u / 20.0) ** 2 + ((v - sv) / 17.0) ** 2
    canal_r = np.sqrt(u**2 + (v - sv - 27) ** 2)
    disc = np.mod(w + rng.uniform(0, 30), 30.0) < 5.0
    muscles = ((np.abs(u) - 38) / 26) ** 2 + ((v - sv - 45) / 22) ** 2 < 1
    hu[muscles & body] = rng.uniform(45, 60)
    arch = ((canal_r > 9) & (canal_r < 15)) | ((np.abs(u) < 4) & (v > sv + 38) & (v < sv + 65))
    bone = ((vert < 1) | arch) & ~disc
    hu[(vert < 1) | (canal_r < 9)] = 70.0  # discs and spinal canal (soft)
    hu[bone] = rng.uniform(600, 700)
    hu[bone & (vert < 0.75)] = rng.uniform(350, 450)  # cancellous core inside the cortical shell
    spine = (vert < 1.2) | (canal_r < 16) | muscles

    # Diaphragm: two domes, the right one higher, sloping down posteriorly; lungs and heart above it.
    dome = top - rng.uniform(25, 45)
    right = dome - ((u + 60) ** 2 + 0.5 * v**2) / 300.0
    left = dome - rng.uniform(8, 20) - ((u - 60) ** 2 + 0.5 * v**2) / 300.0
    diaphragm = np.maximum(right, left) - 0.15 * np.clip(v, 0, None)
    thorax = cavity & (w > diaphragm) & ~spine
    heart = thorax & ((((u - 20) / 70) ** 2 + ((v + 35) / 55) ** 2 + ((w - dome - 50) / 60) ** 2) < 1)
    hu[thorax] = -850.0 + 25 * texture[thorax]
    hu[heart] = rng.uniform(35, 50)
    hu[heart & (_field(rng, (10, 10, 5)) > 0.3)] = rng.uniform(140, 170)  # blood in the chambers
    below = cavity & ~thorax & ~spine

    # Great vessels: aorta anterior-left of the spine; IVC on the right, against the liver.
    aorta = (((u - 18) ** 2 + (v - sv + 32) ** 2) < rng.uniform(10, 13) ** 2) & cavity
    ivc = ((((u + 25) / 13) ** 2 + ((v - sv + 42) / 10) ** 2) < 1) & below
    taken = spine | aorta | ivc | thorax

    # Hollow organs and spleen on the patient's left; bowel low and anterior.
    stomach = _organ(_blobs(u, v, w, [(55, -20, dome - 55, 35, 30, 35, 30), (25, -45, dome - 90, 25, 20, 25, 0)], rng)
                     + 0.15 * _field(rng, (8, 8, 4)), below & ~taken, rng.uniform(250, 500), voxel_ml)
    taken |= stomach
    spleen = _organ(_blobs(u, v, w, [(95, 45, dome - 65, 22, 40, 40, -35)], rng) + 0.1 * _field(rng, (8, 8, 4)),
                    below & ~taken, rng.uniform(150, 250), voxel_ml)
    taken |= spleen
    pancreas = _organ(_blobs(u, v, w, [(30, sv - 55, dome - 120, 55, 12, 14, 15)], rng),
                      below & ~taken, rng.uniform(50, 80), voxel_ml)
    taken |= pancreas
    colon_p = _blobs(u, v, w, [(0, -60, 15, 110, 35, 35, 0), (100, 0, 40, 30, 40, 50, 0)], rng)
    bowel = _organ(colon_p + 0.4 * _field(rng, (10, 10, 5)), below & ~taken & (w < dome - 80), rng.uniform(200, 400),
                   voxel_ml)
    taken |= bowel

    # Liver: right lobe, posterior segments, left lobe reaching across the midline.
    liver_p = _blobs(u, v, w, [(-75, 0, dome - 55, 50, 55, 50, 0), (-80, 30, dome - 115, 40, 40, 35, 0),
                               (0, -50, dome - 45, 40, 25, 30, 20), (50, -50, dome - 35, 25, 18, 20, 10)], rng)
    # The liver fills the right dome: favour the space just under the right hemidiaphragm.
    liver_p += 0.5 * np.exp(-np.clip(diaphragm - w, 0, None) / 25.0 - 0.5 * ((u + 60) / 50) ** 2)
    liver = _organ(liver_p + 0.12 * _field(rng, (8, 8, 5)), below & ~taken, rng.uniform(1250, 1750), voxel_ml)

    hu[stomach] = rng.uniform(10, 30)
    gas_level = np.percentile(v[stomach], rng.uniform(15, 35))
    hu[stomach & (v < gas_level)] = -1000.0  # supine: gas rises anteriorly
    hu[stomach & ~ndimage.binary_erosion(stomach, iterations=1)] = rng.uniform(55, 70)  # enhancing wall
    hu[spleen] = rng.uniform(110, 120) + 4 * texture[spleen]
    hu[pancreas] = rng.uniform(90, 110)
    hu[bowel] = rng.uniform(0, 40) + 20 * texture[bowel]
    hu[bowel & (_field(rng, (20, 20, 8)) > 1.0)] = -1000.0  # gas pockets
    hu[aorta] = rng.uniform(150, 200)
    hu[ivc] = rng.uniform(120, 150)
    liver_hu = rng.uniform(100, 130)
    hu[liver] = liver_hu + 4 * texture[liver]
    # Hepatic and portal veins: curves where two smooth fields cross zero together.
    f1, f2 = _field(rng, (7, 7, 4)), _field(rng, (7, 7, 4))
    hu[liver & (np.abs(f1) < 0.08) & (np.abs(f2) < 0.25)] = rng.uniform(150, 180)

    # Ribs: bands just inside the wall, higher at the back than at the front, sparing the anterior midline.
    rib_depth = np.abs(rho - (wall_in + 0.02))
    rib_band = np.mod(w - 0.4 * v + rng.uniform(0, 36), 36.0) < 11.0
    ribs = (rib_depth < 0.03) & rib_band & ~cavity & ~((np.abs(u) < 45) & (v < 0))
    hu[ribs] = rng.uniform(450, 650)

    tumour = _tumours(hu, u, v, w, liver, liver_hu, spacing, rng)
    return hu, liver, tumour


def _tumours(hu, u, v, w, liver, liver_hu, spacing, rng) -> np.ndarray:
    """Paint 1-4 hypodense lesions (40-70 HU, radius 5-15 mm) inside the liver; returns their mask."""
    tumour = np.zeros(SHAPE, bool)
    depth = ndimage.distance_transform_edt(liver, sampling=spacing)
    for _ in range(int(rng.integers(1, 5))):
        r = rng.uniform(5, 15)
        inside = np.argwhere(depth > max(0.7 * r, spacing[2]))
        if len(inside) == 0:
            continue
        i, j, k = inside[rng.integers(len(inside))]
        c = u[i, j, k], v[i, j, k], w[i, j, k]
        # Lobulated: the radius varies smoothly with direction.
        d = np.sqrt((u - c[0]) ** 2 + (v - c[1]) ** 2 + (w - c[2]) ** 2) / r
        lesion = liver & (d < 1 + 0.15 * _field(rng, (6, 6, 3)))
        core = rng.uniform(40, 70)
        hu[lesion] = core + (liver_hu - core) * np.clip(d[lesion] - 0.7, 0, 0.3) / 0.6  # soft margin
        tumour |= lesion
    return tumour
