"""Generators: what turns (prompt, negative prompt, seed) triples into images (METHOD.md §5).

The contract is the :class:`ImageGenerator` protocol; the diffusers backend is the one shipped. It loads any
text-to-image pipeline (hub id or local folder through ``AutoPipelineForText2Image``, single ``.safetensors`` /
``.ckpt`` files through ``from_single_file``), swaps the scheduler by class name, and gives every image its own
CPU ``torch.Generator`` so that an image depends on its seed only, not on the batch it ran in.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from diffcoremix import hub
from diffcoremix.checkpoints import unpickling_reason, unsafe_refusal
from diffcoremix.errors import ModelLoadError, UnknownNameError
from diffcoremix.finetuned import finetune_summary, read_finetune_info
from diffcoremix.generate.config import GenerationSettings
from diffcoremix.generate.presets import BUILTIN_PREFIX
from diffcoremix.generate.safety import Flagged, apply_setting, checker_quiet, flags, pretrained_kwargs
from diffcoremix.hub import quiet_loading
from diffcoremix.identities import weights_sha256
from diffcoremix.modes import COUNTERPART_MODES, Conditioning, composite
from diffcoremix.registry import Registry

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".bin")


class ImageGenerator(Protocol):
    """Makes one image per (prompt, negative prompt, seed); the same triple gives the same image."""

    provenance: dict[str, Any]
    """Model id, revision or file hash, pipeline and scheduler classes, dtype, device: saved with every image."""

    def generate(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        seeds: Sequence[int],
        conditions: Sequence[Conditioning] | None = None,
    ) -> list[Image.Image | Flagged]:
        """One image per triple, or :class:`Flagged` where the model's safety checker flagged it; ``conditions``
        carry each candidate's source image, mask and strength in the modes that read them."""
        ...


def _builtin_models() -> Registry[Callable[[int], Any]]:
    """``builtin:<name>`` models: pipelines built in-process with seeded random weights."""
    from diffcoremix.generate.fullsize import random_sd15_pipeline, random_sdxl_pipeline
    from diffcoremix.generate.tiny import tiny_ip2p_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline

    registry: Registry[Callable[[int], Any]] = Registry("built-in model")
    registry.add("tiny-sd", tiny_sd_pipeline)
    registry.add("tiny-sdxl", tiny_sdxl_pipeline)
    registry.add("tiny-ip2p", tiny_ip2p_pipeline)
    registry.add("sd15-random", random_sd15_pipeline)
    registry.add("sdxl-random", random_sdxl_pipeline)
    return registry


def _load_failure(model: str, err: BaseException, *, offline: bool, hub_name: str | None) -> ModelLoadError:
    """The one line for a model that did not load: its fix depends on where its files were to come from.

    ``hub_name`` is what was asked of the hub (None: every file was local, so the network is no cause and
    network advice would mislead); ``offline``: the hub was out of reach.
    """
    reason = " ".join(str(err).split())[:300] or type(err).__name__
    if hub_name is None and _holds_lora(Path(model).expanduser()):
        return ModelLoadError(f"{model} {LORA_FIX.format(model=model)}")
    if hub_name is None:
        return ModelLoadError(
            f"cannot load model {model!r} ({reason}): its files are damaged or incomplete (a copy cut short?) or "
            "not a model diffusers reads; copy them again, or point --model (and --vae, --model-config) elsewhere"
        )
    if offline:  # the library's own words ("does not appear to have a file named ...") hide the cause
        reason = f"{hub.offline_reason()}, and its files are not all in the cache {hub.cache_dir()}"
    else:
        reason = hub.not_a_hub_reason(hub_name) or reason
    return ModelLoadError(
        f"cannot load model {model!r} ({reason}). Without network access or hub credentials, use "
        "--preset tiny (built in, nothing to download) or --model PATH (a local diffusers folder or a "
        ".safetensors checkpoint, with --model-config FOLDER for its component configs)"
    )


MISSING_COMPONENT_FIX: dict[str, str] = {
    "AutoencoderKL": "has no VAE baked in: pass one with --vae (a diffusers VAE folder, hub id or .safetensors)",
}
"""What a single-file checkpoint that lacks a pipeline component (by its class) is told: the option that supplies
it. A file without a UNet or text encoder is no whole checkpoint (:func:`_missing_component`)."""


def _missing_component(model: str, err: BaseException) -> ModelLoadError:
    """A single file without the weights of one pipeline component: what is missing, and which option supplies it
    (diffusers' own message is seven lines of Python to write instead)."""
    found = re.search(r"Failed to load (\w+)", str(err))
    component = found.group(1) if found else "pipeline component"
    if _holds_lora(Path(model).expanduser()):
        fix = LORA_FIX.format(model=model)
    else:
        fix = MISSING_COMPONENT_FIX.get(
            component,
            f"holds no {component} weights, so it is no whole checkpoint: give --model a checkpoint or diffusers "
            "folder of the whole pipeline (LoRA weights go to --lora)",
        )
    return ModelLoadError(f"the single file {model} {fix}")


LORA_FIX = "holds LoRA weights, not a whole model: pass it as --lora {model}, over its base model as --model"


def _holds_lora(path: Path) -> bool:
    """Whether ``path`` is a ``.safetensors`` file of LoRA weights (its tensors' names say ``lora``), or a folder
    holding one (what ``finetune --method lora`` and diffusers' ``save_lora_weights`` write)."""
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")) if path.is_dir() else [path]:
        try:
            with safe_open(str(file), "pt") as weights:
                if any("lora" in key.lower() for key in weights.keys()):  # noqa: SIM118 (safe_open is no dict)
                    return True
        except Exception:  # not a safetensors file, or unreadable: the generic fix is the right one
            continue
    return False


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_pipeline(settings: GenerationSettings) -> tuple[Any, dict[str, Any]]:
    """The diffusers pipeline of ``settings`` (on its device, in its dtype) and its provenance.

    Raises:
        ModelLoadError: the weights cannot be loaded; the message names ``--preset tiny`` and ``--model PATH``.
        UnknownNameError: unknown built-in model or scheduler class.
    """
    model = settings.model
    if model is None:
        raise ModelLoadError(
            f"preset {settings.preset!r} has no downloadable model: pass --model PATH (e.g. the CosXL checkpoint "
            "cosxl.safetensors), or use --preset tiny for an offline run"
        )
    dtype = _torch_dtype(settings.dtype)
    provenance: dict[str, Any] = {"model": model, "model_revision": settings.revision,
                                  "model_sha256": settings.weights_sha256.get("model"),
                                  "weights_sha256": dict(settings.weights_sha256)}  # fmt: skip
    if model.startswith(BUILTIN_PREFIX):
        pipe = _builtin_models().get(model.removeprefix(BUILTIN_PREFIX))(0)
        if settings.dtype != "float32":  # built in float32
            pipe.to(dtype=dtype)
        provenance["model_revision"] = "random-weights-seed-0"
    else:
        for name in (model, settings.vae, settings.model_config):
            _check_local(name)
        pipe = _load_diffusers(model, settings, dtype, provenance)
    if settings.scheduler is not None:
        pipe.scheduler = _scheduler(settings.scheduler, pipe.scheduler.config, settings.scheduler_kwargs)
    _add_finetune_provenance(model, settings, provenance)
    if settings.lora is not None:
        _load_lora(pipe, settings.lora)
    provenance["safety_checker"] = apply_setting(pipe, settings.safety_checker, model)
    pipe.set_progress_bar_config(disable=True)  # the runner's bar counts images; per-step bars would interleave
    provenance["pipeline"] = type(pipe).__name__
    provenance["scheduler"] = type(pipe.scheduler).__name__
    return pipe, provenance


def _add_finetune_provenance(model: str, settings: GenerationSettings, provenance: dict[str, Any]) -> None:
    """Record what ``finetune`` made the model or LoRA from (``provenance["finetune"]``) and the LoRA's path."""
    provenance["finetune"] = None
    provenance["lora"] = str(Path(settings.lora).expanduser().resolve()) if settings.lora is not None else None
    for path in (settings.lora, None if model.startswith(BUILTIN_PREFIX) else model):
        info = read_finetune_info(path) if path is not None else None
        if info is not None:
            provenance["finetune"] = finetune_summary(path, info)  # type: ignore[arg-type]
            if path == model:
                provenance["model_revision"] = info.get("weights_sha256")
            return


def _load_lora(pipe: Any, lora: str) -> None:
    path = Path(lora).expanduser()
    if not path.exists():
        raise ModelLoadError(f"LoRA weights {path} do not exist (make them with `diffcoremix finetune --method lora`)")
    try:
        with quiet_loading():
            if path.is_file():
                pipe.load_lora_weights(str(path.parent), weight_name=path.name)
            else:
                pipe.load_lora_weights(str(path))
    except (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError) as err:
        if (refusal := unsafe_refusal(err, path, "the LoRA weights")) is not None:  # a .bin: read weights_only
            raise refusal from None
        reason = unpickling_reason(err) or " ".join(str(err).split())[:300] or type(err).__name__
        raise ModelLoadError(f"cannot load LoRA weights {path} into {type(pipe).__name__} ({reason})") from err


def _check_local(name: str | None) -> None:
    """A name spelt as a local path (``/x``, ``./x``, ``~/x``, ``a/b/c``, ``x.safetensors``) must exist: it is no
    hub id (``org/name``), and asking the hub for it would only fail later, and slowly, for another reason."""
    if name is None or Path(name).expanduser().exists():
        return
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or _is_checkpoint(Path(name)):
        raise ModelLoadError(f"{name} does not exist (a local model folder or file; a hub id reads org/name)")


def _is_checkpoint(path: Path) -> bool:
    return path.suffix.lower() in CHECKPOINT_SUFFIXES or path.is_file()


def _hub_name(model: str, settings: GenerationSettings) -> str | None:
    """The first name that loading asks the hub for (a hub id, or a checkpoint's configs), or None when every file
    is local (a folder or file, with ``--model-config`` and ``--vae`` local or unset)."""

    def on_hub(name: str | None) -> bool:
        return name is not None and not Path(name).expanduser().exists()

    if _is_checkpoint(Path(model).expanduser()):
        if settings.model_config is None:
            return FALLBACK_CONFIGS[settings.family]
        names = [settings.model_config, settings.vae]
    else:
        names = [model, settings.vae]
    return next((name for name in names if on_hub(name)), None)


FALLBACK_CONFIGS = {
    "sd": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
"""Where diffusers looks for the configs of a single file given without ``--model-config`` (its guesses for SD 1.x
and SDXL files): the name whose answer tells whether the hub answers as one (:func:`hub.not_a_hub_reason`)."""


def _load_diffusers(model: str, settings: GenerationSettings, dtype: Any, provenance: dict[str, Any]) -> Any:
    """Load a hub id, local folder or checkpoint file; offline, from the hub cache only, failing at once."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    hub_name = _hub_name(model, settings)
    offline = hub_name is not None and hub.hub_offline()
    try:
        # Offline, local_files_only keeps diffusers off the network; the hub's own offline mode also covers what
        # ignores it (from_single_file downloads missing configs regardless; user-agent telemetry).
        with hub.cache_only() if offline else contextlib.nullcontext(), quiet_loading():
            return _read_pipeline(model, settings, {"torch_dtype": dtype, "local_files_only": offline}, provenance)
    except ModelLoadError:
        raise
    except SingleFileComponentError as err:
        raise _missing_component(model, err) from err
    except (OSError, ValueError, RuntimeError, ImportError, pickle.UnpicklingError) as err:
        # diffusers reads a .bin or .ckpt with weights_only=True, and wraps the refusal in an OSError
        if (refusal := unsafe_refusal(err, model, "the model")) is not None:
            raise refusal from None
        raise _load_failure(model, err, offline=offline, hub_name=hub_name) from err


def _read_vae(vae: str, settings: GenerationSettings, kwargs: dict[str, Any]) -> Any:
    """The ``--vae``: a hub id or diffusers folder, or a single file (its config from ``--model-config``'s vae/)."""
    import diffusers

    path = Path(vae).expanduser()
    if not path.is_file():
        return diffusers.AutoencoderKL.from_pretrained(vae, **kwargs)
    config = {"config": settings.model_config, "subfolder": "vae"} if settings.model_config is not None else {}
    return diffusers.AutoencoderKL.from_single_file(str(path), **kwargs, **config)


def _read_pipeline(model: str, settings: GenerationSettings, kwargs: dict[str, Any], provenance: dict[str, Any]) -> Any:
    """The pipeline of a hub id, folder or checkpoint file; ``kwargs`` go to every ``from_*`` call."""
    import diffusers

    path = Path(model).expanduser()
    if settings.vae is not None:
        kwargs = {**kwargs, "vae": _read_vae(settings.vae, settings, kwargs)}
    if not _is_checkpoint(path):
        kwargs = kwargs | pretrained_kwargs(settings.safety_checker, model, kwargs | {"revision": settings.revision})
        # an InstructPix2Pix model is no text-to-image one: AutoPipelineForText2Image has no class for it
        auto = diffusers.DiffusionPipeline if settings.mode == "edit" else diffusers.AutoPipelineForText2Image
        pipe = auto.from_pretrained(model, revision=settings.revision, **kwargs)
        provenance["model_revision"] = settings.revision or _hub_commit(model)
        return pipe
    if not path.is_file():
        raise ModelLoadError(f"checkpoint file {path} does not exist")
    cls = diffusers.StableDiffusionXLPipeline if settings.family == "sdxl" else diffusers.StableDiffusionPipeline
    if settings.model_config is not None:
        kwargs = {**kwargs, "config": settings.model_config}
    pipe = cls.from_single_file(str(path), **kwargs)
    provenance["model_sha256"] = weights_sha256(path)  # remembered: a checkpoint is read once, not every run
    return pipe


def _hub_commit(model: str) -> str | None:
    """The commit of a hub model's cached snapshot (its folder name), or None for local folders.

    Reads the cache only, never the network (``local_files_only``): it runs after a successful load.
    """
    if Path(model).is_dir():
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True)).name
    except Exception:  # provenance is best effort: an unresolvable revision is recorded as unknown
        return None


def _scheduler(name: str, config: Any, kwargs: dict[str, Any]) -> Any:
    import diffusers

    known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("_"))
    cls = getattr(diffusers, name, None) if name in known else None
    if cls is None:
        raise UnknownNameError("diffusers scheduler", name, known)
    return cls.from_config(config, **kwargs)


class DiffusersGenerator:
    """An :class:`ImageGenerator` over a diffusers text-to-image pipeline.

    Args:
        pipe: the pipeline (see :func:`load_pipeline`).
        settings: sampling settings (steps, guidance, size, device).
        provenance: facts about the model, saved with every image.
    """

    def __init__(self, pipe: Any, settings: GenerationSettings, provenance: dict[str, Any]) -> None:
        self.mode = COUNTERPART_MODES.get(settings.mode)
        try:
            self.pipe = self.mode.pipeline(pipe)
        except ValueError as err:  # a model the mode cannot use (edit over a text-to-image UNet)
            model = provenance.get("model") or settings.model
            raise ModelLoadError(
                f"--counterpart {self.mode.name} needs {self.mode.needs_model or 'another model'}; {model} is not "
                f"one ({err})"
            ) from err
        self.pipe.set_progress_bar_config(disable=True)  # a pipeline made from_pipe has the default bars again
        self.settings = settings
        self.provenance = {**provenance, "dtype": settings.dtype, "device": settings.device,
                           "pipeline": type(self.pipe).__name__}  # fmt: skip

    @classmethod
    def from_settings(
        cls, settings: GenerationSettings, *, compile: bool = False, cpu_offload: bool = False
    ) -> DiffusersGenerator:
        """Load the pipeline and place it on the settings' device."""
        import torch

        pipe, provenance = load_pipeline(settings)
        if cpu_offload:
            pipe.enable_model_cpu_offload(device=settings.device)
        else:
            pipe.to(settings.device)
        if compile:
            pipe.unet = torch.compile(pipe.unet)
        return cls(pipe, settings, provenance)

    def generate(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        seeds: Sequence[int],
        conditions: Sequence[Conditioning] | None = None,
    ) -> list[Image.Image | Flagged]:
        """One image per prompt; noise for each is drawn on the CPU from its own seed.

        A pipeline call takes one strength, so the candidates are run in groups of equal strength (in the order of
        their first appearance); each image has its own generator, so its pixels do not depend on its group.

        Returns:
            RGB ``PIL`` images of ``settings.height`` x ``settings.width``; :class:`Flagged` in place of each image
            that the model's safety checker flagged (the pipeline has blacked it out).
        """
        if not len(prompts) == len(negative_prompts) == len(seeds):
            raise ValueError(f"got {len(prompts)} prompts, {len(negative_prompts)} negatives, {len(seeds)} seeds")
        conditions = list(conditions) if conditions is not None else [Conditioning()] * len(prompts)
        if self.mode.uses_source and any(c.image is None for c in conditions):
            raise ValueError(f"--counterpart {self.mode.name} needs each candidate's source image")
        groups: dict[float | None, list[int]] = {}
        for i, condition in enumerate(conditions):
            groups.setdefault(condition.strength, []).append(i)
        results: list[Image.Image | Flagged | None] = [None] * len(prompts)
        for strength, members in groups.items():
            images = self._call([prompts[i] for i in members], [negative_prompts[i] for i in members],
                                [seeds[i] for i in members], [conditions[i] for i in members], strength)  # fmt: skip
            for i, image in zip(members, images, strict=True):
                results[i] = image
        return [r for r in results if r is not None]

    def _call(
        self,
        prompts: list[str],
        negative_prompts: list[str],
        seeds: list[int],
        conditions: list[Conditioning],
        strength: float | None,
    ) -> list[Image.Image | Flagged]:
        import torch

        s = self.settings
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        with torch.inference_mode(), checker_quiet():
            output = self.pipe(
                prompt=prompts,
                negative_prompt=negative_prompts if s.guidance_scale > 1 else None,
                num_inference_steps=s.num_inference_steps,
                guidance_scale=s.guidance_scale,
                generator=generators,
                output_type="pil",
                **self.mode.call(conditions, strength, s),
            )
        checker = type(getattr(self.pipe, "safety_checker", None)).__name__  # what judged a flagged image
        results: list[Image.Image | Flagged] = []
        for image, flagged, condition in zip(output.images, flags(output, len(seeds)), conditions, strict=True):
            if flagged:
                results.append(Flagged(checker))
            elif condition.mask is not None and condition.image is not None:
                results.append(composite(image, condition.image, condition.mask))
            else:
                results.append(image.convert("RGB"))
        return results
