"""Options of the generation stage, and their resolution against a preset into concrete settings."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from diffcoremix.classifiers import MODEL_FILE
from diffcoremix.config import NONE_IS_A_VALUE, check_types, require
from diffcoremix.devices import check_compiler, resolve_device
from diffcoremix.errors import ConfigError
from diffcoremix.finetuned import read_finetune_info
from diffcoremix.generate.presets import BUILTIN_PREFIX, GENERATOR_PRESETS, Family, GeneratorPreset
from diffcoremix.generate.safety import SafetyChecker
from diffcoremix.identities import local_weights_sha256, weights_sha256
from diffcoremix.modes import COUNTERPART_MODES, CounterpartSettings

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
NO_VAE = "none"
"""``--vae none``: the model's own VAE, whatever the preset says."""


@dataclass(frozen=True)
class GenerateConfig:
    """Options of ``diffcoremix generate``; unset (null) sampling options take the preset's value."""

    preset: str = "sd15"
    """Generator preset (``diffcoremix presets`` describes each): tiny, tiny-sdxl (built in, offline), sd15, sd21,
    sdxl, sdxl-turbo (hub models), paper (needs --model PATH), sd15-random, sdxl-random (full-size random weights,
    for benchmarks)."""
    model: str | None = None
    """Replaces the preset's model: a hub id, a local diffusers folder, or a .safetensors/.ckpt checkpoint."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the model."""
    lora: str | None = None
    """LoRA weights applied over the model: a folder made by ``diffcoremix finetune --method lora`` (its base
    model is then the default ``--model``), or any diffusers LoRA folder or ``.safetensors`` file."""
    model_config: str | None = None
    """For a single-file checkpoint: a diffusers folder (or hub id) holding the matching component configs;
    without it diffusers fetches them from the hub, which an offline run cannot."""
    vae: str | None = field(default=None, metadata={NONE_IS_A_VALUE: True})
    """A replacement VAE: a hub id, a diffusers AutoencoderKL folder or a single .safetensors file; none keeps the
    model's own. Unset, a preset's VAE (sdxl's fp16-safe one) applies only to the preset's own hub model: a local
    --model never fetches anything."""
    safety_checker: SafetyChecker | None = None
    """The model's safety checker: null runs the one the model ships (sd15 ships one); on requires one; off loads the
    model without it. A flagged image is recorded as flagged, never kept (augment --retries tries new seeds)."""
    scheduler: str | None = None
    """A diffusers scheduler class name (e.g. EulerDiscreteScheduler); null keeps the preset's."""
    scheduler_kwargs: dict[str, Any] | None = None
    """Keyword arguments of the scheduler (a JSON object on the command line); null keeps the preset's."""
    num_inference_steps: int | None = None
    """Denoising steps."""
    guidance_scale: float | None = None
    """Classifier-free guidance scale; at 1 or below the negative prompt has no effect."""
    height: int | None = None
    """Image height in pixels (a multiple of 8)."""
    width: int | None = None
    """Image width in pixels (a multiple of 8)."""
    batch_size: int = 4
    """Images per pipeline call; halved automatically on CUDA out-of-memory."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:N or mps."""
    dtype: Dtype = "auto"
    """Weights' precision; auto is float16 on CUDA and float32 elsewhere."""
    compile: bool = False
    """torch.compile the UNet (faster after a warm-up on CUDA)."""
    cpu_offload: bool = False
    """Keep idle sub-models on the CPU (less GPU memory, slower; needs accelerate)."""
    counterpart: str = "text"
    """How a counterpart relates to its source (``diffcoremix presets`` lists the modes): text (text-to-image, the
    paper's method), img2img (the source noised to --strength and denoised with the prompt), inpaint (the subject
    kept, the background redrawn: --masks or --mask-from), edit (an InstructPix2Pix model edits the source with an
    instruction: the diffusemix pack's), cross-class (img2img with another class's prompt; soft label)."""
    strength: tuple[float, ...] = ()
    """For img2img, inpaint and cross-class: how far the source is noised, in (0, 1]; several values are drawn from
    per candidate (seeded), as DA-Fusion mixes them. Empty: the mode's default (img2img 0.5, inpaint 1.0,
    cross-class 0.3 0.5 0.7 0.9, Diff-Mix's)."""
    image_guidance_scale: float | None = None
    """For edit: how closely the edit follows the source image (InstructPix2Pix's; null: 1.5)."""
    soft_label_gamma: float = 0.5
    """For cross-class: the label is (1 - s**g) source class + s**g prompt class (Diff-Mix's; s the strength)."""
    masks: str | None = None
    """For inpaint: a folder of subject masks (white = subject, kept), at the same relative paths as DATA (a .png in
    place of a photo's own extension is found too)."""
    mask_from: str | None = None
    """For inpaint: a train run whose classifier's Grad-CAM, thresholded, gives each source's subject mask."""
    mask_threshold: float = 0.5
    """For --mask-from: the subject is where the Grad-CAM map is at least this share of its maximum, in (0, 1)."""
    recipe: str | None = None
    """A peer's recipe (``diffcoremix presets`` lists them: diffusemix, diff-mix, da-fusion, real-guidance,
    diffcoremix, diffcoremix+) whose generation, prompt and filter settings are the defaults under --config and the
    flags; recorded in OUT/config.yaml, so that ``compare --recipes`` knows the set. Set in Python, it is a label only:
    :meth:`diffcoremix.recipes.Recipe.layer` gives the settings."""
    on_error: Literal["record", "stop"] = "record"
    """A failing candidate is recorded with its error and the run goes on (record), or the run stops (stop)."""
    rank: int | None = None
    """This shard's index; null reads RANK / SLURM_PROCID from the environment, else 0."""
    world_size: int | None = None
    """Number of shards; null reads WORLD_SIZE / SLURM_NTASKS from the environment, else 1."""

    def __post_init__(self) -> None:
        check_types(self)
        known = GENERATOR_PRESETS.names()
        require(self.preset in known, "preset", self.preset, "one of " + ", ".join(known))
        require(self.model is None or bool(self.model.strip()), "model", self.model, "a non-empty id or path")
        require(self.lora is None or bool(self.lora.strip()), "lora", self.lora, "a non-empty path")
        for name in ("num_inference_steps", "batch_size"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, value, ">= 1")
        require(self.guidance_scale is None or self.guidance_scale >= 0, "guidance_scale", self.guidance_scale, ">= 0")
        for name in ("height", "width"):
            value = getattr(self, name)
            require(value is None or (value >= 8 and value % 8 == 0), name, value, "a multiple of 8, >= 8")
        require(self.world_size is None or self.world_size >= 1, "world_size", self.world_size, ">= 1")
        require(self.rank is None or self.rank >= 0, "rank", self.rank, ">= 0")
        if self.rank is not None and self.world_size is not None:
            require(self.rank < self.world_size, "rank", self.rank, f"< world_size ({self.world_size})")
        self._check_counterpart()

    def _check_counterpart(self) -> None:
        modes = COUNTERPART_MODES.names()
        require(self.counterpart in modes, "counterpart", self.counterpart, "one of " + ", ".join(modes))
        mode = COUNTERPART_MODES.get(self.counterpart)
        if self.strength:
            require(bool(mode.default_strength), "strength", list(self.strength),
                    f"empty with --counterpart {self.counterpart} (it has no strength)")  # fmt: skip
        for value in self.strength:
            require(0.0 < value <= 1.0, "strength", list(self.strength), "values in (0, 1]")
        require(self.soft_label_gamma > 0, "soft_label_gamma", self.soft_label_gamma, "> 0")
        require(0.0 < self.mask_threshold < 1.0, "mask_threshold", self.mask_threshold, "in (0, 1)")
        ig = self.image_guidance_scale
        require(ig is None or ig >= 0, "image_guidance_scale", ig, ">= 0")
        if mode.uses_mask:
            require((self.masks is None) != (self.mask_from is None), "masks", self.masks,
                    "a folder (or --mask-from RUN instead) with --counterpart inpaint: one of the two")  # fmt: skip
        else:
            for name in ("masks", "mask_from"):
                require(getattr(self, name) is None, name, getattr(self, name), "null unless --counterpart inpaint")


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that determines the generated pixels (with the seeds): the preset merged with overrides."""

    preset: str
    model: str | None
    revision: str | None
    vae: str | None
    family: Family
    scheduler: str | None
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    model_config: str | None = None
    num_inference_steps: int = 1
    guidance_scale: float = 1.0
    height: int = 64
    width: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    lora: str | None = None
    finetune_sha256: str | None = None
    """The weights digest of a fine-tuned model or LoRA (``finetune.json``): retrained weights change it."""
    weights_sha256: dict[str, str] = field(default_factory=dict)
    """The digest of the weights of each local model, LoRA and VAE (``{"model": ..., "lora": ...}``, see
    :func:`~diffcoremix.identities.weights_sha256`): a path is named by its content, so changed weights are other
    settings. A hub model is named by its id and revision instead."""
    safety_checker: SafetyChecker | None = None
    """``--safety-checker``: null runs the model's own checker, if it ships one (what it flags is never kept)."""
    counterpart: CounterpartSettings | None = None
    """The counterpart mode and its settings; None for text-to-image (so a text run's digest is what it was before
    modes existed)."""

    @property
    def mode(self) -> str:
        return self.counterpart.mode if self.counterpart is not None else "text"

    @property
    def image_guidance_scale(self) -> float | None:
        return self.counterpart.image_guidance_scale if self.counterpart is not None else None


def resolve_counterpart(config: GenerateConfig) -> CounterpartSettings | None:
    """The counterpart settings of ``config`` (None for text); masks are named by where they come from."""
    if config.counterpart == "text":
        return None
    mode = COUNTERPART_MODES.get(config.counterpart)
    masks = None
    if config.masks is not None:
        masks = f"masks:{Path(config.masks).expanduser().resolve()}"
    elif config.mask_from is not None:  # named by its weights too: a retrained run's masks are other settings
        run = Path(config.mask_from).expanduser().resolve()
        weights = weights_sha256(run / MODEL_FILE) if (run / MODEL_FILE).is_file() else "unfinished"
        masks = f"gradcam:{run}@{weights}:{config.mask_threshold!r}"
    return CounterpartSettings(
        mode=mode.name,
        strength=tuple(config.strength) or mode.default_strength,
        image_guidance_scale=(config.image_guidance_scale if config.image_guidance_scale is not None else 1.5)
        if mode.name == "edit"
        else None,
        soft_label_gamma=config.soft_label_gamma if mode.cross_class else None,
        masks=masks,
    )


def resolve_settings(config: GenerateConfig) -> GenerationSettings:
    """Fill the config's unset options from its preset, resolve ``auto`` device and dtype, and name each local
    model, LoRA and VAE by the digest of its weights.

    Raises:
        ModelLoadError: local weights cannot be read.
    """
    settings = _resolve_options(config)
    _check_steps(settings)
    return dataclasses.replace(settings, weights_sha256=local_weights(settings))


def _check_steps(settings: GenerationSettings) -> None:
    """A mode with a strength denoises int(steps x strength) of the steps: at least one for every strength."""
    strengths = settings.counterpart.strength if settings.counterpart is not None else ()
    if strengths and int(settings.num_inference_steps * min(strengths)) < 1:
        least = math.ceil(1 / min(strengths))
        raise ConfigError(
            "num_inference_steps",
            settings.num_inference_steps,
            f">= {least} with --strength "
            f"{min(strengths)} (a source is denoised for int(steps x strength) steps, at least one)",
        )


def local_weights(settings: GenerationSettings) -> dict[str, str]:
    """``{role: digest}`` of the settings' local model, LoRA and VAE (a hub id or built-in model has none)."""
    model = None if settings.model is None or settings.model.startswith(BUILTIN_PREFIX) else settings.model
    named = {"model": model, "lora": settings.lora, "vae": settings.vae}
    return {role: digest for role, name in named.items() if (digest := local_weights_sha256(name)) is not None}


def _resolve_options(config: GenerateConfig) -> GenerationSettings:
    """:func:`resolve_settings` but for the weights' digests."""
    preset = GENERATOR_PRESETS.get(config.preset)
    device = resolve_device(config.device)
    if config.compile:
        check_compiler(device, "compile")
    dtype = config.dtype
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    require(dtype != "float16" or not device.startswith("cpu"), "dtype", dtype, "float32 or bfloat16 on a CPU device")
    scheduler = config.scheduler if config.scheduler is not None else preset.scheduler
    if config.scheduler_kwargs is not None:
        scheduler_kwargs = dict(config.scheduler_kwargs)
    else:
        scheduler_kwargs = dict(preset.scheduler_kwargs) if scheduler == preset.scheduler else {}

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    model, model_config, given_vae = config.model, config.model_config, config.vae
    lora_info = read_finetune_info(config.lora) if config.lora is not None else None
    if model is None and lora_info is not None:  # the LoRA's base, loaded as finetune loaded it
        model = lora_info.get("base_model")
        model_config = pick(model_config, lora_info.get("base_model_config"))
        given_vae = pick(given_vae, lora_info.get("base_vae"))
    model_info = read_finetune_info(model) if model is not None and not model.startswith(BUILTIN_PREFIX) else None
    tuned = model_info or lora_info
    sampling: dict[str, Any] = dict(tuned.get("sampling") or {}) if tuned else {}
    if tuned is not None and config.scheduler is None:  # a fine-tuned model keeps the schedule it was made with
        scheduler = sampling.get("scheduler")
        scheduler_kwargs = (
            dict(sampling.get("scheduler_kwargs") or {}) if config.scheduler_kwargs is None else scheduler_kwargs
        )

    def default(name: str) -> Any:
        return sampling.get(name, getattr(preset, name))

    edit = config.counterpart == "edit"
    if edit and model is None and preset.edit_model is None:
        raise ConfigError(
            "model",
            None,
            f"an InstructPix2Pix model for --counterpart edit (preset {preset.name!r} "
            "names none: --preset sd15 uses timbrooks/instruct-pix2pix, --preset tiny a tiny one)",
        )
    model = pick(model, preset.edit_model if edit else preset.model)
    vae = resolve_vae(given_vae, preset, model)
    if vae is not None and model is not None and model.startswith(BUILTIN_PREFIX):
        raise ConfigError("vae", given_vae, f"null with the built-in model {model} (it builds its own VAE)")
    digests = [info.get("weights_sha256") for info in (model_info, lora_info) if info is not None]
    return GenerationSettings(
        preset=preset.name,
        model=model,
        revision=config.revision,
        model_config=model_config,
        vae=vae,
        family=sampling.get("family", preset.family),
        scheduler=scheduler,
        scheduler_kwargs=scheduler_kwargs,
        num_inference_steps=pick(config.num_inference_steps, default("num_inference_steps")),
        guidance_scale=float(pick(config.guidance_scale, default("guidance_scale"))),
        height=pick(config.height, default("height")),
        width=pick(config.width, default("width")),
        dtype=dtype,
        device=device,
        lora=config.lora,
        finetune_sha256=":".join(str(d) for d in digests) if digests else None,
        safety_checker=config.safety_checker,
        counterpart=resolve_counterpart(config),
    )


def resolve_vae(given: str | None, preset: GeneratorPreset, model: str | None) -> str | None:
    """The VAE that replaces the model's: the user's (``none``: the model's own), else the preset's, but only over
    the preset's own hub model. A preset's extra components belong with its model: over a local ``--model`` they
    would replace the model's own VAE online and blame the local folder offline."""
    if given is not None:
        return None if given.strip().lower() == NO_VAE else given
    return preset.vae if model == preset.model else None


def resolve_shard(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's (rank, world size): explicit values, else torchrun's or Slurm's variables, else (0, 1)."""

    def from_env(*names: str) -> int | None:
        for name in names:
            value = os.environ.get(name)
            if value is not None and value.strip().isdigit():
                return int(value)
        return None

    world = world_size if world_size is not None else from_env("WORLD_SIZE", "SLURM_NTASKS")
    index = rank if rank is not None else from_env("RANK", "SLURM_PROCID")
    world, index = world or 1, index or 0
    require(world >= 1, "world_size", world, ">= 1")
    require(0 <= index < world, "rank", index, f"in [0, {world}) for world_size {world}")
    return index, world
