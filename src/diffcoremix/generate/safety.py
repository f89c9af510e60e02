"""The safety checker's verdict: what a pipeline's checker flags is recorded as ``flagged``, never kept as an image.

Some models ship a safety checker (``CompVis/stable-diffusion-v1-4``, ``runwayml/stable-diffusion-v1-5`` and their
copies: a ``StableDiffusionSafetyChecker`` in the repository). diffusers runs it on every image, blacks out the ones it
flags and says which in the output's ``nsfw_content_detected``, advising to "try again with a different prompt and/or
seed"; hosted peers drop a flagged image from their output and ask for another run. diffcoremix does the same: a
flagged candidate gets the manifest status ``flagged`` (never ``ok``), its all-black image is not written (it holds
nothing to train on or look at), the filter never sees it, so it is never placed in ``train/``, and it is counted
in the generation summary, the filter report and the HTML report. ``augment --retries`` regenerates it with a new
seed like any candidate that was not accepted. Its verdict is a fact of its seed and the settings: a rerun keeps it
instead of making the same image again.

``--safety-checker`` chooses: unset (the default) runs whatever the model ships; ``off`` loads the model without its
checker (diffusers' ``safety_checker=None, requires_safety_checker=False``), for data sets whose classes the checker
misjudges (it flags harmless images often); ``on`` insists on one, and is refused for a model that ships none (SDXL,
the built-in models, single-file checkpoints). The choice is a generation setting: recorded in ``settings.json``,
and a rerun with another value is refused as other settings.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from diffcoremix.errors import ConfigError
from diffcoremix.manifest.records import FLAGGED

__all__ = ["FLAGGED", "Flagged", "SafetyChecker", "apply_setting", "checker_quiet", "flags", "pretrained_kwargs"]

SafetyChecker = Literal["on", "off"]
"""``--safety-checker``: run the model's checker (and require one), or load the model without it."""


@dataclass(frozen=True)
class Flagged:
    """What a generator gives instead of an image that the model's safety checker flagged."""

    checker: str
    """The checker's class name (``StableDiffusionSafetyChecker``)."""

    @property
    def message(self) -> str:
        """The manifest's ``error`` text of such a candidate."""
        return (
            f"flagged by the model's safety checker ({self.checker}): the pipeline blacked the image out, so none is "
            "kept; another seed (augment --retries) may pass, or --safety-checker off skips the check"
        )


def pretrained_kwargs(setting: SafetyChecker | None, model: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments that make ``from_pretrained`` of ``model`` honour ``--safety-checker off``: none is loaded.

    Only for a pipeline that has a checker component (its ``model_index.json`` names one): any other pipeline would
    warn that it ignores them. ``kwargs`` are the load's own (``revision``, ``local_files_only``...).
    """
    if setting != "off":
        return {}
    import diffusers

    try:
        config = diffusers.DiffusionPipeline.load_config(
            model, **{k: v for k, v in kwargs.items() if k in ("revision", "local_files_only")}
        )
    except (OSError, ValueError):
        return {}  # the load that follows fails on it too, and says why
    if "safety_checker" not in config:
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def apply_setting(pipe: Any, setting: SafetyChecker | None, model: str) -> str | None:
    """Enforce ``--safety-checker`` on a loaded pipeline; the class name of the checker that will judge its images.

    Raises:
        ConfigError: ``on`` for a model that ships no checker.
    """
    checker = getattr(pipe, "safety_checker", None)
    if setting == "off" and checker is not None:
        pipe.safety_checker = None  # a pipeline loaded with one all the same (built in, or a single file given one)
        checker = None
    if setting == "on" and checker is None:
        raise ConfigError("safety_checker", setting, f"off or unset for {model}, which ships no safety checker")
    return type(checker).__name__ if checker is not None else None


def flags(output: Any, count: int) -> list[bool]:
    """Which of a pipeline call's ``count`` images its checker flagged (none when no checker ran)."""
    detected = getattr(output, "nsfw_content_detected", None)
    if detected is None:
        return [False] * count
    if len(detected) != count:
        raise ValueError(f"the safety checker judged {len(detected)} images of {count}")
    return [bool(flag) for flag in detected]


@contextlib.contextmanager
def checker_quiet() -> Iterator[None]:
    """diffusers' own "Potential NSFW content was detected" warning off: the runner records and counts the flags,
    and warns once per run."""
    log = logging.getLogger("diffusers.pipelines.stable_diffusion.safety_checker")
    was = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(was)
