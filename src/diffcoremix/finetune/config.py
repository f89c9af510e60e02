"""Options of ``diffcoremix finetune``: adapting the generator to the user's data before generating.

Option names follow diffusers' own text-to-image training scripts (``train_text_to_image.py``,
``train_text_to_image_lora.py``): ``--resolution``, ``--max-steps`` (``--max_train_steps``), ``--batch-size``,
``--learning-rate``, ``--lr-scheduler``, ``--lr-warmup-steps``, ``--rank``, ``--snr-gamma``, ``--mixed-precision``,
``--gradient-checkpointing``, ``--checkpointing-steps``, ``--use-ema``, ``--random-flip``, ``--center-crop``.
Unset (null) options take a value that suits the method and the model (:func:`resolve`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from diffcoremix.config import NONE_IS_A_VALUE, check_types, require
from diffcoremix.errors import ConfigError
from diffcoremix.generate.config import NO_VAE
from diffcoremix.generate.presets import BUILTIN_PREFIX, GENERATOR_PRESETS

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
"""Learning-rate schedules, by diffusers' names (``diffusers.optimization.get_scheduler``)."""

LEARNABLE_TINY = "tiny"
"""The preset whose ``finetune`` starts from the learnable tiny architecture (random weights, VAE trained first)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """How the generator is fine-tuned (``diffcoremix finetune``)."""

    preset: str = "sd15"
    """The base model's preset (``diffcoremix presets``); tiny starts from the learnable tiny architecture
    (random weights: the VAE is trained first, then every UNet weight)."""
    model: str | None = None
    """Replaces the preset's model: a hub id, a local diffusers folder, or a .safetensors/.ckpt checkpoint."""
    revision: str | None = None
    """Hub revision of the model."""
    model_config: str | None = None
    """For a single-file checkpoint: a diffusers folder (or hub id) holding the matching component configs;
    without it diffusers fetches them from the hub, which an offline run cannot."""
    vae: str | None = field(default=None, metadata={NONE_IS_A_VALUE: True})
    """A replacement VAE, as generate's --vae: a hub id, a diffusers VAE folder or a .safetensors file; none keeps
    the model's own. Unset, a preset's VAE applies only to the preset's own hub model."""
    method: Literal["auto", "lora", "full"] = "auto"
    """lora (peft adapters on the UNet's attention projections), full (every UNet weight), or auto: full for the
    built-in tiny model, lora otherwise."""
    train_text_encoder: bool | None = None
    """Also train the (first) text encoder; null: on for full on a built-in model, whose random text encoder
    gives the class words no meaning to start from (not with lora, nor for SDXL's two encoders)."""
    rank: int = 4
    """LoRA rank (and alpha)."""
    max_steps: int = 1000
    """Optimizer steps of the UNet."""
    vae_steps: int | None = None
    """Steps that train the VAE first; null: 1500 for full on a built-in model (its VAE has random weights), else 0."""
    resolution: int | None = None
    """Training (and, by default, generation) side in pixels; null: 32 for tiny, else the preset's height."""
    batch_size: int = 16
    """Images per optimizer step."""
    learning_rate: float | None = None
    """Null: 1e-4 for lora, 1e-3 for full on tiny, 1e-5 for full on a pretrained model."""
    lr_scheduler: str = "constant_with_warmup"
    """constant, constant_with_warmup, linear or cosine (diffusers' names)."""
    lr_warmup_steps: int = 0
    """Linear warm-up steps of the learning rate."""
    adam_weight_decay: float = 1e-2
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 turns it off)."""
    snr_gamma: float | None = None
    """Min-SNR loss weighting gamma (5.0 is the usual value); null weighs every timestep equally."""
    prediction_type: Literal["epsilon", "v_prediction"] | None = None
    """The training target; null takes the scheduler's (what the model was trained for)."""
    use_ema: bool | None = None
    """Keep an exponential moving average of the trained weights and save it; null: on for full, off for lora."""
    ema_decay: float = 0.999
    """EMA decay (with warm-up, so early steps count)."""
    caption_dropout: float = 0.1
    """Share of images trained with an empty or negative prompt instead of theirs (classifier-free guidance
    learns its unconditional branch from them)."""
    random_flip: bool = True
    """Flip images horizontally at random."""
    center_crop: bool = False
    """Crop the centre rather than a random square."""
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    """Autocast on CUDA (auto: bf16 where supported, else fp16); float32 elsewhere."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less GPU memory, slower)."""
    checkpointing_steps: int | None = None
    """Save resumable state every N steps; null: about 20 checkpoints per run, at least every 50 steps."""
    pack: str = "generic"
    """Prompt pack whose templates and contexts make the captions (``diffcoremix packs``)."""
    domain: str | None = None
    """Domain word of the captions; null takes the pack's."""
    class_map: str | None = None
    """CSV or JSON file renaming classes in captions."""
    seed: int = 0
    """Seeds captions, crops, flips, timesteps and noise: the same seed gives the same weights on one device."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:N or mps."""
    workers: int = 0
    """Data-loading worker processes."""

    def __post_init__(self) -> None:
        check_types(self)
        known = GENERATOR_PRESETS.names()
        require(self.preset in known, "preset", self.preset, "one of " + ", ".join(known))
        require(self.model is None or bool(self.model.strip()), "model", self.model, "a non-empty id or path")
        for name in ("rank", "max_steps", "batch_size"):
            require(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        for name in ("vae_steps", "checkpointing_steps"):
            value = getattr(self, name)
            require(value is None or value >= (0 if name == "vae_steps" else 1), name, value, ">= 0 or null")
        res = self.resolution
        require(res is None or (res >= 16 and res % 8 == 0), "resolution", res, "a multiple of 8, >= 16")
        lr = self.learning_rate
        require(lr is None or lr > 0, "learning_rate", lr, "> 0 or null")
        require(
            self.lr_scheduler in LR_SCHEDULERS, "lr_scheduler", self.lr_scheduler, "one of " + ", ".join(LR_SCHEDULERS)
        )
        require(self.lr_warmup_steps >= 0, "lr_warmup_steps", self.lr_warmup_steps, ">= 0")
        require(0 <= self.caption_dropout < 1, "caption_dropout", self.caption_dropout, "in [0, 1)")
        require(0 < self.ema_decay < 1, "ema_decay", self.ema_decay, "in (0, 1)")
        require(self.snr_gamma is None or self.snr_gamma > 0, "snr_gamma", self.snr_gamma, "> 0 or null")
        require(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, ">= 0")
        require(self.workers >= 0, "workers", self.workers, ">= 0")
        require(self.seed >= 0, "seed", self.seed, ">= 0")

    @property
    def base_model(self) -> str | None:
        """The model fine-tuning starts from: ``model``, else the preset's (``builtin:...`` for built-ins)."""
        if self.model is not None:
            return self.model
        if self.preset == LEARNABLE_TINY and self.method != "lora":
            return BUILTIN_PREFIX + "tiny-sd-learnable"
        return GENERATOR_PRESETS.get(self.preset).model

    @property
    def builtin(self) -> bool:
        """Whether the base model is built in-process with random weights (so its VAE must be trained too)."""
        base = self.base_model
        return base is not None and base.startswith(BUILTIN_PREFIX)


def resolve(config: FinetuneConfig) -> FinetuneConfig:
    """The config with every null option given the value that suits its method and model."""
    method = config.method
    if method == "auto":
        method = "full" if config.preset == LEARNABLE_TINY and config.model is None else "lora"
    preset = GENERATOR_PRESETS.get(config.preset)
    resolution = config.resolution
    if resolution is None:
        resolution = 32 if config.preset == LEARNABLE_TINY and config.model is None else preset.height
    lr = config.learning_rate
    if lr is None:
        lr = 1e-4 if method == "lora" else (1e-3 if config.builtin else 1e-5)
    steps = config.max_steps
    full_builtin = method == "full" and config.builtin
    sdxl = preset.family == "sdxl" and config.model is None
    if sdxl and config.train_text_encoder:
        raise ConfigError("train_text_encoder", True, "off for SDXL models (two text encoders)")
    if method == "lora" and config.train_text_encoder:
        raise ConfigError("train_text_encoder", True, "off with --method lora (LoRA adapts only the UNet)")
    if config.builtin and (config.vae or NO_VAE).strip().lower() != NO_VAE:
        raise ConfigError("vae", config.vae, "null or none with a built-in model (it builds its own VAE)")
    if method == "lora" and config.vae_steps:
        raise ConfigError("vae_steps", config.vae_steps, "0 or null with --method lora (LoRA adapts only the UNet)")
    return dataclasses.replace(
        config,
        method=method,
        resolution=resolution,
        learning_rate=lr,
        vae_steps=config.vae_steps if config.vae_steps is not None else (1500 if full_builtin else 0),
        use_ema=config.use_ema if config.use_ema is not None else method == "full",
        train_text_encoder=(full_builtin and not sdxl)
        if config.train_text_encoder is None
        else config.train_text_encoder,
        checkpointing_steps=config.checkpointing_steps or max(50, -(-steps // 20)),
    )
