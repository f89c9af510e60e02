"""Classifiers by name (any timm model, and the CIFAR ResNet-20 of this project), and the classifier of a finished
``diffcoremix train`` run (``RUN/model.pt``).

Below the stages that read a run (``prompts`` ranks the sources by a run's loss, ``--sources hard:F --rank-by RUN``)
and ``train``, which makes runs: :mod:`diffcoremix.train` re-exports every name here.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffcoremix.checkpoints import UnsafeCheckpointError, load_torch_file
from diffcoremix.data.folder import DatasetListing
from diffcoremix.embedders.resnet20 import RUN_MODEL_NAME as RESNET20
from diffcoremix.errors import ConfigError, DatasetError, DiffCoReMixError, ModelLoadError, UnknownNameError
from diffcoremix.hub import hub_offline

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
"""A finished run's final weights and what is needed to use them (classes, model name, image size...)."""


def _timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def check_model_name(name: str) -> None:
    """Raise :class:`UnknownNameError` (listing close matches) unless ``name`` is ``resnet20`` or a timm model."""
    if name == RESNET20:
        return
    import timm

    if timm.is_model(name):
        return
    known = [RESNET20, *_timm_names()]
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    raise UnknownNameError("model", name, close or known[:10])


def create_model(name: str, num_classes: int, *, pretrained: bool = False, init: str | Path | None = None) -> nn.Module:
    """A classifier with ``num_classes`` outputs, random (seed it with :func:`diffcoremix.seeds.seeded_init`),
    pretrained (timm weights) or from a checkpoint file.

    Raises:
        UnknownNameError: not ``resnet20`` and not a timm model (the message lists close matches).
        ModelLoadError: pretrained weights or the checkpoint cannot be loaded.
    """
    check_model_name(name)
    if num_classes < 1:
        raise ConfigError("num_classes", num_classes, ">= 1")
    model: nn.Module
    if name == RESNET20:
        from diffcoremix.embedders.resnet20 import ResNet20

        if pretrained:
            raise ConfigError("pretrained", True, "off for resnet20 (start from a checkpoint with --init instead)")
        model = ResNet20(num_classes)
    else:
        import timm

        try:
            model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
        except Exception as err:  # timm raises RuntimeError, OSError, LocalEntryNotFoundError... offline
            offline = " (offline: put the weights in the Hugging Face cache, or drop --pretrained)"
            hint = offline if hub_offline() else ""
            raise ModelLoadError(f"cannot load pretrained weights of {name}: {err}{hint}") from None
    if init is not None:
        load_init(model, init)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` or torch file (``state_dict``/``model`` entries and a ``module.``
    prefix, as DataParallel checkpoints have, are unwrapped).

    Raises:
        ModelLoadError: the file is missing or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(path)
        else:
            state = load_torch_file(path)
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(f"cannot read checkpoint {path}: {' '.join(str(err).split())[:200]}") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def load_init(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into ``model``; layers whose shapes differ (a classifier for other classes) are skipped
    with a warning, and any other mismatch is an error.

    Raises:
        ModelLoadError: the file does not fit the model.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    fitting = {k: v for k, v in state.items() if k not in skipped}
    missing, unexpected = model.load_state_dict(fitting, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ModelLoadError(
            f"{path} does not fit the model: {len(missing)} missing key(s) (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    if skipped:
        logger.warning("%s: %d layer(s) of other shapes left at their initialisation: %s", path, len(skipped),
                       ", ".join(skipped))  # fmt: skip


class RunError(DiffCoReMixError):
    """A folder is not a finished training run."""


@dataclass(frozen=True)
class TrainedModel:
    """A trained classifier and what is needed to feed it."""

    model: nn.Module
    """In eval mode, on the CPU."""
    classes: tuple[str, ...]
    """Class folder names; output ``i`` is ``classes[i]``."""
    info: dict[str, Any]
    """``model`` (name), ``img_size``, ``mean``, ``std``, ``transform``, ``method``, ``seed``... (model.pt's info)."""
    run: Path


def load_run(run: str | Path) -> TrainedModel:
    """The final classifier of a finished run (``RUN/model.pt``), in eval mode on the CPU.

    Raises:
        RunError: no ``model.pt`` (the run has not finished) or a damaged one.
    """
    path = Path(run) / MODEL_FILE
    if not path.is_file():
        raise RunError(f"{run} is not a finished training run (no {MODEL_FILE}): run or resume `train` first")
    try:
        saved = load_torch_file(path, "model")
        info, state = dict(saved["info"]), saved["state_dict"]
    except UnsafeCheckpointError:
        raise
    except Exception as err:
        raise RunError(f"{path} is damaged ({err})") from None
    model = create_model(info["model"], len(info["classes"]))
    model.load_state_dict(state)
    return TrainedModel(model.eval(), tuple(info["classes"]), info, Path(run))


def run_labels(listing: DatasetListing, trained: TrainedModel) -> torch.Tensor:
    """``(len(listing.classes),)`` the run's index of each DATA class (-1 for a class not in use).

    Raises:
        DatasetError: a class of DATA in use (with images) is not a class of the run.
    """
    index = {c: i for i, c in enumerate(trained.classes)}
    unknown = [c for c, items in listing.by_class().items() if items and c not in index]  # an empty one is harmless
    if unknown:
        known = ", ".join(trained.classes[:10]) + (", ..." if len(trained.classes) > 10 else "")
        raise DatasetError(
            f"class folder {unknown[0]!r} of {listing.root}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f" is not a class of the run {trained.run} (its {len(trained.classes)} classes: {known})"
        )
    return torch.tensor([index.get(c, -1) for c in listing.classes])
