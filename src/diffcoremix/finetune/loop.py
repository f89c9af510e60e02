"""Fine-tuning a diffusers text-to-image model on a class-folder dataset (``diffcoremix finetune``).

The recipe is diffusers' own text-to-image training recipe: images encoded by the VAE, noise added at a random
timestep by the model's scheduler, the UNet trained to predict the noise (or the velocity, as the scheduler
says), optional min-SNR weighting, AdamW, a diffusers learning-rate schedule, autocast on CUDA. ``lora`` adds
peft LoRA adapters to the UNet's attention projections and trains only those; ``full`` trains every UNet weight.
A built-in model has random weights, so its VAE is trained first (``vae_steps``): this is what lets the tiny
model learn a small dataset on a CPU. Captions are the prompt pack's prompts for each image's class, composed as
``diffcoremix prompts`` does; a share of them is replaced by the empty prompt or the image's negative prompt, so
that classifier-free guidance (with the negative prompt) has an unconditional branch to work with.

MODEL's files::

    MODEL/run.json, settings.json, config.yaml, layout.json   ownership, what determines the weights, options
    MODEL/model_index.json, unet/, vae/, text_encoder/, ...   the pipeline (full), loadable by diffusers
    MODEL/pytorch_lora_weights.safetensors                    the adapters (lora), over the base model
    MODEL/finetune.json                                       provenance and sampling settings (written last)
    MODEL/loss.jsonl, MODEL/loss.png                          the loss of every step, and its curve
    MODEL/checkpoints/state.pt                                resumable state (removed when the run finishes)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import DataLoader

from diffcoremix import faults
from diffcoremix.atomic import atomic_write_bytes, atomic_write_text, ensure_folder
from diffcoremix.checkpoints import load_torch_file
from diffcoremix.config import to_plain, write_resolved_config
from diffcoremix.data.checks import ScanConfig
from diffcoremix.data.sources import DataConfig, usable_sources
from diffcoremix.devices import resolve_device
from diffcoremix.digests import file_sha256
from diffcoremix.errors import ConfigError, DatasetError
from diffcoremix.finetune.config import FinetuneConfig, resolve
from diffcoremix.finetune.data import Caption, SquareImages, StepBatches, step_generator
from diffcoremix.finetuned import FINETUNE_FILE, LORA_WEIGHTS
from diffcoremix.generate.config import NO_VAE, GenerateConfig, resolve_settings
from diffcoremix.generate.presets import BUILTIN_PREFIX, GENERATOR_PRESETS
from diffcoremix.manifest.layout import (
    CONFIG_FILE,
    SETTINGS_FILE,
    Layout,
    OutputFolder,
    OutputFolderError,
    changed_message,
)
from diffcoremix.manifest.ownership import check_settings, open_output
from diffcoremix.prompts.builder import PromptsConfig, build_prompts
from diffcoremix.scratch import scratch_for

logger = logging.getLogger(__name__)

LOSS_FILE = "loss.jsonl"
LOSS_PLOT = "loss.png"
CHECKPOINT_FILE = "checkpoints/state.pt"
MODEL_FILES = frozenset({SETTINGS_FILE, CONFIG_FILE, LOSS_FILE, LOSS_PLOT, CHECKPOINT_FILE, FINETUNE_FILE})
"""MODEL's fixed-name files (the saved weights are added to the layout record when they are written)."""
SETTINGS_VERSION = 1
NOT_WEIGHTS = frozenset({"device", "workers", "checkpointing_steps"})
"""Options that do not change the trained weights (a resumed run may change them)."""
VAE_LR = 2e-3
TEXT_CACHE_SIZE = 8192
"""Prompts whose text-encoder output is kept in memory (the captions repeat every epoch)."""
TINY_SAMPLING = {"num_inference_steps": 25, "guidance_scale": 7.5}
"""Sampling settings that suit the learnable tiny model (DDIM)."""


@dataclass(frozen=True)
class FinetuneResult:
    """A finished fine-tuning run."""

    model: Path
    """The MODEL folder (``generate --model`` for full, ``generate --lora`` for lora)."""
    info: dict[str, Any]
    """``finetune.json``: provenance, loss, sampling settings."""


def finetune(
    data: str | Path,
    output: str | Path,
    config: FinetuneConfig | None = None,
    *,
    data_config: DataConfig | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune the generator of ``config`` on the class folders of ``data``, into the folder ``output``.

    Resumable: a rerun with the same settings continues from the last checkpoint (bit-identical to an
    uninterrupted run on the same device), or returns at once when the run has finished.

    Raises:
        DatasetError, ConfigError, OutputFolderError, ModelLoadError, UnknownNameError: bad input (one line).
    """
    config = resolve(config or FinetuneConfig())
    data_config = data_config or DataConfig()
    data, out = Path(data), Path(output)
    device = resolve_device(config.device)
    with open_output(out, data=data, overwrite=overwrite, fixed=MODEL_FILES) as folder:
        return _finetune_in(folder, data, config, data_config, device, progress)


@dataclass
class _Models:
    pipe: Any
    unet: Any
    vae: Any
    sdxl: bool
    trainable: list[torch.nn.Parameter]


def _load_base(config: FinetuneConfig, device: str) -> tuple[Any, dict[str, Any]]:
    """The base pipeline in float32 and its provenance."""
    from diffcoremix.generate.backend import load_pipeline

    base = config.base_model
    if base == BUILTIN_PREFIX + "tiny-sd-learnable":
        from diffcoremix.generate.tiny import tiny_learnable_sd_pipeline

        assert config.resolution is not None
        pipe = tiny_learnable_sd_pipeline(config.resolution, seed=config.seed)
        return pipe, {"model": base, "model_revision": f"random-weights-seed-{config.seed}", "model_sha256": None}
    settings = resolve_settings(
        GenerateConfig(
            preset=config.preset,
            model=config.model,
            revision=config.revision,
            model_config=config.model_config,
            vae=config.vae,
            device="cpu",
            dtype="float32",
        )
    )
    settings = dataclasses.replace(settings, scheduler=None)  # train with the model's own noise schedule
    pipe, provenance = load_pipeline(settings)
    # what generate --lora needs to load the same base (a single file's configs, the VAE it was trained over)
    provenance = {**provenance, "model_config": settings.model_config, "vae": settings.vae or NO_VAE}
    return pipe, provenance


def _prepare_models(pipe: Any, config: FinetuneConfig, device: str) -> _Models:
    unet, vae = pipe.unet, pipe.vae
    for module in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None), vae, unet):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    if config.method == "lora":
        from peft import LoraConfig

        unet.add_adapter(
            LoraConfig(
                r=config.rank,
                lora_alpha=config.rank,
                init_lora_weights="gaussian",
                target_modules=["to_k", "to_q", "to_v", "to_out.0"],
            )
        )
    else:
        unet.requires_grad_(True)
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    if config.train_text_encoder:
        if sdxl:
            raise ConfigError("train_text_encoder", True, "off for SDXL models (two text encoders)")
        pipe.text_encoder.requires_grad_(True)
        pipe.text_encoder.train()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    pipe.to(device)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    if config.train_text_encoder:
        trainable += [p for p in pipe.text_encoder.parameters() if p.requires_grad]
    return _Models(pipe, unet, vae, sdxl, trainable)


def _captions(listing: Any, config: FinetuneConfig) -> list[Caption]:
    """One caption per image: the pack's prompt for its class (a context from the bank), and its negative."""
    plan = build_prompts(
        listing,
        PromptsConfig(pack=config.pack, domain=config.domain, class_map=config.class_map, seed=config.seed),
    )
    by_source = {record.source: record for record in plan}
    plan.warn_conflicts()
    return [Caption(by_source[item.relpath].prompt, by_source[item.relpath].negative_prompt) for item in listing.items]


def _data_digest(root: Path, listing: Any) -> str:
    """A digest of the training data: every image's path, label and content."""
    h = hashlib.sha256()
    for item in listing.items:
        h.update(f"{item.relpath}\t{item.label}\t{file_sha256(root / item.relpath)}\n".encode())
    return h.hexdigest()


def _finetune_in(
    folder: OutputFolder, data: Path, config: FinetuneConfig, data_config: DataConfig, device: str, progress: bool
) -> FinetuneResult:
    out = folder.path
    sources = usable_sources(data, data_config, progress=progress, scan=ScanConfig(min_side=1))
    listing = sources.listing
    if len(listing.items) == 0:
        raise DatasetError(f"{data} has no usable images to fine-tune on")
    captions = _captions(listing, config)
    pipe, provenance = _load_base(config, device)  # before claiming MODEL: a model that cannot load leaves it as found
    data_sha256 = _data_digest(listing.root, listing)
    settings = {
        "version": SETTINGS_VERSION,
        "finetune": {k: v for k, v in to_plain(config).items() if k not in NOT_WEIGHTS},
        "data_sha256": data_sha256,
        "base": provenance,
    }
    folder.write_run_record(data, command="finetune")
    check_settings(folder, settings, "a fine-tuning run")
    write_resolved_config(out / CONFIG_FILE, {"finetune": config, "data": data_config}, data=data)
    if (out / FINETUNE_FILE).exists():
        logger.info("%s has finished already", out)
        return FinetuneResult(out, json.loads((out / FINETUNE_FILE).read_text(encoding="utf-8")))
    Layout(out, damaged="reset").declare(MODEL_FILES)

    models = _prepare_models(pipe, config, device)
    trainer = _Trainer(models, config, device, [listing.root / item.relpath for item in listing.items], captions)
    state = _read_checkpoint(out / CHECKPOINT_FILE)
    if state is not None:
        trainer.load_state(state)
        logger.info("%s: resuming at step %d of %d", out, trainer.step, trainer.total)
    started = time.perf_counter()
    trainer.run(out, progress)
    seconds = time.perf_counter() - started

    saved = _save_model(out, models, config, trainer)
    losses = trainer.losses
    loss_text = _write_losses(out, losses)
    atomic_write_bytes(out / LOSS_PLOT, _loss_plot(losses))
    unet_losses = [line["loss"] for line in losses if line["stage"] == "unet"]
    preset = GENERATOR_PRESETS.get(config.preset)
    assert config.resolution is not None
    sampling: dict[str, Any] = {
        "family": "sdxl" if models.sdxl else "sd",
        "scheduler": None if config.builtin else preset.scheduler,
        "scheduler_kwargs": {} if config.builtin else dict(preset.scheduler_kwargs),
        "num_inference_steps": TINY_SAMPLING["num_inference_steps"] if config.builtin else preset.num_inference_steps,
        "guidance_scale": TINY_SAMPLING["guidance_scale"] if config.builtin else preset.guidance_scale,
        "height": config.resolution,
        "width": config.resolution,
    }
    info = {
        "made_by": "diffcoremix",
        "format": 1,
        "method": config.method,
        "preset": config.preset,
        "base_model": provenance.get("model"),
        "base_revision": provenance.get("model_revision"),
        "base_sha256": provenance.get("model_sha256"),
        "base_model_config": provenance.get("model_config"),
        "base_vae": provenance.get("vae"),
        "lora": LORA_WEIGHTS if config.method == "lora" else None,
        "data": str(data.resolve()),
        "data_sha256": data_sha256,
        "images": len(listing.items),
        "classes": list(listing.classes),
        "skipped_images": len(sources.skipped),
        "pack": config.pack,
        "caption_example": captions[0].prompt,
        "steps": config.max_steps,
        "vae_steps": config.vae_steps,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "resolution": config.resolution,
        "seed": config.seed,
        "final_loss": sum(unet_losses[-50:]) / max(1, len(unet_losses[-50:])),
        "loss_sha256": hashlib.sha256(loss_text.encode()).hexdigest(),
        "weights_sha256": saved,
        "seconds": round(seconds, 1),
        "sampling": sampling,
        "config": to_plain(config),
    }
    atomic_write_text(out / FINETUNE_FILE, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    with contextlib.suppress(FileNotFoundError):
        (out / CHECKPOINT_FILE).unlink()
    with contextlib.suppress(OSError):
        (out / CHECKPOINT_FILE).parent.rmdir()
    return FinetuneResult(out, info)


class _Trainer:
    """The training state and the two stages (VAE, then UNet) as one sequence of global steps."""

    def __init__(
        self, models: _Models, config: FinetuneConfig, device: str, paths: Sequence[Path], captions: list[Caption]
    ) -> None:
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        self.m, self.config, self.device = models, config, device
        assert config.vae_steps is not None
        self.vae_steps, self.total = config.vae_steps, config.vae_steps + config.max_steps
        self.dataset = SquareImages(paths, config.resolution or 0, config.center_crop)
        self.captions = captions
        self.noise_scheduler = DDPMScheduler.from_config(models.pipe.scheduler.config)
        self.prediction_type = config.prediction_type or self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(
                "prediction_type", self.prediction_type, "epsilon or v_prediction (the model's scheduler)"
            )
        lr = config.learning_rate or 0.0
        self.optimizer = torch.optim.AdamW(models.trainable, lr=lr, weight_decay=config.adam_weight_decay)
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler, self.optimizer, num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=config.max_steps,
        )  # fmt: skip
        self.vae_optimizer: torch.optim.Optimizer | None = None
        self.vae_lr: Any = None
        if self.vae_steps:
            models.vae.requires_grad_(True)
            params = [p for p in models.vae.parameters() if p.requires_grad]
            self.vae_optimizer = torch.optim.AdamW(params, lr=VAE_LR, weight_decay=0.0)
            self.vae_lr = get_scheduler(
                "cosine", self.vae_optimizer, num_warmup_steps=max(1, self.vae_steps // 20),
                num_training_steps=self.vae_steps,
            )  # fmt: skip
        self.ema: Any = None
        if config.use_ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(models.trainable, decay=config.ema_decay, use_ema_warmup=True, power=3 / 4)
        self.step = 0
        self.vae_done = False
        """Whether the VAE stage has finished (its weights frozen, the latents' scaling factor set)."""
        self.losses: list[dict[str, Any]] = []
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        use_amp = device.startswith("cuda") and config.mixed_precision != "no"
        dtype = config.mixed_precision
        if dtype == "auto":
            dtype = "bf16" if use_amp and torch.cuda.is_bf16_supported() else "fp16"
        self.amp_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
        self.use_amp = use_amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and self.amp_dtype == torch.float16)

    # -- state ---------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        unet_state: dict[str, Any]
        if self.config.method == "lora":
            from peft.utils import get_peft_model_state_dict

            unet_state = get_peft_model_state_dict(self.m.unet)
        else:
            unet_state = self.m.unet.state_dict()
        return {
            "step": self.step,
            "vae_done": self.vae_done,
            "unet": unet_state,
            "vae": self.m.vae.state_dict() if self.vae_steps else None,
            "text_encoder": self.m.pipe.text_encoder.state_dict() if self.config.train_text_encoder else None,
            "scaling_factor": self.m.vae.config.scaling_factor,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "vae_optimizer": self.vae_optimizer.state_dict() if self.vae_optimizer else None,
            "vae_lr": self.vae_lr.state_dict() if self.vae_lr else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict(),
            "losses": self.losses,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if self.config.method == "lora":
            from peft.utils import set_peft_model_state_dict

            set_peft_model_state_dict(self.m.unet, state["unet"])
        else:
            self.m.unet.load_state_dict(state["unet"])
        if state["vae"] is not None:
            self.m.vae.load_state_dict(state["vae"])
        if state["text_encoder"] is not None:
            self.m.pipe.text_encoder.load_state_dict(state["text_encoder"])
        self.m.vae.register_to_config(scaling_factor=state["scaling_factor"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.vae_optimizer is not None and state["vae_optimizer"] is not None:
            self.vae_optimizer.load_state_dict(state["vae_optimizer"])
            self.vae_lr.load_state_dict(state["vae_lr"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.vae_done = bool(state["vae_done"])
        self.losses = list(state["losses"])

    def save_checkpoint(self, out: Path) -> None:
        buffer = io.BytesIO()
        torch.save(self.state(), buffer)
        path = out / CHECKPOINT_FILE
        ensure_folder(path.parent)
        atomic_write_bytes(path, buffer.getvalue())

    # -- the loop ------------------------------------------------------------------------------------------------
    def _batches(self, stage: str, start: int, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = StepBatches(len(self.dataset), self.config.batch_size, self.config.seed, stage, start, steps,
                              self.config.random_flip)  # fmt: skip
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.config.workers)
        yield from loader

    def run(self, out: Path, progress: bool) -> None:
        from tqdm.auto import tqdm

        every = self.config.checkpointing_steps or 100
        bar = tqdm(total=self.total, initial=self.step, unit="step", disable=not progress, dynamic_ncols=True)
        try:
            if self.vae_steps and not self.vae_done:
                self.m.vae.train()
                for images, _ in self._batches("vae", self.step, self.vae_steps):
                    loss = self._vae_step(images)
                    self._after_step(out, "vae", loss, float(self.vae_lr.get_last_lr()[0]), every, bar)
                self.m.vae.eval()
                self.m.vae.requires_grad_(False)
                self._set_scaling_factor()
                self.vae_done = True
                self.save_checkpoint(out)
            unet_start = self.step - self.vae_steps
            self.m.unet.train()
            for images, indices in self._batches("unet", unet_start, self.config.max_steps):
                loss = self._unet_step(images, indices)
                self._after_step(out, "unet", loss, float(self.lr_scheduler.get_last_lr()[0]), every, bar)
        finally:
            bar.close()

    def _after_step(self, out: Path, stage: str, loss: float, lr: float, every: int, bar: Any) -> None:
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the {stage} loss is {loss} at step {self.step}: lower --learning-rate (the last checkpoint is kept)"
            )
        self.losses.append({"step": self.step, "stage": stage, "loss": loss, "lr": lr})
        self.step += 1
        bar.update(1)
        bar.set_postfix(stage=stage, loss=f"{loss:.4f}")
        if self.step % every == 0 and self.step < self.total:
            self.save_checkpoint(out)
            _write_losses(out, self.losses)

    def _autocast(self) -> Any:
        if self.use_amp:
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list[Any], lr: Any) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.max_grad_norm > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        lr.step()

    def _vae_step(self, images: torch.Tensor) -> float:
        g = step_generator(self.config.seed, "vae", self.step)
        x = images.to(self.device)
        vae = self.m.vae
        with self._autocast():
            dist = vae.encode(x).latent_dist
            eps = torch.randn(dist.mean.shape, generator=g).to(self.device)
            z = dist.mean + dist.std * eps
            recon = vae.decode(z).sample
            loss = F.mse_loss(recon.float(), x) + F.l1_loss(recon.float(), x) + 1e-6 * dist.kl().mean()
        assert self.vae_optimizer is not None
        self._optimize(loss, self.vae_optimizer, [p for p in vae.parameters() if p.requires_grad], self.vae_lr)
        return float(loss.detach())

    @torch.no_grad()
    def _set_scaling_factor(self) -> None:
        """1 / std of the trained VAE's latents (what SD's 0.18215 is for its VAE), from up to 512 images."""
        n = min(len(self.dataset), 512)
        latents = []
        for start in range(0, n, 64):
            batch = torch.stack([self.dataset[(i, False, 0.5, 0.5)][0] for i in range(start, min(n, start + 64))])
            latents.append(self.m.vae.encode(batch.to(self.device)).latent_dist.mean.float().cpu())
        std = float(torch.cat(latents).std())
        self.m.vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))

    @torch.no_grad()
    def _encode_one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One prompt's text-encoder output, computed alone: the same floats whichever batch it is drawn in (a
        resumed run draws prompts in other company than an uninterrupted one)."""
        cached = self._text_cache.get(prompt)
        if cached is not None:
            return cached
        pipe = self.m.pipe
        pooled = None
        if self.m.sdxl:
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=[prompt], device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
        else:
            embeds, _ = pipe.encode_prompt([prompt], self.device, 1, False)
        row = (embeds[0].cpu(), pooled[0].cpu() if pooled is not None else None)
        if len(self._text_cache) < TEXT_CACHE_SIZE:
            self._text_cache[prompt] = row
        return row

    def _encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.config.train_text_encoder:  # with gradients, the batch at once (the same batch on a resume)
            tokenizer = self.m.pipe.tokenizer
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids  # fmt: skip
            with self._autocast():
                hidden: torch.Tensor = self.m.pipe.text_encoder(ids.to(self.device))[0]
            return hidden, None
        rows = [self._encode_one(p) for p in prompts]
        hidden = torch.stack([r[0] for r in rows]).to(self.device)
        pooled_rows = [r[1] for r in rows]
        pooled_out = None
        if pooled_rows[0] is not None:
            pooled_out = torch.stack([r for r in pooled_rows if r is not None]).to(self.device)
        return hidden, pooled_out

    def _unet_step(self, images: torch.Tensor, indices: torch.Tensor) -> float:
        config, m = self.config, self.m
        g = step_generator(config.seed, "unet", self.step)
        n = images.shape[0]
        drop = torch.rand(n, generator=g) < config.caption_dropout
        negative = torch.rand(n, generator=g) < 0.5
        prompts = []
        for i, index in enumerate(indices.tolist()):
            caption = self.captions[index]
            if drop[i]:
                prompts.append(caption.negative_prompt if negative[i] else "")
            else:
                prompts.append(caption.prompt)
        hidden, pooled = self._encode_text(prompts)
        x = images.to(self.device)
        with torch.no_grad():
            dist = m.vae.encode(x.to(m.vae.dtype)).latent_dist
            eps = torch.randn(dist.mean.shape, generator=g).to(self.device, dist.mean.dtype)
            latents = (dist.mean + dist.std * eps).float() * m.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g).to(self.device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (n,), generator=g).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        kwargs: dict[str, Any] = {}
        if m.sdxl:
            side = float(config.resolution or 0)
            time_ids = torch.tensor([[side, side, 0.0, 0.0, side, side]], device=self.device).repeat(n, 1)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        with self._autocast():
            pred = m.unet(noisy, timesteps, encoder_hidden_states=hidden, return_dict=False, **kwargs)[0]
        if config.snr_gamma is None:
            loss = F.mse_loss(pred.float(), target.float())
        else:
            from diffusers.training_utils import compute_snr

            snr = compute_snr(self.noise_scheduler, timesteps)
            weight = torch.minimum(snr, torch.full_like(snr, config.snr_gamma))
            weight = weight / snr if self.prediction_type == "epsilon" else weight / (snr + 1)
            per_image = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            loss = (per_image * weight).mean()
        self._optimize(loss, self.optimizer, m.trainable, self.lr_scheduler)
        if self.ema is not None:
            self.ema.step(m.trainable)
        return float(loss.detach())


def _write_losses(out: Path, losses: list[dict[str, Any]]) -> str:
    """Write ``loss.jsonl`` (every step so far, rewritten at each checkpoint) and return its text."""
    text = "".join(json.dumps(line) + "\n" for line in losses)
    atomic_write_text(out / LOSS_FILE, text)
    return text


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    state: dict[str, Any] = load_torch_file(path, "fine-tuning checkpoint")
    return state


def _save_model(out: Path, models: _Models, config: FinetuneConfig, trainer: _Trainer) -> str:
    """Write the weights into MODEL (saved into a scratch folder, then moved into place); returns their digest."""
    if trainer.ema is not None:
        trainer.ema.copy_to(models.trainable)
    with scratch_for(out / FINETUNE_FILE) as scratch:
        tmp = scratch.new_folder("save-")
        try:  # a save stopped by an error or a stop signal leaves no folder behind: a rerun saves again
            _save_into(tmp, models, config)
            saved = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            _move_into_place(out, tmp, saved)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    h = hashlib.sha256()
    for rel, sha in saved.items():
        if rel.endswith((".safetensors", ".bin")):
            h.update(f"{rel}\t{sha}\n".encode())
    return h.hexdigest()


def _save_into(tmp: Path, models: _Models, config: FinetuneConfig) -> None:
    """Save the pipeline (or its LoRA weights) into the folder ``tmp``."""
    pipe = models.pipe
    if config.method == "lora":
        from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(models.unet))
        type(pipe).save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
    else:
        from diffcoremix.hub import quiet_loading

        pipe.to("cpu")
        with quiet_loading():
            pipe.save_pretrained(tmp, safe_serialization=True)


def _move_into_place(out: Path, tmp: Path, saved: dict[str, str]) -> None:
    """Move the saved files (relative path: SHA-256) from ``tmp`` into MODEL, folder by folder, replacing only files
    that hold what an earlier save wrote (recorded first), and deleting the earlier save's files that this one lacks.

    Raises:
        OutputFolderError: a file of the model was replaced or changed since diffcoremix wrote it (the new model cannot
            be put together around it).
    """
    layout = Layout(out, damaged="reset")
    earlier = {f for f, digests in layout.files.items() if digests is not None and f not in saved}
    changed = [rel for rel in saved if not layout.ours(rel)]
    if changed:
        raise OutputFolderError(changed_message(out, changed))
    layout.expect(saved)
    for top in sorted({rel.split("/")[0] for rel in saved}):
        faults.write_point(out / top)
        for rel in (r for r in saved if r.split("/")[0] == top):
            ensure_folder((out / rel).parent)
            os.replace(tmp / rel, out / rel)
    layout.settle(saved)
    layout.delete(earlier)
    layout.warn_changed()


def _loss_plot(losses: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.2), dpi=100)
    stages = [s for s in ("vae", "unet") if any(line["stage"] == s for line in losses)]
    for i, stage in enumerate(stages):
        ax = figure.add_subplot(1, len(stages), i + 1)
        points = [(line["step"], line["loss"]) for line in losses if line["stage"] == stage]
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, lw=0.5, alpha=0.4, color="tab:blue")
        window = max(1, len(values) // 50)
        if window > 1:
            smooth = [sum(values[max(0, j - window + 1) : j + 1]) / len(values[max(0, j - window + 1) : j + 1])
                      for j in range(len(values))]  # fmt: skip
            ax.plot(steps, smooth, lw=1.5, color="tab:blue")
        ax.set_yscale("log")
        ax.set_title("VAE reconstruction loss" if stage == "vae" else "UNet denoising loss", fontsize=9)
        ax.set_xlabel("step")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
