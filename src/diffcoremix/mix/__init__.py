"""Mixing real and generated images at pixel and patch level (METHOD.md §7), and the baselines' mixers."""

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
    CutMix,
    MixOutput,
    MixUp,
    PairMix,
    PairParams,
    Substitute,
    cutmix_apply,
    cutmix_box,
    make_mixer,
)

__all__ = [
    "MIXERS",
    "CutMix",
    "MixOutput",
    "MixUp",
    "PairMix",
    "PairParams",
    "Substitute",
    "blend",
    "cells_to_mask",
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
]
