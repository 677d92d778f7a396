from __future__ import annotations

import nibabel as nib


def load_response_image(response, tmp_path) -> nib.Nifti1Image:
    """The NIfTI file a MONAI Label ``output=image`` answer carries."""
    path = tmp_path / "result.nii.gz"
    path.write_bytes(response.content)
    return nib.load(path)
