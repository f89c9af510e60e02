"""diffcoremix: context-guided, filtered diffusion augmentation for image classifiers (DiffCoRe-Mix).

The stages live in packages named after the method's vocabulary: :mod:`diffcoremix.data` (reading and
scanning class-folder datasets), :mod:`diffcoremix.prompts` (contextual and negative prompts),
:mod:`diffcoremix.generate`, :mod:`diffcoremix.filter`, :mod:`diffcoremix.mix`, with :mod:`diffcoremix.manifest`
(the output folder) and :mod:`diffcoremix.embedders` below them. The most used names are re-exported here, but
never under a module's name: ``dcm.generate`` is the package, and its function is ``dcm.generate.generate``.

Example:
    >>> import diffcoremix as dcm
    >>> report = dcm.scan_dataset("../shared/data/cub200_25")  # doctest: +SKIP
    >>> plan = dcm.build_prompts("../shared/data/cub200_25", dcm.PromptsConfig(pack="birds"))  # doctest: +SKIP
    >>> plan.write_jsonl("prompts.jsonl")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from diffcoremix._version import __version__
from diffcoremix.counterparts import Candidate, plan_candidates
from diffcoremix.data import (
    DataConfig,
    DatasetListing,
    ScanConfig,
    ScanReport,
    list_images,
    load_class_map,
    open_image,
    prompt_name,
    scan_dataset,
)
from diffcoremix.data.sample import make_sample_dataset
from diffcoremix.errors import (
    ClassMapError,
    ConfigError,
    DatasetError,
    DeviceError,
    DiffCoReMixError,
    ImageReadError,
    ModelLoadError,
    PackError,
    ToolchainError,
    UnknownNameError,
)
from diffcoremix.filter.config import FilterConfig
from diffcoremix.generate import GenerateConfig, GenerationSummary  # binds dcm.generate: the package
from diffcoremix.manifest import FolderBusyError, OutputFolderError, read_manifest
from diffcoremix.prompts import PromptPlan, PromptsConfig, build_prompts, list_packs, load_pack
from diffcoremix.registry import Registry
from diffcoremix.seeds import derive_seed

__all__ = [
    "AugmentResult",
    "Candidate",
    "ClassFolderDataset",
    "ClassMapError",
    "ConfigError",
    "DataConfig",
    "DatasetError",
    "DatasetListing",
    "DeviceError",
    "DiffCoReMixError",
    "FilterConfig",
    "FilterReport",
    "FolderBusyError",
    "GenerateConfig",
    "GenerationSummary",
    "ImageReadError",
    "ModelLoadError",
    "OutputFolderError",
    "PackError",
    "PromptPlan",
    "PromptsConfig",
    "Registry",
    "ScanConfig",
    "ScanReport",
    "ToolchainError",
    "UnknownNameError",
    "__version__",
    "augment",
    "build_prompts",
    "derive_seed",
    "filter_run",
    "list_images",
    "list_packs",
    "load_class_map",
    "load_pack",
    "make_sample_dataset",
    "open_image",
    "plan_candidates",
    "prompt_name",
    "read_manifest",
    "scan_dataset",
]


_LAZY = {
    "ClassFolderDataset": "diffcoremix.data.dataset",
    "AugmentResult": "diffcoremix.augmentation",
    "augment": "diffcoremix.augmentation",
    "FilterReport": "diffcoremix.filter.runner",
    "filter_run": "diffcoremix.filter.runner",
}


def __getattr__(name: str) -> Any:
    # Names whose modules import torch are imported on first use, so that the command line starts quickly.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)  # no module may share a lazy name (a test)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
