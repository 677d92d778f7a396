"""Render a PNG montage of the phantoms: one row per tumour type, a few axial slices, label contours.

    python -m phantoms.montage --out docs/phantoms.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from apps.slpt.labels import LIVER, TUMOUR
from phantoms.phantom import TUMOR_PREVALENCE, make_phantom, phantom_header  # noqa: E402


def _ras_axial(volume: np.ndarray, affine: np.ndarray, z: int) -> np.ndarray:
    """Axial slice shown in radiological convention (patient's right on the image's left)."""
    sl = volume[:, :, z]
    # First bring the indices to RAS order (index grows towards Right and Anterior) ...
    if affine[0, 0] < 0:
        sl = sl[::-1]
    if affine[1, 1] < 0:
        sl = sl[:, ::-1]
    # ... then put anterior at the top and the patient's right on the image's left.
    return sl.T[::-1, ::-1]


def render(out: Path, seed: int = 7, slices: int = 4) -> Path:
    types = list(TUMOR_PREVALENCE)
    fig, axes = plt.subplots(len(types), slices, figsize=(2.6 * slices, 2.2 * len(types)))
    for row, kind in enumerate(types):
        # Show each type in the phase that defines its look (arterial for the enhancing ones).
        phase = "arterial" if kind in ("hcc", "hemangioma") else "portal_venous"
        ph_seed = next(s for s in range(seed + row, seed + 1000) if phantom_header(s)["phase"] == phase)
        ph = make_phantom(ph_seed, tumor_type=kind)
        liver_z = np.nonzero(ph.label.any(axis=(0, 1)))[0]
        tumour_z = np.nonzero((ph.label == TUMOUR).any(axis=(0, 1)))[0]
        zs = tumour_z if len(tumour_z) else liver_z
        picks = np.linspace(zs.min(), zs.max(), slices + 2)[1:-1].round().astype(int)
        for col, z in enumerate(picks):
            ax = axes[row, col]
            ax.imshow(_ras_axial(ph.image, ph.affine, z), cmap="gray", vmin=-160, vmax=240,
                      aspect=ph.info["spacing"][1] / ph.info["spacing"][0])
            lab = _ras_axial(ph.label, ph.affine, z)
            ax.contour(lab == LIVER, levels=[0.5], colors="lime", linewidths=0.6)
            ax.contour(lab == TUMOUR, levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xticks([]), ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"{kind}\n{ph.info['phase']}", fontsize=8)
    fig.suptitle("Synthetic CT phantoms: liver (green) and tumour (red) contours, W400/L40", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/phantoms.png"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    print(render(args.out, args.seed))


if __name__ == "__main__":
    main()
