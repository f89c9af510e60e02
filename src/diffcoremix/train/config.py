"""The training recipe (METHOD.md §8): one frozen dataclass, the same for every method, option names as timm's
``train.py`` (``--epochs``, ``--batch-size``, ``--lr``, ``--weight-decay``, ``--smoothing``, ``--warmup-epochs``,
``--img-size``, ``--seed``, ``--amp``, ``--channels-last``), plus ``--max-steps`` for an optimizer-step budget.

Shipped presets (``--config cifar`` , ``--config finegrained``) hold one recipe per setting; ``configs/default.yaml``
holds the defaults below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from diffcoremix.config import check_types, require
from diffcoremix.train.methods import METHODS, PAIR_METHODS, TrainMethod, get_method, method_name

Method = str
"""A training method's name or alias (:data:`diffcoremix.train.methods.TRAIN_METHODS`)."""


@dataclass(frozen=True)
class TrainConfig:
    """How a classifier is trained: model, method and recipe (every method of a comparison shares the recipe)."""

    model: str = "resnet20"
    """A timm model name, or ``resnet20`` (the CIFAR ResNet-20 of this project)."""
    pretrained: bool = False
    """Start from the model's pretrained timm weights (needs them in the Hugging Face cache or a network)."""
    init: str | None = None
    """A checkpoint to start from: a state dict file (``.pt``, ``.pth``, ``.th``, ``.safetensors``), e.g. the
    shared ``resnet20_cifar10.th``; its classifier layer is dropped when the class count differs."""
    method: Method = "none"
    """none, mixup, cutmix; how synthetic images enter (--usage): fc (added; alias synthetic-add), fr (alone), lrr
    (a sample becomes its own counterpart with probability mix_prob; alias synthetic-sub), grr (a sample becomes any
    synthetic image, with its label, with probability mix_prob), diffcoremix (pixel or patch mixing with probability
    mix_prob; alias mix), diffcoremix-pixel, diffcoremix-patch, diffusemix (added, each joined by halves with its
    source and blended with a fractal). An alias is stored as the method's name."""
    partners: Literal["generated", "real", "none"] = "generated"
    """Partners of the pair methods: generated (accepted counterparts from --synthetic), real (another real
    image of the class: the bound of a perfect generator) or none (never mixed)."""
    mix_prob: float = 0.5
    """--synthetic-prob: probability that a sample is mixed (diffcoremix*) or replaced (lrr, grr)."""
    mix_alpha: float = 1.0
    """Beta(alpha, alpha) of the pixel weight (diffcoremix*) and of MixUp / CutMix."""
    grid: int = 4
    """Patch grid g of diffcoremix's patch mixing (g x g cells)."""
    img_size: int = 32
    """Side of the (square) training and evaluation images, in pixels."""
    transform: Literal["cifar", "imagenet", "none"] = "cifar"
    """Training transform: cifar (pad 4 + random crop + flip), imagenet (random resized crop + flip) or none
    (resize only). Evaluation always resizes (imagenet: resize to 1.14x and centre-crop)."""
    mean: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
    """Per-channel mean for normalisation (one value: the same for R, G and B)."""
    std: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
    """Per-channel standard deviation for normalisation."""
    batch_size: int = 128
    """Images per optimizer step (over all processes when distributed)."""
    epochs: int = 30
    """Epochs to train, unless max_steps is set."""
    max_steps: int | None = None
    """An optimizer-step budget (overrides epochs; equal budgets make methods comparable)."""
    opt: Literal["sgd", "adamw"] = "sgd"
    """Optimizer: sgd (with momentum and Nesterov as below) or adamw."""
    lr: float = 0.1
    """Peak learning rate (after warmup)."""
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = True
    """Nesterov momentum for SGD."""
    weight_decay: float = 5e-4
    """Weight decay (not applied to biases and normalisation weights)."""
    warmup_epochs: float = 1.0
    """Linear warmup length in epochs, then a cosine schedule to zero at the end of the budget."""
    smoothing: float = 0.0
    """Label smoothing."""
    amp: bool = False
    """Mixed precision on CUDA (autocast; fp16 adds a gradient scaler). Ignored, with a warning, on CPU."""
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    """Mixed-precision dtype."""
    channels_last: bool = False
    """Channels-last memory format (CUDA)."""
    torchcompile: bool = False
    """torch.compile the model."""
    seed: int = 0
    """Seeds the model's initialisation, data order, transforms, partners and mixing."""
    workers: int = 0
    """DataLoader worker processes (results do not depend on it)."""
    device: str = "auto"
    """cuda, cpu, mps, or auto."""
    val_split: float = 0.0
    """Hold out this share of DATA, stratified by class and seeded, for validation (when no --val is given)."""
    allow_duplicates: bool = False
    """Read a file that links make an image of two classes of DATA, --val or --test (a class folder linked to
    another's, a file linked into two) under both labels, with a warning; else such a dataset is refused."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (0: at the end of every epoch)."""
    log_every: int = 1
    """Write a step line to metrics.jsonl every this many steps."""

    def __post_init__(self) -> None:
        check_types(self)
        object.__setattr__(self, "method", method_name(self.method))  # an alias is stored as the method's name
        require(self.mix_prob >= 0 and self.mix_prob <= 1, "mix_prob", self.mix_prob, "in [0, 1]")
        require(self.mix_alpha > 0, "mix_alpha", self.mix_alpha, "> 0")
        require(self.grid >= 1, "grid", self.grid, ">= 1")
        require(self.img_size >= 8, "img_size", self.img_size, ">= 8")
        require(len(self.mean) in (1, 3) and len(self.std) == len(self.mean), "mean", self.mean,
                "1 or 3 values, as many as std")  # fmt: skip
        require(all(s > 0 for s in self.std), "std", self.std, "all > 0")
        require(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        require(self.epochs >= 1, "epochs", self.epochs, ">= 1")
        require(self.max_steps is None or self.max_steps >= 1, "max_steps", self.max_steps, ">= 1 or null")
        require(self.lr > 0, "lr", self.lr, "> 0")
        require(0 <= self.momentum < 1, "momentum", self.momentum, "in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        require(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, ">= 0")
        require(0 <= self.smoothing < 1, "smoothing", self.smoothing, "in [0, 1)")
        require(self.workers >= 0, "workers", self.workers, ">= 0")
        require(0 <= self.val_split < 1, "val_split", self.val_split, "in [0, 1)")
        require(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, ">= 0")
        require(self.log_every >= 1, "log_every", self.log_every, ">= 1")

    @property
    def entry(self) -> TrainMethod:
        """The method's table entry (samples, partners, mixer, label rule)."""
        return get_method(self.method)

    @property
    def uses_partners(self) -> bool:
        """Whether the method pairs each sample with a partner (its own counterpart, any synthetic image or its
        source); ``--partners none`` turns the own-counterpart pairing off."""
        partners = self.entry.partners
        return partners in ("any", "source") or (partners == "own" and self.partners != "none")

    @property
    def needs_synthetic(self) -> bool:
        """Whether the method reads a generation output (--synthetic)."""
        return self.entry.needs_synthetic(self.partners)


__all__ = ["METHODS", "PAIR_METHODS", "Method", "TrainConfig"]
