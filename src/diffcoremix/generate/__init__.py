"""Generation (METHOD.md §4-5): presets, the diffusers backend, and the resumable, sharded runner."""

from __future__ import annotations

from diffcoremix.errors import ModelLoadError
from diffcoremix.generate.backend import DiffusersGenerator, ImageGenerator, load_pipeline
from diffcoremix.generate.config import GenerateConfig, GenerationSettings, resolve_settings, resolve_shard
from diffcoremix.generate.presets import GENERATOR_PRESETS, GeneratorPreset
from diffcoremix.generate.runner import GenerationError, GenerationSummary, RunConflictError, generate
from diffcoremix.manifest import COLUMNS, read_manifest

__all__ = [
    "COLUMNS",
    "GENERATOR_PRESETS",
    "DiffusersGenerator",
    "GenerateConfig",
    "GenerationError",
    "GenerationSettings",
    "GenerationSummary",
    "GeneratorPreset",
    "ImageGenerator",
    "ModelLoadError",
    "RunConflictError",
    "generate",
    "load_pipeline",
    "read_manifest",
    "resolve_settings",
    "resolve_shard",
]
