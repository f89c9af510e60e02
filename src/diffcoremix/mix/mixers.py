"""Mixers as modules (METHOD.md §7 and the baselines), all with one call signature and explicit generators.

Every mixer takes the collated batch of :func:`diffcoremix.mix.collate_pairs` as keyword arguments, plus an
optional generator: ``mixer(**batch, generator=g)``, that is
``mixer(x, y, partner=..., has_partner=..., partner_rule=..., partner_y=..., generator=...) -> MixOutput``;
a :class:`MixOutput` unpacks as ``images, targets`` like timm's and torchvision's mixers.

- ``pixel``, ``patch``, ``diffcoremix``: mix each real image with its own partner (a generated counterpart);
  ``diffcoremix`` mixes a sample with probability ``p``, choosing pixel or patch with equal odds. Samples without
  a partner pass through unchanged. Targets stay the real label (hard), or with ``soft_targets`` become
  ``lam * onehot(y) + (1 - lam) * onehot(partner_y)``, ``lam`` the realised real share (for partners with a soft
  label, e.g. cross-class images: ``partner_y`` is then their ``(B, K)`` soft targets, used as they are).
- ``mixup``, ``cutmix``: the classical baselines, mixing the batch with itself rolled by one (torchvision v2's
  pairing, box rule and label weights), soft targets; ``num_classes`` is required when they are built.
- ``substitute``: DA-Fusion-style synthetic substitution: with probability ``p`` the real image is replaced by its
  partner; the label is kept, or with ``soft_targets`` a substituted sample takes its partner's target
  (``partner_y``: a soft label).
- ``diffusemix``: DiffuseMix's pixel operation (:class:`HalvesFractal`): here ``x`` is a generated (edited) image
  and ``partner`` its original; they are joined by halves, then a seeded procedural fractal is blended in at 0.2;
  the label is kept. A US patent record (US12657783B1) covers this concatenation and fractal blending.

Example:
    >>> import torch
    >>> mixer = make_mixer("diffcoremix", p=1.0)
    >>> x, partner = torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
    >>> images, targets = mixer(x=x, y=torch.tensor([0, 1]), partner=partner, generator=torch.Generator())
    >>> images.shape, targets.tolist()
    (torch.Size([2, 3, 8, 8]), [0, 1])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from diffcoremix.errors import ConfigError
from diffcoremix.mix.fractals import fractal_bank
from diffcoremix.mix.functional import (
    blend,
    patch_lambda,
    pixel_mix,
    sample_beta,
    sample_cells,
    select,
    upsample_cells,
)
from diffcoremix.registry import Registry

Tensor = torch.Tensor

KIND_NONE, KIND_PIXEL, KIND_PATCH, KIND_SUBSTITUTE, KIND_BATCH, KIND_COMBINED = 0, 1, 2, 3, 4, 5
"""Codes of ``MixOutput.kind``: unchanged, pixel-mixed, patch-mixed, substituted, mixed within the batch, combined
(DiffuseMix: joined by halves with the partner, then a fractal blended in)."""


@dataclass(frozen=True)
class MixOutput:
    """A mixed batch; unpacks as ``images, targets`` (like timm's ``Mixup`` and torchvision's ``MixUp``)."""

    images: Tensor
    """``(B, C, H, W)``, the input's dtype."""
    targets: Tensor
    """``(B,)`` int64 hard labels, or ``(B, K)`` float soft targets."""
    lam: Tensor
    """``(B,)`` realised share of the real (first) image; 1 where a sample was not mixed."""
    kind: Tensor
    """``(B,)`` int8 codes (``KIND_*``)."""

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.images, self.targets))


class Mixer(Protocol):
    """What every registered mixer is: a callable on the collated batch's keyword arguments."""

    def __call__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        partner: Tensor | None = None,
        has_partner: Tensor | None = None,
        partner_rule: Tensor | None = None,
        partner_y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MixOutput:
        """Mix a batch.

        Args:
            x: ``(B, C, H, W)`` real images.
            y: ``(B,)`` labels (or ``(B, K)`` soft targets).
            partner: ``(B, C, H, W)`` each real image's partner (the pair mixers need it; the batch mixers
                pair the batch with itself and ignore it).
            has_partner: ``(B,)`` bool; samples without a partner are never mixed (default: all have one).
            partner_rule: ``(B,)`` the rule that chose each partner (``PARTNER_*``); accepted so that
                ``mixer(**batch)`` works, reported for logging, not used by the mixing.
            partner_y: ``(B,)`` the partners' labels, or ``(B, K)`` their soft targets, for soft targets (default:
                ``y``).
            generator: the only source of randomness (a CPU generator).
        """
        ...


@dataclass(frozen=True)
class PairParams:
    """One draw of a pair mixer: replay it with :meth:`PairMix.apply_params`."""

    mix: Tensor
    """``(B,)`` bool: mix this sample."""
    patch: Tensor
    """``(B,)`` bool: by patch (else by pixel)."""
    lam: Tensor
    """``(B,)`` pixel-mixing weights of the real image."""
    cells: Tensor
    """``(B, g, g)`` bool patch cells taken from the partner."""


@dataclass(frozen=True)
class BatchParams:
    """One draw of a batch mixer (MixUp, CutMix): replay it with :meth:`MixUp.apply_params`."""

    lam: float
    """The ``Beta(alpha, alpha)`` draw: MixUp's weight of the batch, CutMix's box size rule."""
    box: tuple[int, int, int, int] | None = None
    """CutMix's box ``(x1, y1, x2, y2)``, pasted from the batch rolled by one; None for MixUp."""


def _partnered(has_partner: Tensor | None, batch: int) -> Tensor:
    """``(B,)`` bool on the CPU: which samples have a partner (all, when not said)."""
    return torch.ones(batch, dtype=torch.bool) if has_partner is None else has_partner.cpu().bool()


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(name, value, "in [0, 1]")


def _check_num_classes(num_classes: int | None, needed_by: str) -> None:
    if num_classes is None or num_classes < 1:
        raise ConfigError("num_classes", num_classes, f"an int >= 1 for {needed_by} (it builds one-hot targets)")


def one_hot(y: Tensor, num_classes: int | None) -> Tensor:
    """``(B, K)`` float targets: ``y`` itself when already soft, else its one-hot encoding."""
    if y.ndim == 2:
        return y.float()
    if num_classes is None:
        raise ValueError("soft targets need num_classes")
    return nn.functional.one_hot(y.long(), num_classes).float()


def _soft_targets(y: Tensor, partner_y: Tensor | None, lam: Tensor, num_classes: int | None) -> Tensor:
    """``(B, K)`` targets ``lam * onehot(y) + (1 - lam) * onehot(partner_y)`` (``partner_y`` default ``y``); a
    ``(B, K)`` label (a soft one) is used as it is, ``lam`` is the realised ``(B,)`` share of the real image."""
    other = y if partner_y is None else partner_y
    w = lam.reshape(-1, 1)
    return w * one_hot(y, num_classes) + (1 - w) * one_hot(other, num_classes)


class PairMix(nn.Module):
    """Mixes each real image with its own partner, at pixel level, patch level, or either.

    Args:
        mode: ``pixel``, ``patch`` or ``both`` (pixel or patch with equal odds per sample).
        p: probability that a sample (with a partner) is mixed.
        alpha: Beta(alpha, alpha) for the pixel weight.
        grid: patch grid size g.
        rho: fixed patch-cell probability; None draws it per sample from U(0, 1).
        soft_targets: mix the one-hot labels by the realised lambda (needs ``num_classes``, and ``partner_y`` at
            call time for cross-class partners).
        num_classes: for soft targets.

    Raises:
        ConfigError: a value out of range, or ``soft_targets`` without ``num_classes``.
    """

    def __init__(
        self,
        mode: Literal["pixel", "patch", "both"] = "both",
        p: float = 0.5,
        alpha: float = 1.0,
        grid: int = 4,
        rho: float | None = None,
        soft_targets: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("pixel", "patch", "both"):
            raise ConfigError("mode", mode, "one of 'pixel', 'patch', 'both'")
        _check_probability("p", p)
        if rho is not None:
            _check_probability("rho", rho)
        if alpha <= 0:
            raise ConfigError("alpha", alpha, "> 0")
        if grid < 1:
            raise ConfigError("grid", grid, ">= 1")
        if soft_targets:
            _check_num_classes(num_classes, "soft_targets")
        self.mode, self.p, self.alpha, self.grid, self.rho = mode, p, alpha, grid, rho
        self.soft_targets, self.num_classes = soft_targets, num_classes

    def sample(self, batch: int, generator: torch.Generator | None = None) -> PairParams:
        """Draw the parameters for a batch of ``batch`` samples."""
        mix = torch.rand(batch, generator=generator) < self.p
        if self.mode == "both":
            patch = torch.rand(batch, generator=generator) < 0.5
        else:
            patch = torch.full((batch,), self.mode == "patch")
        lam = sample_beta(batch, self.alpha, generator)
        rho = None if self.rho is None else torch.full((batch,), self.rho)
        cells = sample_cells(batch, self.grid, rho, generator)
        return PairParams(mix, patch, lam, cells)

    def apply_params(
        self,
        x: Tensor,
        y: Tensor,
        partner: Tensor,
        params: PairParams,
        has_partner: Tensor | None = None,
        partner_y: Tensor | None = None,
    ) -> MixOutput:
        """Apply a draw (from :meth:`sample`, or made by hand)."""
        batch = x.shape[0]
        mix = params.mix & _partnered(has_partner, batch)
        by_patch = mix & params.patch
        by_pixel = mix & ~params.patch
        # One weight map for the whole batch (1 = real): lam for pixel samples, the cell mask for patch samples,
        # 1 for the rest; then a single fused blend, so the cost does not grow with the number of modes.
        # The map is built at grid resolution and upsampled once.
        height, width = x.shape[-2:]
        shape = (batch, 1, 1)
        cell_weight = torch.where(by_pixel.reshape(shape), params.lam.float().reshape(shape), 1.0)
        cell_weight = torch.where(by_patch.reshape(shape), (~params.cells).float(), cell_weight)
        weight = upsample_cells(cell_weight.to(x.device), height, width)
        images = blend(x, partner, weight) if mix.any() else x.clone()
        lam = torch.ones(batch)
        lam = torch.where(by_pixel, params.lam, lam)
        lam = torch.where(by_patch, patch_lambda(params.cells, height, width), lam)
        kind = torch.where(by_patch, KIND_PATCH, torch.where(by_pixel, KIND_PIXEL, KIND_NONE)).to(torch.int8)
        targets = _soft_targets(y, partner_y, lam.to(x.device), self.num_classes) if self.soft_targets else y
        return MixOutput(images, targets, lam, kind)

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        *,
        partner: Tensor | None = None,
        has_partner: Tensor | None = None,
        partner_rule: Tensor | None = None,
        partner_y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MixOutput:
        """Mix a batch (see :class:`Mixer` for the arguments); ``partner`` is required."""
        if partner is None:
            raise ValueError(f"{type(self).__name__} needs a partner batch")
        return self.apply_params(x, y, partner, self.sample(x.shape[0], generator), has_partner, partner_y)


class MixUp(nn.Module):
    """MixUp within the batch (partner = the batch rolled by one, as torchvision v2), one lambda per batch.

    Args:
        alpha: Beta(alpha, alpha) for lambda.
        num_classes: the number of classes, for the one-hot targets (required).

    Raises:
        ConfigError: ``num_classes`` missing or < 1, or ``alpha`` <= 0.
    """

    def __init__(self, alpha: float = 1.0, num_classes: int | None = None) -> None:
        super().__init__()
        _check_num_classes(num_classes, type(self).__name__)
        if alpha <= 0:
            raise ConfigError("alpha", alpha, "> 0")
        self.alpha, self.num_classes = alpha, num_classes

    def sample(self, height: int, width: int, generator: torch.Generator | None = None) -> BatchParams:
        """Draw the parameters for a batch of ``height x width`` images."""
        return BatchParams(float(sample_beta(1, self.alpha, generator)[0]))

    def mix(self, x: Tensor, params: BatchParams) -> tuple[Tensor, float]:
        """The mixed batch and the realised lambda (the share of each sample's own image)."""
        return pixel_mix(x, x.roll(1, 0), torch.full((x.shape[0],), params.lam)), params.lam

    def apply_params(self, x: Tensor, y: Tensor, params: BatchParams) -> MixOutput:
        """Apply a draw (from :meth:`sample`, or made by hand); targets are weighed by the realised lambda."""
        images, lam = self.mix(x, params)
        targets = one_hot(y, self.num_classes).to(x.device)
        targets = lam * targets + (1 - lam) * targets.roll(1, 0)
        batch = x.shape[0]
        return MixOutput(images, targets, torch.full((batch,), lam), torch.full((batch,), KIND_BATCH, dtype=torch.int8))

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        *,
        partner: Tensor | None = None,
        has_partner: Tensor | None = None,
        partner_rule: Tensor | None = None,
        partner_y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MixOutput:
        """Mix a batch with itself rolled by one; the ``partner*`` arguments are accepted and not used."""
        return self.apply_params(x, y, self.sample(x.shape[-2], x.shape[-1], generator))


def cutmix_box(
    lam: float, height: int, width: int, generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """torchvision v2's CutMix box: a centre drawn uniformly, sides ``sqrt(1 - lam)`` of the image, clipped.

    Returns:
        ``(x1, y1, x2, y2)``; with ``generator=None`` the draws (column, then row) come from torch's global
        generator, in the same order as torchvision's ``CutMix.make_params``.
    """
    r_x = int(torch.randint(width, (1,), generator=generator))
    r_y = int(torch.randint(height, (1,), generator=generator))
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * width), int(r * height)
    return max(r_x - half_w, 0), max(r_y - half_h, 0), min(r_x + half_w, width), min(r_y + half_h, height)


def cutmix_apply(x: Tensor, box: tuple[int, ...]) -> tuple[Tensor, float]:
    """Paste ``box`` of the batch rolled by one into the batch; returns the images and the realised lambda."""
    x1, y1, x2, y2 = box
    out = x.clone()
    out[..., y1:y2, x1:x2] = x.roll(1, 0)[..., y1:y2, x1:x2]
    return out, 1.0 - (x2 - x1) * (y2 - y1) / (x.shape[-1] * x.shape[-2])


class CutMix(MixUp):
    """CutMix within the batch, with torchvision v2's pairing, box rule and label weights."""

    def sample(self, height: int, width: int, generator: torch.Generator | None = None) -> BatchParams:
        """Draw lambda, then the box it sizes."""
        lam = float(sample_beta(1, self.alpha, generator)[0])
        return BatchParams(lam, cutmix_box(lam, height, width, generator))

    def mix(self, x: Tensor, params: BatchParams) -> tuple[Tensor, float]:
        if params.box is None:
            raise ValueError("CutMix needs a box in its params (BatchParams.box)")
        return cutmix_apply(x, params.box)


class Substitute(nn.Module):
    """Synthetic substitution (DA-Fusion style): with probability p, a sample becomes its partner; label kept.

    Args:
        p: probability that a sample (with a partner) is substituted.
        soft_targets: ``(B, K)`` targets, ``lam * onehot(y) + (1 - lam) * onehot(partner_y)`` with ``lam`` 0 for a
            substituted sample and 1 otherwise: a substituted sample takes its partner's target (a soft label,
            given as ``(B, K)`` ``partner_y``; default ``y``). Needs ``num_classes``.
        num_classes: for soft targets.

    Raises:
        ConfigError: ``p`` outside [0, 1], or ``soft_targets`` without ``num_classes``.
    """

    def __init__(self, p: float = 0.5, soft_targets: bool = False, num_classes: int | None = None) -> None:
        super().__init__()
        _check_probability("p", p)
        if soft_targets:
            _check_num_classes(num_classes, "soft_targets")
        self.p, self.soft_targets, self.num_classes = p, soft_targets, num_classes

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        *,
        partner: Tensor | None = None,
        has_partner: Tensor | None = None,
        partner_rule: Tensor | None = None,
        partner_y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MixOutput:
        """Substitute within a batch (see :class:`Mixer` for the arguments); ``partner`` is required."""
        if partner is None:
            raise ValueError("Substitute needs a partner batch")
        batch = x.shape[0]
        swap = (torch.rand(batch, generator=generator) < self.p) & _partnered(has_partner, batch)
        images = select(partner, swap, x)
        lam = torch.where(swap, 0.0, 1.0)
        targets = _soft_targets(y, partner_y, lam.to(x.device), self.num_classes) if self.soft_targets else y
        return MixOutput(images, targets, lam, torch.where(swap, KIND_SUBSTITUTE, KIND_NONE).to(torch.int8))


def halves_weight(
    left_right: Tensor, band: float, height: int, width: int, device: torch.device | str | None = None
) -> Tensor:
    """``(B, 1, H, W)`` float32 weight of the first image when two are joined by halves (see :func:`halves`).

    Along the split axis, pixel ``i`` (centre ``t = i + 0.5``, side ``n``, band ``b = band * n`` pixels) weighs
    ``clamp((n / 2 + b / 2 - t) / b, 0, 1)``: 1 up to the band, a linear ramp across it, 0 after it; with ``band``
    0, 1 where ``t < n / 2`` (an odd side's middle pixel goes to the second image). Built on ``device`` (default
    the CPU) from the two 1-D profiles, so a batch on an accelerator copies no full-size map.
    """
    rows, cols = _ramp(height, band).to(device), _ramp(width, band).to(device)
    by_columns = cols.reshape(1, 1, 1, width).expand(1, 1, height, width)
    by_rows = rows.reshape(1, 1, height, 1).expand(1, 1, height, width)
    return torch.where(left_right.to(device=rows.device, dtype=torch.bool).reshape(-1, 1, 1, 1), by_columns, by_rows)


def _ramp(side: int, band: float) -> Tensor:
    centre = torch.arange(side, dtype=torch.float64) + 0.5
    pixels = band * side
    if pixels == 0:
        return (centre < side / 2).float()
    return ((side / 2 + pixels / 2 - centre) / pixels).clamp(0.0, 1.0).float()


def halves(first: Tensor, second: Tensor, left_right: Tensor, band: float = 20 / 256) -> Tensor:
    """Join two batches by halves: ``first`` on the left (or top), ``second`` on the right (or bottom).

    DiffuseMix's concatenation (Islam et al., CVPR 2024): the original image takes one half and its edit the
    other, across a linear blend band centred on the split (DiffuseMix: 20 px at 256 px, so ``band = 20 / 256``).
    A US patent record (US12657783B1) covers this concatenation.

    Args:
        first: ``(B, C, H, W)`` the images of the first half.
        second: ``(B, C, H, W)`` those of the second half (same shape and dtype).
        left_right: ``(B,)`` bool: True splits the image down the middle (left | right), False across it
            (top / bottom).
        band: the blend band's width as a fraction of the split side, in [0, 1); 0 is a hard edge.

    Returns:
        ``(B, C, H, W)`` in the dtype of ``first``: ``w * first + (1 - w) * second`` with ``w`` from
        :func:`halves_weight`, exactly ``first`` before the band and exactly ``second`` after it.
    """
    if not 0.0 <= band < 1.0:
        raise ConfigError("band", band, "in [0, 1)")
    return blend(first, second, halves_weight(left_right, band, first.shape[-2], first.shape[-1], first.device))


@dataclass(frozen=True)
class HalvesParams:
    """One draw of :class:`HalvesFractal`: replay it with :meth:`HalvesFractal.apply_params`."""

    left_right: Tensor
    """``(B,)`` bool: split down the middle (left | right), else across (top / bottom)."""
    fractal: Tensor
    """``(B,)`` int64: each sample's fractal, an index into the bank."""


class HalvesFractal(nn.Module):
    """DiffuseMix's pixel operation: an edit and its original joined by halves, then a fractal blended in.

    After Islam et al., "DiffuseMix: Label-Preserving Data Augmentation with Diffusion Models", CVPR 2024
    (github.com/khawar-islam/diffuseMix), built from the paper's description (METHOD.md, "The peers"), not from
    their code. For each sample with a partner: a split direction with equal odds, the original (``partner``) on
    the left or top and the edit (``x``) on the right or bottom, joined across a linear band (:func:`halves`); then
    ``out = (1 - fractal_weight) * hybrid + fractal_weight * fractal``, the fractal drawn per sample from a bank of
    seeded procedural fractals (:func:`diffcoremix.mix.fractals.fractal_bank`, FractalDB's iterated function
    systems, Kataoka et al., ACCV 2020; DiffuseMix blends images of a fractal set it downloads). The label is the
    original's, kept hard: ``y`` passes through, soft ``(B, K)`` targets too. Samples without a partner (the real
    images) pass through unchanged.

    A US patent record (US12657783B1) covers this concatenation and fractal blending; users can decide.

    ``MixOutput.lam`` is the edit's (``x``'s) share of the output's pixel weight: ``(1 - fractal_weight)`` times the
    mean weight of the edit in the hybrid, 0.4 at the defaults (the original has 0.4 and the fractal 0.2); 1 for a
    sample passed through. ``kind`` is ``KIND_COMBINED`` for a mixed sample.

    Args:
        fractal_weight: the fractal's blend weight, in [0, 1]; 0.2 as DiffuseMix.
        band: the blend band's width as a fraction of the split side, in [0, 1); ``20 / 256`` as DiffuseMix (20 px
            at its 256 px).
        bank_size: how many fractals the bank holds (>= 1); built once per image size and device, then cached.
        bank_seed: the bank's seed.
        mean: per-channel mean (1 or C values) when the images are normalised, ``(pixel - mean) / std``: the fractal
            (in [0, 1]) is normalised the same way before it is blended in, so the result is the normalised
            [0, 1]-space result. None (with ``std`` None): floating images are in [0, 1], integer ones in [0, 255].
        std: per-channel standard deviation (> 0), with ``mean``.

    Raises:
        ConfigError: a value out of range, or only one of ``mean`` and ``std``.

    Example:
        >>> mixer = HalvesFractal(bank_size=4)
        >>> edit, original = torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
        >>> out = mixer(edit, torch.tensor([0, 1]), partner=original, generator=torch.Generator().manual_seed(0))
        >>> out.images.shape, out.targets.tolist(), [round(v, 2) for v in out.lam.tolist()]
        (torch.Size([2, 3, 8, 8]), [0, 1], [0.4, 0.4])
    """

    def __init__(
        self,
        fractal_weight: float = 0.2,
        band: float = 20 / 256,
        bank_size: int = 64,
        bank_seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _check_probability("fractal_weight", fractal_weight)
        if not 0.0 <= band < 1.0:
            raise ConfigError("band", band, "in [0, 1)")
        if bank_size < 1:
            raise ConfigError("bank_size", bank_size, ">= 1")
        if (mean is None) != (std is None):
            raise ConfigError("std" if std is None else "mean", None, "given with the other (mean and std, or neither)")
        if std is not None and (len(std) == 0 or min(std) <= 0):
            raise ConfigError("std", list(std), "one or more values, all > 0")
        if mean is not None and len(mean) == 0:
            raise ConfigError("mean", list(mean), "one or more values")
        self.fractal_weight, self.band, self.bank_size, self.bank_seed = fractal_weight, band, bank_size, bank_seed
        self.mean = None if mean is None else torch.tensor(list(mean), dtype=torch.float32)
        self.std = None if std is None else torch.tensor(list(std), dtype=torch.float32)
        self._banks: dict[tuple[int, int, str], Tensor] = {}

    def sample(self, batch: int, generator: torch.Generator | None = None) -> HalvesParams:
        """Draw the split directions, then the fractals, for a batch of ``batch`` samples."""
        left_right = torch.rand(batch, generator=generator) < 0.5
        return HalvesParams(left_right, torch.randint(self.bank_size, (batch,), generator=generator))

    def bank(self, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """``(bank_size, 3, H, W)`` the fractals in [0, 1] on ``device``, rendered once per size and device."""
        key = (height, width, str(device))
        if key not in self._banks:
            self._banks[key] = fractal_bank(self.bank_size, height, width, self.bank_seed).to(device)
        return self._banks[key]

    def fractals(self, x: Tensor, index: Tensor) -> Tensor:
        """``(B, C, H, W)`` float: the fractals ``index`` in the value space of ``x`` (normalised, [0, 1], or
        [0, 255] for integer images); one channel takes the fractal's mean."""
        channels, height, width = x.shape[-3:]
        if channels not in (1, 3):
            raise ValueError(f"{type(self).__name__} blends RGB fractals into 1- or 3-channel images, got {channels}")
        work = x.dtype if x.dtype.is_floating_point else torch.float32
        fractal = self.bank(height, width, x.device)[index.to(x.device)].to(work)
        if channels == 1:
            fractal = fractal.mean(dim=1, keepdim=True)
        if self.mean is None or self.std is None:
            return fractal if x.dtype.is_floating_point else fractal * 255
        if not x.dtype.is_floating_point:
            raise ValueError(f"normalised images (mean and std given) are floating, got {x.dtype}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise ValueError(f"{name} has {len(values)} values for {channels}-channel images")
        mean, std = (v.to(x.device, work).reshape(-1, 1, 1) for v in (self.mean, self.std))
        return (fractal - mean) / std

    def apply_params(
        self, x: Tensor, y: Tensor, partner: Tensor, params: HalvesParams, has_partner: Tensor | None = None
    ) -> MixOutput:
        """Apply a draw (from :meth:`sample`, or made by hand): ``x`` the edits, ``partner`` their originals."""
        batch = x.shape[0]
        mixed = _partnered(has_partner, batch)
        work = x.dtype if x.dtype.is_floating_point else torch.float32
        hybrid = halves(partner.to(work), x.to(work), params.left_right, self.band)
        w = self.fractal_weight
        out = (1 - w) * hybrid + w * self.fractals(x, params.fractal)
        if not x.dtype.is_floating_point:
            info = torch.iinfo(x.dtype)
            out = out.round_().clamp_(info.min, info.max)
        images = select(out.to(x.dtype), mixed, x) if mixed.any() else x.clone()
        # the original's mean weight in the hybrid: its profile's mean along the split axis
        along = torch.stack([_ramp(x.shape[-2], self.band).mean(), _ramp(x.shape[-1], self.band).mean()])
        original = along[params.left_right.cpu().long()]
        lam = torch.where(mixed, (1 - w) * (1 - original), 1.0)
        kind = torch.where(mixed, KIND_COMBINED, KIND_NONE).to(torch.int8)
        return MixOutput(images, y, lam, kind)

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        *,
        partner: Tensor | None = None,
        has_partner: Tensor | None = None,
        partner_rule: Tensor | None = None,
        partner_y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MixOutput:
        """Combine a batch (see :class:`Mixer` for the arguments); ``x`` the edits, ``partner`` (required) their
        originals; ``partner_y`` is not used (the label is kept)."""
        if partner is None:
            raise ValueError(f"{type(self).__name__} needs a partner batch (each edit's original)")
        return self.apply_params(x, y, partner, self.sample(x.shape[0], generator), has_partner)


MIXERS: Registry[Callable[..., Mixer]] = Registry("mixer")
MIXERS.add("pixel", lambda **kw: PairMix(mode="pixel", **{"p": 1.0, **kw}))
MIXERS.add("patch", lambda **kw: PairMix(mode="patch", **{"p": 1.0, **kw}))
MIXERS.add("diffcoremix", lambda **kw: PairMix(mode="both", **kw))
MIXERS.add("mixup", MixUp)
MIXERS.add("cutmix", CutMix)
MIXERS.add("substitute", Substitute)
MIXERS.add("diffusemix", HalvesFractal)


def make_mixer(name: str, **kwargs: object) -> Mixer:
    """A mixer by registry name (``pixel``, ``patch``, ``diffcoremix``, ``mixup``, ``cutmix``, ``substitute``,
    ``diffusemix``).

    Raises:
        UnknownNameError: no mixer of that name; the message lists the known ones.
        ConfigError: a bad argument (``mixup`` and ``cutmix`` need ``num_classes``).
    """
    return MIXERS.get(name)(**kwargs)
