"""The training methods: one table entry each, saying everything a method means, so that adding a peer is one entry.

A method is four choices (timm keeps its models in one registry the same way):

- **samples**: what an epoch holds: the real images, the real and the accepted synthetic ones, or the synthetic ones
  alone;
- **partners**: where each sample's partner comes from: none, its own counterpart (else one of its class), any
  synthetic image of any class, or (for a synthetic sample) its own real source;
- **mixer**: what runs on each batch (:data:`diffcoremix.mix.MIXERS`), and which recipe options it takes;
- **label**: what a mixed or swapped sample is trained on.

The synthetic usage modes are DiffDA-Eval's (Zhang et al., "UniDiffDA", IJCV 2026, github.com/nukezil/DiffDA-Eval):
``fc`` (full concatenation: add them), ``fr`` (full replacement: train on them alone), ``lrr`` (local random
replacement: a sample becomes one of its own counterparts with probability p, label kept unless the counterpart has
a soft label), ``grr`` (global random
replacement: a sample becomes any synthetic image, with that image's label, with probability p). DiffCoRe-Mix's
pixel and patch mixing (``diffcoremix``, alias ``mix``) is a fifth way. p is the recipe's ``mix_prob``
(``--synthetic-prob``). Soft labels come from the manifest wherever a generated image has one.

This module holds data only (no torch): the CLI reads it for its help; ``train`` builds the dataset and the mixer
from an entry (:func:`diffcoremix.train.data.paired_dataset` and the loop's ``_mixer``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from diffcoremix.errors import UnknownNameError
from diffcoremix.registry import Registry

Usage = Literal["none", "fc", "fr", "lrr", "grr", "mix"]
"""How synthetic images enter training (DiffDA-Eval's four modes, and mixing); ``none``: they do not."""
Samples = Literal["real", "real+synthetic", "synthetic"]
PartnerSource = Literal["none", "own", "any", "source"]
LabelRule = Literal["kept", "real", "partner", "batch"]


@dataclass(frozen=True)
class TrainMethod:
    """One training method: samples, partners, mixer and label rule."""

    name: str
    summary: str
    """One line, for ``--help`` and listings."""
    usage: Usage
    samples: Samples = "real"
    """real; real+synthetic (the accepted generated images are extra samples); synthetic (they alone)."""
    partners: PartnerSource = "none"
    """none; own (the sample's own accepted counterpart, else one of its class: ``--partners`` may make it another
    real image of the class, or none); any (any accepted generated image, of any class); source (a generated sample's
    own real source image)."""
    mixer: str | None = None
    """A :data:`diffcoremix.mix.MIXERS` name; None: the batch passes through unchanged."""
    mixer_options: Mapping[str, str] = field(default_factory=dict)
    """Mixer keyword -> the recipe (:class:`~diffcoremix.train.config.TrainConfig`) field that gives its value."""
    label: LabelRule = "kept"
    """kept: each sample's own target (its soft label where it has one); real: a mixed sample keeps the real image's
    label, weighed with its partner's soft label by the realised share when the set has soft labels; partner: a
    swapped sample takes its partner's label; batch: weighted with the batch partner's label (MixUp, CutMix)."""
    aliases: tuple[str, ...] = ()
    """Older or other names that mean this method."""

    @property
    def uses_prob(self) -> bool:
        """Whether ``mix_prob`` (``--synthetic-prob``) is a setting of this method."""
        return "mix_prob" in self.mixer_options.values()

    def needs_synthetic(self, partners: str = "generated") -> bool:
        """Whether the method reads a generation output (``--synthetic``), with ``--partners partners``."""
        if self.samples != "real" or self.partners in ("any", "source"):
            return True
        return self.partners == "own" and partners == "generated"


TRAIN_METHODS: Registry[TrainMethod] = Registry("method")
_PAIR = {"p": "mix_prob", "alpha": "mix_alpha", "grid": "grid"}
_ENTRIES = (
    TrainMethod("none", "no augmentation", "none"),
    TrainMethod("mixup", "MixUp within the batch", "none", mixer="mixup", mixer_options={"alpha": "mix_alpha"},
                label="batch"),
    TrainMethod("cutmix", "CutMix within the batch", "none", mixer="cutmix", mixer_options={"alpha": "mix_alpha"},
                label="batch"),
    TrainMethod("fc", "full concatenation: the accepted synthetic images are extra samples", "fc",
                samples="real+synthetic", aliases=("synthetic-add",)),
    TrainMethod("fr", "full replacement: train on the accepted synthetic images alone", "fr", samples="synthetic"),
    TrainMethod("lrr", "local random replacement: a sample becomes its own counterpart with probability p, label "
                "kept (DA-Fusion)", "lrr", partners="own", mixer="substitute", mixer_options={"p": "mix_prob"},
                label="real", aliases=("synthetic-sub",)),
    TrainMethod("grr", "global random replacement: a sample becomes any synthetic image, with that image's label, "
                "with probability p (Diff-Mix)", "grr", partners="any", mixer="substitute",
                mixer_options={"p": "mix_prob"}, label="partner"),
    TrainMethod("diffcoremix", "DiffCoRe-Mix: pixel or patch mixing with the own counterpart, probability p", "mix",
                partners="own", mixer="diffcoremix", mixer_options=_PAIR, label="real", aliases=("mix",)),
    TrainMethod("diffcoremix-pixel", "DiffCoRe-Mix at pixel level only", "mix", partners="own", mixer="pixel",
                mixer_options=_PAIR, label="real", aliases=("mix-pixel",)),
    TrainMethod("diffcoremix-patch", "DiffCoRe-Mix at patch level only", "mix", partners="own", mixer="patch",
                mixer_options=_PAIR, label="real", aliases=("mix-patch",)),
    TrainMethod("diffusemix", "DiffuseMix: each synthetic sample joined by halves with its source, a fractal blended "
                "in at 0.2, added (fc)", "fc", samples="real+synthetic", partners="source", mixer="diffusemix",
                mixer_options={"mean": "mean", "std": "std"}),
)  # fmt: skip
for _method in _ENTRIES:
    TRAIN_METHODS.add(_method.name, _method)

ALIASES: dict[str, str] = {alias: name for name in TRAIN_METHODS for alias in TRAIN_METHODS.get(name).aliases}
"""Alias -> method name."""
METHODS: tuple[str, ...] = tuple(m.name for m in _ENTRIES)
"""Every training method's name (aliases aside), in the table's order: the baselines first."""
PAIR_METHODS: tuple[str, ...] = tuple(n for n in METHODS if TRAIN_METHODS.get(n).partners == "own")
"""Methods whose partner is the sample's own counterpart: ``--partners`` (generated, real, none) applies."""


def method_name(name: str) -> str:
    """The method's name for ``name`` or one of its aliases.

    Raises:
        UnknownNameError: neither; the message lists the methods and their aliases.
    """
    if name in TRAIN_METHODS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise UnknownNameError("method", name, [*METHODS, *sorted(ALIASES)])


def get_method(name: str) -> TrainMethod:
    """The table entry of a method name or alias (see :func:`method_name`)."""
    return TRAIN_METHODS.get(method_name(name))
