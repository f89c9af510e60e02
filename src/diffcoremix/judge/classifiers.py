"""The judge's classifiers: networks that name what a generated image shows, by spec string.

One protocol, :class:`Classifier`: ``preprocess`` turns an RGB image into a tensor, ``classify`` turns a batch into
an index over the classifier's own ``classes`` and its confidence. Specs:

- ``resnet20:PATH``, ``resnet56:PATH``, ``cifar-resnet:PATH``: the CIFAR-10 ResNets of ``../shared/models`` (any
  depth 6n + 2 for ``cifar-resnet``), their logits head over CIFAR-10's classes;
- ``run:PATH``, or a PATH that is a folder: a finished ``diffcoremix train`` run, with its classes and its
  evaluation transform;
- any embedder spec with a text tower (``tiny``, ``open_clip:...``, ``hf:...``): zero-shot over OUT's classes,
  "a photo of a {class}".

``id`` names the network, its weights and (zero-shot) its class texts: a judgement is reused only under the same
id. ``model_id`` names the network and weights alone, as an embedder id does, so that the judge can refuse to be
the filter's embedder (a run of a CIFAR ResNet is named as ``resnet20:RUN/model.pt`` names it as an embedder).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from diffcoremix.embedders.models import (
    EMBEDDERS,
    Embedder,
    cifar_resnet_id,
    cifar_resnet_transform,
    load_embedder,
)
from diffcoremix.embedders.resnet20 import CIFAR10_CLASSES, CifarResNet, load_cifar_resnet
from diffcoremix.errors import ConfigError, DiffCoReMixError, ModelLoadError, UnknownNameError
from diffcoremix.identities import weights_sha256
from diffcoremix.registry import Registry

ZERO_SHOT_TEMPLATE = "a photo of a {}"
"""The zero-shot judge's text for a class (the prompt word of its folder)."""
CLIP_LOGIT_SCALE = 100.0
"""Zero-shot confidences are the softmax of this times the cosine similarities (CLIP's trained logit scale)."""
RUN_FOLDER = "a train RUN folder"
"""How an unknown-spec error names the run-folder form."""


class JudgeError(DiffCoReMixError):
    """The judge cannot be used as asked (no text tower, no class in common with OUT, the filter's own embedder)."""


class Classifier(Protocol):
    """Labels images with one of its own classes."""

    id: str
    """Names the network, its weights and its classes: judgements are reused only under the same id."""
    model_id: str
    """Names the network and its weights alone (an embedder id, for the never-the-filter's-embedder check)."""
    classes: tuple[str, ...]
    """Its class names; ``classify``'s indices point into them."""

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An RGB image -> a ``(C, H, W)`` float tensor ready for :meth:`classify`."""
        ...

    def classify(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` -> ``(B,)`` long class indices and ``(B,)`` float32 confidences in [0, 1], on the CPU."""
        ...


class ModuleClassifier:
    """A torch module whose outputs are logits over ``classes``, with its own transform."""

    def __init__(self, module: torch.nn.Module, transform: Callable[[Image.Image], torch.Tensor],
                 classes: Sequence[str], id: str, device: str = "cpu") -> None:  # fmt: skip
        self.module: Any = module.eval().to(device)
        self.transform = transform
        self.classes = tuple(classes)
        self.id = self.model_id = id
        self.device = device

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    @torch.inference_mode()
    def classify(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _top1(self.module(batch.to(self.device)).float())


class ZeroShotClassifier:
    """An image-text embedder choosing among class texts: the class whose "a photo of a {class}" is most similar.

    Args:
        embedder: an embedder with a text tower.
        classes: the class names (OUT's class folders).
        names: the word of each class in the text (its prompt word); by default the class names.
    """

    def __init__(self, embedder: Embedder, classes: Sequence[str], names: Sequence[str] | None = None) -> None:
        if not embedder.has_text:
            raise JudgeError(f"embedder {embedder.id} has no text tower: it cannot name classes zero-shot")
        self.embedder = embedder
        self.classes = tuple(classes)
        self.texts = tuple(ZERO_SHOT_TEMPLATE.format(n) for n in (names or classes))
        digest = hashlib.sha256("\n".join(self.texts).encode("utf-8")).hexdigest()[:8]
        self.model_id = embedder.id
        self.id = f"zero-shot:{embedder.id}:{digest}"
        self._text: torch.Tensor | None = None

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.embedder.preprocess(image)

    def classify(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._text is None:  # the class texts' unit embeddings, once
            self._text = self.embedder.embed_texts(self.texts)
        images = self.embedder.embed_images(batch)
        return _top1(CLIP_LOGIT_SCALE * images @ self._text.T)


def _top1(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    confidence, index = logits.softmax(dim=1).max(dim=1)
    return index.cpu(), confidence.float().cpu()


ClassifierFactory = Callable[[str, str, Mapping[str, str]], Classifier]
"""``factory(argument, device, out_classes)``; ``out_classes`` maps OUT's class folders to their prompt words."""

CLASSIFIERS: Registry[ClassifierFactory] = Registry("classifier")
"""Spec prefix -> factory; embedder specs with a text tower are understood besides (zero-shot)."""


def cifar_resnet_classifier(path: str | Path, device: str = "cpu", depth: int | None = None) -> ModuleClassifier:
    """A CIFAR-10 ResNet checkpoint's logits over CIFAR-10's classes (images resized to 32 x 32).

    Raises:
        ModelLoadError: the checkpoint does not exist, is not a CIFAR ResNet of ``depth``, or has not 10 outputs.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{'CIFAR ResNet' if depth is None else f'ResNet-{depth}'} checkpoint {path} does not "
                             "exist")  # fmt: skip
    model = load_cifar_resnet(path, depth=depth)
    if model.linear.out_features != len(CIFAR10_CLASSES):
        raise ModelLoadError(f"{path} has {model.linear.out_features} outputs: the class names of a CIFAR ResNet "
                             "are known for CIFAR-10's 10 only (judge with a train RUN on your classes)")  # fmt: skip
    return ModuleClassifier(model, cifar_resnet_transform(), CIFAR10_CLASSES, cifar_resnet_id(path, model.depth),
                            device)  # fmt: skip


def run_classifier(path: str | Path, device: str = "cpu") -> ModuleClassifier:
    """The final model of a finished ``diffcoremix train`` run, with its classes and its evaluation transform.

    Raises:
        RunError: the folder is not a finished training run.
    """
    from diffcoremix.train.run import MODEL_FILE, load_run
    from diffcoremix.train.transforms import for_run

    trained = load_run(path)
    digest = weights_sha256(Path(path) / MODEL_FILE)[:16]
    classifier = ModuleClassifier(trained.model, for_run(trained.info), trained.classes,
                                  f"run:{trained.info.get('model')}:{digest}", device)  # fmt: skip
    if isinstance(trained.model, CifarResNet):  # as the embedder resnet20:RUN/model.pt names the same weights
        classifier.model_id = cifar_resnet_id(Path(path) / MODEL_FILE, trained.model.depth)
    return classifier


@CLASSIFIERS.register("resnet20")
def _resnet20(argument: str, device: str, out_classes: Mapping[str, str]) -> Classifier:
    return cifar_resnet_classifier(argument, device, depth=20)


@CLASSIFIERS.register("resnet56")
def _resnet56(argument: str, device: str, out_classes: Mapping[str, str]) -> Classifier:
    return cifar_resnet_classifier(argument, device, depth=56)


@CLASSIFIERS.register("cifar-resnet")
def _cifar_resnet(argument: str, device: str, out_classes: Mapping[str, str]) -> Classifier:
    return cifar_resnet_classifier(argument, device)


@CLASSIFIERS.register("run")
def _run(argument: str, device: str, out_classes: Mapping[str, str]) -> Classifier:
    return run_classifier(argument, device)


TEXT_EMBEDDERS = ("hf", "open_clip", "tiny")
"""Embedder kinds with a text tower: zero-shot judges."""


def load_classifier(spec: str, device: str = "cpu", out_classes: Mapping[str, str] | None = None) -> Classifier:
    """A classifier from its spec (``resnet56:PATH``, ``run:RUN`` or ``RUN``, ``tiny``, ``open_clip:...``).

    Args:
        spec: the classifier spec.
        device: where the model runs.
        out_classes: OUT's class folders -> their prompt words, in label order: the classes of a zero-shot judge.

    Raises:
        UnknownNameError: the spec is none of the above. ModelLoadError, EmbedderLoadError, RunError: the weights
            cannot be loaded. JudgeError: an embedder without a text tower.
    """
    if not spec:
        raise ConfigError("classifier", spec, "a classifier spec (resnet56:PATH, run:RUN, tiny, open_clip:...)")
    kind, _, argument = spec.partition(":")
    out_classes = out_classes or {}
    if kind in CLASSIFIERS:  # registered names first, then embedders, then folders (as --config finds presets)
        return CLASSIFIERS.get(kind)(argument, device, out_classes)
    if kind not in EMBEDDERS:
        if Path(spec).is_dir():
            return run_classifier(spec, device)
        raise UnknownNameError("classifier", kind, [*sorted([*CLASSIFIERS.names(), *TEXT_EMBEDDERS]), RUN_FOLDER])
    embedder = load_embedder(spec, device, option="--classifier")
    if not embedder.has_text:
        raise JudgeError(f"embedder {spec} has no text tower: it cannot name classes zero-shot; use one of "
                         f"{', '.join(TEXT_EMBEDDERS)}, a CIFAR ResNet or a train RUN")  # fmt: skip
    return ZeroShotClassifier(embedder, list(out_classes), list(out_classes.values()))
