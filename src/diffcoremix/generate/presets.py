"""Generator presets (METHOD.md §5): a model and the sampling settings that suit it, by name.

A preset fills every generation setting that the user leaves unset. ``tiny`` and ``tiny-sdxl`` are built in
(no download); the others name Hugging Face hub models, which a user with network access gets on first use, or
which ``--model PATH`` replaces with local weights. ``paper`` is the reference code's CosXL recipe and needs
the CosXL checkpoint file, which is gated on the hub: pass it with ``--model PATH``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from diffcoremix.registry import Registry

Family = Literal["sd", "sdxl"]

BUILTIN_PREFIX = "builtin:"
"""Model ids of the in-process tiny pipelines: ``builtin:tiny-sd``, ``builtin:tiny-sdxl``."""


@dataclass(frozen=True)
class GeneratorPreset:
    """A named model and its sampling defaults."""

    name: str
    description: str
    model: str | None
    """Hub id, ``builtin:<name>``, or None when the user must supply ``--model PATH``."""
    family: Family
    """Pipeline family, used for single-file checkpoints (which carry no pipeline class)."""
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    scheduler: str | None = None
    """A diffusers scheduler class name; None keeps the model's own."""
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    vae: str | None = None
    """A replacement VAE (hub id), e.g. the fp16-safe SDXL VAE: used over the preset's own ``model`` only, never over
    a ``--model`` the user gives (:func:`diffcoremix.generate.config.resolve_vae`)."""
    edit_model: str | None = None
    """The InstructPix2Pix model of ``--counterpart edit`` when no ``--model`` is given (None: the preset has none)."""


GENERATOR_PRESETS: Registry[GeneratorPreset] = Registry("generator preset")


def _add(preset: GeneratorPreset) -> None:
    GENERATOR_PRESETS.add(preset.name, preset)


_add(
    GeneratorPreset(
        "tiny",
        "SD 1.x pipeline classes at tiny size with seeded random weights; offline, seconds on CPU (tests, demos)",
        "builtin:tiny-sd",
        "sd",
        num_inference_steps=4,
        guidance_scale=5.0,
        height=64,
        width=64,
        edit_model="builtin:tiny-ip2p",
    )
)
_add(
    GeneratorPreset(
        "tiny-sdxl",
        "SDXL pipeline classes (two text encoders) at tiny size with seeded random weights; offline",
        "builtin:tiny-sdxl",
        "sdxl",
        num_inference_steps=4,
        guidance_scale=5.0,
        height=64,
        width=64,
    )
)
_add(
    GeneratorPreset(
        "sd15",
        "Stable Diffusion 1.5 at 512 px, DPM-Solver++ 25 steps",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "sd",
        num_inference_steps=25,
        guidance_scale=7.5,
        height=512,
        width=512,
        scheduler="DPMSolverMultistepScheduler",
        edit_model="timbrooks/instruct-pix2pix",
    )
)
_add(
    GeneratorPreset(
        "sd21",
        "Stable Diffusion 2.1 base at 512 px, DPM-Solver++ 25 steps",
        "stabilityai/stable-diffusion-2-1-base",
        "sd",
        num_inference_steps=25,
        guidance_scale=7.5,
        height=512,
        width=512,
        scheduler="DPMSolverMultistepScheduler",
    )
)
_add(
    GeneratorPreset(
        "sdxl",
        "Stable Diffusion XL base 1.0 at 1024 px, DPM-Solver++ 30 steps, fp16-safe VAE (over the hub model)",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "sdxl",
        num_inference_steps=30,
        guidance_scale=7.0,
        height=1024,
        width=1024,
        scheduler="DPMSolverMultistepScheduler",
        vae="madebyollin/sdxl-vae-fp16-fix",
    )
)
_add(
    GeneratorPreset(
        "sdxl-turbo",
        "SDXL-Turbo at 512 px in 4 steps (fast; guidance 0 means the negative prompt has no effect)",
        "stabilityai/sdxl-turbo",
        "sdxl",
        num_inference_steps=4,
        guidance_scale=0.0,
        height=512,
        width=512,
        scheduler="EulerAncestralDiscreteScheduler",
        scheduler_kwargs={"timestep_spacing": "trailing"},
    )
)
_add(
    GeneratorPreset(
        "paper",
        "The reference code's CosXL recipe (EDM Euler, v-prediction, guidance 12, 50 steps, 512 px); "
        "needs --model PATH to cosxl.safetensors (the reference code's VAE: --vae madebyollin/sdxl-vae-fp16-fix)",
        None,
        "sdxl",
        num_inference_steps=50,
        guidance_scale=12.0,
        height=512,
        width=512,
        scheduler="EDMEulerScheduler",
        scheduler_kwargs={
            "sigma_min": 0.002,
            "sigma_max": 120.0,
            "sigma_data": 1.0,
            "prediction_type": "v_prediction",
            "sigma_schedule": "exponential",
        },
    )
)
_add(
    GeneratorPreset(
        "sd15-random",
        "The SD 1.5 architecture at full size with random weights, built in-process (speed benchmarks only)",
        "builtin:sd15-random",
        "sd",
        num_inference_steps=25,
        guidance_scale=7.5,
        height=512,
        width=512,
    )
)
_add(
    GeneratorPreset(
        "sdxl-random",
        "The SDXL base architecture at full size with random weights, built in-process (speed benchmarks only)",
        "builtin:sdxl-random",
        "sdxl",
        num_inference_steps=30,
        guidance_scale=7.0,
        height=1024,
        width=1024,
    )
)
