"""Prompt ensembles and prompt-based uncertainty (PU).

The ``K`` prompt sets give ``K`` softmax predictions per voxel. Their disagreement is measured by the
mutual information between the prediction and the prompt index,

    MI = H(mean_k p_k) - mean_k H(p_k) = mean_k KL(p_k || mean_k p_k),

which is 0 exactly when all prompts agree and is not fooled by a prediction that is uncertain but
shared by all prompts (unlike a flattened variance, which ranks a confident ``[0.99, 0.01]`` above an
uncertain ``[0.5, 0.5]``). Per scan, PU is aggregated over the lesion-relevant region only — the
predicted tumour with a margin, plus the most uncertain voxels inside the predicted liver — because a
whole-volume mean is dominated by background and drowns out small lesions.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from scipy import ndimage

from apps.slpt.model.prompts import split_prompts

EPS = 1e-8


def prompt_probabilities(logits: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """``[B, K * C, *S]`` logits -> ``[K, B, C, *S]`` per-prompt softmax."""
    return split_prompts(logits, num_prompts).softmax(dim=2)


def entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -(p * (p + EPS).log()).sum(dim)


def mutual_information(probs: torch.Tensor) -> torch.Tensor:
    """``[K, B, C, *S]`` probabilities -> ``[B, *S]`` MI (nats), >= 0, 0 where all K agree."""
    mean = probs.mean(0)
    return (entropy(mean, dim=1) - entropy(probs, dim=2).mean(0)).clamp_min(0.0)


def ensemble(logits: torch.Tensor, num_prompts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, K * C, *S]`` -> ``(mean probabilities [B, C, *S], PU map [B, *S])``."""
    probs = prompt_probabilities(logits, num_prompts)
    return probs.mean(0), mutual_information(probs)


def lesion_region(
    prediction: np.ndarray, tumor_label: int = 2, liver_label: int = 1, margin: int = 2
) -> np.ndarray:
    """Boolean ``[*S]``: predicted tumour dilated by ``margin`` voxels, clipped to the predicted organ."""
    organ = (prediction == tumor_label) | (prediction == liver_label)
    tumour = prediction == tumor_label
    if margin > 0 and tumour.any():
        tumour = ndimage.binary_dilation(tumour, iterations=margin)
    return tumour & organ


def scan_uncertainty(
    pu: np.ndarray,
    prediction: np.ndarray,
    tumor_label: int = 2,
    liver_label: int = 1,
    margin: int = 2,
    top_fraction: float = 0.01,
) -> float:
    """One PU score per scan from a voxel map ``pu [*S]`` and the ensemble's label map ``[*S]``.

    Mean PU over: the predicted tumour + ``margin`` voxels, together with the top ``top_fraction`` most
    uncertain voxels of the predicted liver (a lesion the ensemble half-sees may not be predicted as
    tumour at all). Falls back to the top fraction of the whole volume when no liver is predicted.
    """
    if pu.shape != prediction.shape:
        raise ValueError(f"uncertainty map {pu.shape} and prediction {prediction.shape} differ in shape")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    organ = (prediction == tumor_label) | (prediction == liver_label)
    pool = pu[organ] if organ.any() else pu.ravel()
    k = max(1, int(round(top_fraction * pool.size)))
    top = np.partition(pool, pool.size - k)[pool.size - k:]
    lesion = pu[lesion_region(prediction, tumor_label, liver_label, margin)]
    # Voxels in both sets count twice at most; fine for a ranking score and keeps this O(N).
    values = np.concatenate([lesion, top])
    return float(values.mean())


@contextlib.contextmanager
def dropout_enabled(model: torch.nn.Module):
    """Switch on only the dropout layers (MC dropout), restoring every module's mode afterwards.

    ``model.train()`` would also flip normalisation layers to batch statistics, which is not MC dropout.
    """
    modes = {m: m.training for m in model.modules()}
    try:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.dropout._DropoutNd):
                m.train()
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


@torch.no_grad()
def mc_dropout_probabilities(model: torch.nn.Module, image: torch.Tensor, inferer, samples: int = 5,
                             seed: int = 0) -> torch.Tensor:
    """``samples`` stochastic passes of ``image [1, *S]`` -> ``[samples, 1, C, *S]`` softmax (baseline scorer)."""
    if samples < 2:
        raise ValueError(f"MC dropout needs at least 2 samples, got {samples}")
    with torch.random.fork_rng(), dropout_enabled(model):  # seeded dropout masks; the global stream is left as it was
        torch.manual_seed(seed)
        return torch.stack([torch.as_tensor(inferer(image[None], model)).softmax(1) for _ in range(samples)])
