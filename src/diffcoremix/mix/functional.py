"""Mixing a real batch with an aligned partner batch (METHOD.md §7): the functional core.

Every function works on batched tensors ``(B, C, H, W)`` (uint8 or floating, any device) and takes randomness
only from an explicit ``torch.Generator`` (on the CPU: draws do not depend on the device). Sampling is split from
application: ``sample_*`` returns parameters, ``*_mix`` applies them, so a draw can be replayed, logged, or made
by hand in a test. ``lam`` always means the realised share of the *real* image in the output.

- pixel: ``x_mix = lam * x + (1 - lam) * x'`` with ``lam ~ Beta(alpha, alpha)`` per sample;
- patch: both images cut into a ``g x g`` grid; each cell comes from ``x'`` with probability ``rho`` (per sample,
  ``rho ~ U(0, 1)`` by default); ``x_mix = M * x' + (1 - M) * x``; ``lam = 1 - mean(M)``.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _check_pair(x: Tensor, partner: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(x.shape)}")
    if partner.shape != x.shape:
        raise ValueError(f"partner batch must match the real batch: {tuple(partner.shape)} vs {tuple(x.shape)}")
    if partner.dtype != x.dtype:
        raise ValueError(f"partner dtype {partner.dtype} differs from the real batch's {x.dtype}")


def sample_beta(batch: int, alpha: float, generator: torch.Generator | None = None) -> Tensor:
    """``(B,)`` float32 draws from ``Beta(alpha, alpha)``, from ``generator`` only.

    Two Gamma(alpha) variates by Marsaglia-Tsang would need rejection loops; instead the draw goes through NumPy's
    Beta sampler seeded from one 63-bit integer taken from ``generator``: exact, and replayable from the generator.
    """
    import numpy as np

    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=batch).astype(np.float32))


def sample_cells(batch: int, grid: int, rho: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """``(B, g, g)`` bool: True where a cell comes from the partner, each with probability ``rho[b]``.

    Args:
        rho: ``(B,)`` per-sample cell probabilities in [0, 1]; None draws them from U(0, 1).
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    if rho is None:
        rho = torch.rand(batch, generator=generator)
    return torch.rand(batch, grid, grid, generator=generator) < rho.reshape(batch, 1, 1).float()


def upsample_cells(values: Tensor, height: int, width: int) -> Tensor:
    """Nearest-upsample per-cell values ``(B, g, g)`` to ``(B, 1, H, W)``.

    Row ``r`` lies in cell row ``floor(r * g / H)``, so cell ``i`` spans rows ``ceil(i * H / g)`` to
    ``ceil((i + 1) * H / g) - 1`` (likewise for columns); when ``g`` does not divide ``H`` the cells differ by at
    most one row, and :func:`patch_lambda` counts them with the same rule.
    """
    batch, grid_h, grid_w = values.shape
    if height % grid_h == 0 and width % grid_w == 0:  # the common case: one broadcast copy, no index gathers
        blocks = values[:, :, None, :, None].expand(batch, grid_h, height // grid_h, grid_w, width // grid_w)
        return blocks.reshape(batch, 1, height, width)
    rows = torch.arange(height, device=values.device) * grid_h // height
    cols = torch.arange(width, device=values.device) * grid_w // width
    return values[:, rows][:, :, cols].unsqueeze(1)


def cells_to_mask(cells: Tensor, height: int, width: int) -> Tensor:
    """Upsample ``(B, g, g)`` bool cells to a ``(B, 1, H, W)`` bool mask (True = from the partner)."""
    return upsample_cells(cells, height, width)


def blend(x: Tensor, partner: Tensor, weight: Tensor) -> Tensor:
    """``weight * x + (1 - weight) * partner`` (weight broadcast), in the dtype of ``x``.

    ``torch.lerp`` computes it in one pass and is exact at weights 0 and 1 (a patch cell, an unmixed sample) and
    for ``x = 1, partner = 0`` (the result is ``weight``). Integer images are blended in float32 and rounded.
    """
    _check_pair(x, partner)
    weight = weight.to(x.device)
    if x.dtype.is_floating_point:
        return torch.lerp(partner, x, weight.to(x.dtype))
    info = torch.iinfo(x.dtype)
    mixed = torch.lerp(partner.float(), x.float(), weight.float())
    return mixed.round_().clamp_(info.min, info.max).to(x.dtype)


def pixel_mix(x: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
    """``lam * x + (1 - lam) * partner`` per sample; ``lam`` is ``(B,)``. Dtype and value range preserved."""
    return blend(x, partner, lam.float().reshape(-1, 1, 1, 1))


def patch_mix(x: Tensor, partner: Tensor, cells: Tensor) -> Tensor:
    """Cells marked True come from ``partner``, the rest from ``x``; ``cells`` is ``(B, g, g)`` bool."""
    _check_pair(x, partner)
    mask = cells_to_mask(cells.to(x.device), x.shape[-2], x.shape[-1])
    return torch.where(mask, partner, x)


def patch_lambda(cells: Tensor, height: int, width: int) -> Tensor:
    """``(B,)`` realised share of real pixels under ``cells``, exact when the grid does not divide the size.

    Computed from each cell's pixel count (the rows and columns it spans), without building the full mask.
    """
    grid_h, grid_w = cells.shape[-2:]
    rows = torch.bincount(torch.arange(height) * grid_h // height, minlength=grid_h).float()
    cols = torch.bincount(torch.arange(width) * grid_w // width, minlength=grid_w).float()
    area = rows[:, None] * cols[None, :]
    return 1.0 - (cells.float().cpu() * area).sum(dim=(1, 2)) / (height * width)


def select(mix: Tensor, keep: Tensor, x: Tensor) -> Tensor:
    """Per sample: ``mix`` where ``keep`` (``(B,)`` bool) is True, else ``x`` unchanged."""
    return torch.where(keep.to(x.device).reshape(-1, 1, 1, 1), mix, x)
