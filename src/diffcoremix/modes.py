"""Counterpart modes: how a generated counterpart relates to its real source image (one registry entry each).

- ``text``: text-to-image from the contextual prompt; no pixel of the source (the paper's method, the default).
- ``img2img``: the source, noised to ``strength`` and denoised with the prompt (SDEdit; DA-Fusion, Real-Guidance).
- ``inpaint``: the subject of the source kept, the rest redrawn with the prompt (OntoAug's idea); the subject mask
  comes from ``--masks DIR`` or a trained run's Grad-CAM (``--mask-from RUN``). The kept subject's pixels are the
  source's own: the pipeline's output is pasted over the background only.
- ``edit``: an InstructPix2Pix model edits the source with an instruction (DiffuseMix's style prompts).
- ``cross-class``: img2img of a source of class A with the prompt of another class B (Diff-Mix); the label is Diff-Mix's
  soft label ``(1 - s**g) A + s**g B`` for strength ``s`` and ``soft_label_gamma`` ``g``.

A mode names its diffusers pipeline (built from the loaded pipeline's components, ``from_pipe``: no second copy of the
weights), what it reads of the source, and the keyword arguments of one pipeline call. A candidate's pixels depend
only on its source (and mask), its seed, its strength and the settings: each image has its own generator, and a batch
is cut into runs of one strength (a pipeline call takes one), in plan order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from diffcoremix.registry import Registry


@dataclass(frozen=True)
class Conditioning:
    """What a candidate's pipeline call reads besides its prompt and seed."""

    image: Image.Image | None = None
    """The source image, RGB, fitted to the generation size (centre crop, then resize)."""
    mask: Image.Image | None = None
    """The subject mask at the generation size, mode ``L``: 255 = subject (kept), 0 = background (redrawn)."""
    strength: float | None = None


NO_CONDITION = Conditioning()
"""A text-to-image candidate's: nothing but its prompt and seed."""


@dataclass(frozen=True)
class CounterpartMode:
    """One kind of counterpart."""

    name: str
    summary: str
    pipeline: Callable[[Any], Any]
    """The loaded pipeline -> the pipeline this mode calls (sharing its components)."""
    call: Callable[[Sequence[Conditioning], float | None, Any], dict[str, Any]]
    """``(conditionings, strength, settings)`` -> the extra keyword arguments of one pipeline call."""
    uses_source: bool = False
    uses_mask: bool = False
    cross_class: bool = False
    default_strength: tuple[float, ...] = ()
    """The strengths drawn from when the user gives none (empty: the mode has no strength)."""
    needs_model: str | None = None
    """What kind of model the mode needs, when not any text-to-image one (named in the error for another)."""


def fit(
    image: Image.Image, width: int, height: int, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> Image.Image:
    """``image`` centre-cropped to the aspect of ``width`` x ``height`` and resized to it (the source's framing is
    kept; nothing is stretched)."""
    return ImageOps.fit(image, (width, height), method=resample, centering=(0.5, 0.5))


def _text(pipe: Any) -> Any:
    return pipe


def _image2image(pipe: Any) -> Any:
    from diffusers import AutoPipelineForImage2Image

    return AutoPipelineForImage2Image.from_pipe(pipe)


def _inpainting(pipe: Any) -> Any:
    from diffusers import AutoPipelineForInpainting

    return AutoPipelineForInpainting.from_pipe(pipe)


def _instruct(pipe: Any) -> Any:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    if isinstance(pipe, StableDiffusionInstructPix2PixPipeline):
        return pipe
    channels = pipe.unet.config.in_channels
    if channels != 8:
        raise ValueError(f"its UNet takes {channels} input channels; an InstructPix2Pix UNet takes 8")
    return StableDiffusionInstructPix2PixPipeline(**pipe.components, requires_safety_checker=False)  # type: ignore[no-untyped-call]


def _sized(conditions: Sequence[Conditioning], strength: float | None, settings: Any) -> dict[str, Any]:
    return {"height": settings.height, "width": settings.width}


def _from_image(conditions: Sequence[Conditioning], strength: float | None, settings: Any) -> dict[str, Any]:
    return {"image": [c.image for c in conditions], "strength": strength}


def _inpaint(conditions: Sequence[Conditioning], strength: float | None, settings: Any) -> dict[str, Any]:
    # diffusers' masks are white where it repaints: the background, the complement of the subject
    masks = [ImageOps.invert(c.mask) for c in conditions if c.mask is not None]
    return {"image": [c.image for c in conditions], "mask_image": masks, "strength": strength,
            "height": settings.height, "width": settings.width}  # fmt: skip


def _edit(conditions: Sequence[Conditioning], strength: float | None, settings: Any) -> dict[str, Any]:
    return {"image": [c.image for c in conditions], "image_guidance_scale": settings.image_guidance_scale}


@dataclass(frozen=True)
class CounterpartSettings:
    """A counterpart mode other than text, resolved: everything of it that shapes the plan or the pixels."""

    mode: str
    strength: tuple[float, ...] = ()
    """The strengths a candidate's is drawn from (the mode's default when the user gave none)."""
    image_guidance_scale: float | None = None
    soft_label_gamma: float | None = None
    """For cross-class only."""
    masks: str | None = None
    """The subject masks' identity (``masks:<folder>`` or ``gradcam:<run>@<weights>:<threshold>``), for inpaint."""


COUNTERPART_MODES: Registry[CounterpartMode] = Registry("counterpart mode")
for _mode in (
    CounterpartMode("text", "text-to-image from the contextual prompt (the paper's method)", _text, _sized),
    CounterpartMode("img2img", "the source noised to --strength and denoised with the prompt (SDEdit)",
                    _image2image, _from_image, uses_source=True, default_strength=(0.5,)),
    CounterpartMode("inpaint", "the source's subject kept, its background redrawn with the prompt", _inpainting,
                    _inpaint, uses_source=True, uses_mask=True, default_strength=(1.0,)),
    CounterpartMode("edit", "the source edited by an InstructPix2Pix model with an instruction", _instruct, _edit,
                    uses_source=True, needs_model="an InstructPix2Pix model (a UNet of 8 input channels)"),
    CounterpartMode("cross-class", "img2img of a source of one class with the prompt of another (soft label)",
                    _image2image, _from_image, uses_source=True, cross_class=True,
                    default_strength=(0.3, 0.5, 0.7, 0.9)),
):  # fmt: skip
    COUNTERPART_MODES.add(_mode.name, _mode)

COUNTERPART_NAMES = tuple(COUNTERPART_MODES.names())


def soft_label(source_class: str, target_class: str, strength: float, gamma: float) -> dict[str, float]:
    """Diff-Mix's label of a cross-class counterpart: ``{A: 1 - s**g, B: s**g}`` (weights sum to 1)."""
    target = float(strength) ** float(gamma)
    return {source_class: 1.0 - target, target_class: target}


def composite(generated: Image.Image, source: Image.Image, mask: Image.Image) -> Image.Image:
    """The source's pixels where the mask marks the subject, the generated ones elsewhere (an inpainted counterpart
    keeps its subject exactly; the VAE's round trip would blur it)."""
    return Image.composite(source.convert("RGB"), generated.convert("RGB"), mask.convert("L"))
