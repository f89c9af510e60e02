"""Mixing real and generated images at pixel and patch level (METHOD.md §7), the baselines' mixers, and the
paired data they mix (each real image with its partner, epoch-aware for DataLoader workers)."""

from __future__ import annotations

from diffcoremix.mix.functional import (
    blend,
    cells_to_mask,
    patch_lambda,
    patch_mix,
    pixel_mix,
    sample_beta,
    sample_cells,
    select,
    upsample_cells,
)
from diffcoremix.mix.mixers import (
    MIXERS,
    BatchParams,
    CutMix,
    Mixer,
    MixOutput,
    MixUp,
    PairMix,
    PairParams,
    Substitute,
    cutmix_apply,
    cutmix_box,
    make_mixer,
)
from diffcoremix.mix.paired import (
    PARTNER_CLASS,
    PARTNER_NONE,
    PARTNER_OWN,
    PARTNER_REAL,
    EpochSampler,
    PairBatch,
    PairedDataset,
    collate_pairs,
    with_synthetic_samples,
)

__all__ = [
    "MIXERS",
    "PARTNER_CLASS",
    "PARTNER_NONE",
    "PARTNER_OWN",
    "PARTNER_REAL",
    "BatchParams",
    "CutMix",
    "EpochSampler",
    "MixOutput",
    "MixUp",
    "Mixer",
    "PairBatch",
    "PairMix",
    "PairParams",
    "PairedDataset",
    "Substitute",
    "blend",
    "cells_to_mask",
    "collate_pairs",
    "cutmix_apply",
    "cutmix_box",
    "make_mixer",
    "patch_lambda",
    "patch_mix",
    "pixel_mix",
    "sample_beta",
    "sample_cells",
    "select",
    "upsample_cells",
    "with_synthetic_samples",
]
