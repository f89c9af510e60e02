"""Distances between the real images of a class and its kept generations, in the filter embedder's feature space.

KID (kernel inception distance: the unbiased squared MMD with a cubic polynomial kernel, averaged over random
subsets, with its standard deviation over those subsets) and FID (the Fréchet distance of two Gaussians fitted to
the features) come from ``torchmetrics``; its extractors are bypassed with :class:`Precomputed`, so the features
are the embedder's, read from the filter's embedding cache. FID needs a full-rank covariance: it is computed only
where both sides hold more images than the features have dimensions, and the page says so. KID is unbiased at any
size of two or more.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

KID_SUBSETS = 100
KID_SUBSET_SIZE = 100
"""torchmetrics' defaults are 100 subsets of 1000; a class of a small dataset has fewer images, so the subset size
is the smaller of this and the two sides' counts."""


class Precomputed(nn.Module):
    """A "feature extractor" for torchmetrics' FID and KID whose input is already the features: ``(N, D)`` rows.

    ``num_features`` tells FID the dimension without a dummy image being passed through.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@dataclass(frozen=True)
class Distance:
    """KID and FID of one class (or of all classes pooled)."""

    cls: str
    real: int
    generated: int
    kid: float | None
    kid_std: float | None
    fid: float | None
    note: str = ""


def fid_needs(dimensions: int) -> int:
    """The images each side needs for FID: more than the features' dimensions (a full-rank covariance)."""
    return dimensions + 1


def distance(cls: str, real: np.ndarray, generated: np.ndarray, *, seed: int = 0) -> Distance:
    """KID (mean and std over subsets) and, where there are enough images, FID between two sets of features.

    Args:
        cls: the class name (or "all").
        real, generated: ``(N, D)`` and ``(M, D)`` features.
        seed: seeds the subsets of KID.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n, m = len(real), len(generated)
    if n < 2 or m < 2:
        return Distance(cls, n, m, None, None, None, "KID needs 2 images or more on each side")
    dims = real.shape[1]
    size = min(KID_SUBSET_SIZE, n, m)
    with warnings.catch_warnings():  # "will save all extracted features in buffer": they are a sample here
        warnings.filterwarnings("ignore", message=".*save all extracted features")
        kid_metric = KernelInceptionDistance(feature=Precomputed(dims), subsets=KID_SUBSETS, subset_size=size)
    real_t, gen_t = torch.from_numpy(real).double(), torch.from_numpy(generated).double()
    kid_metric.update(real_t, real=True)
    kid_metric.update(gen_t, real=False)
    with torch.random.fork_rng(devices=[]):  # the subsets are drawn with torch's global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid_metric.compute()
    fid = None
    note = f"KID over {KID_SUBSETS} subsets of {size}"
    if min(n, m) >= fid_needs(dims):
        fid_metric = FrechetInceptionDistance(feature=Precomputed(dims))
        fid_metric.update(real_t, real=True)
        fid_metric.update(gen_t, real=False)
        fid = float(fid_metric.compute())
    else:
        note += f"; FID needs {fid_needs(dims)} images on each side ({dims} feature dimensions)"
    return Distance(cls, n, m, float(kid_mean), float(kid_std), fid, note)


def pooled(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], *, seed: int = 0) -> Distance:
    """The distance of all classes' features pooled together."""
    real = [r for _, r, _ in rows if len(r)]
    generated = [g for _, _, g in rows if len(g)]
    if not real or not generated:
        return Distance("all", 0, 0, None, None, None, "no features")
    return distance("all classes", np.concatenate(real), np.concatenate(generated), seed=seed)
