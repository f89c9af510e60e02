"""Fractal images rendered procedurally from random iterated function systems, seeded: the images DiffuseMix blends in.

DiffuseMix (Islam et al., "DiffuseMix: Label-Preserving Data Augmentation with Diffusion Models", CVPR 2024,
github.com/khawar-islam/diffuseMix) alpha-blends a fractal image into every augmented image; its fractals come from
a downloaded image set. Here they are drawn as FractalDB draws them (Kataoka et al., "Pre-training without Natural
Images", ACCV 2020): an iterated function system (IFS) of a few random contractive affine maps, each chosen with a
probability proportional to its determinant's magnitude, run by the chaos game; the points are rasterised and
coloured. No download and no data file: a bank is a function of ``(count, height, width, seed)``.

A US patent record (US12657783B1) covers DiffuseMix's concatenation and fractal blending; these images are one
part of it, so users can decide.

How one fractal is made (system ``i`` of a bank, attempt ``a``, all randomness from ``derive_seed(seed,
"fractal", i, a)``):

- 2 to 4 maps ``p -> A p + t``, ``A = R(theta) diag(s1, +-s2) R(phi)`` with singular values in [0.25, 0.9] (so
  every map contracts and the points stay bounded) and ``t`` uniform in [-1, 1]^2; probabilities ``|det A|``,
  normalised (FractalDB's rule);
- the chaos game on 256 walkers: 24 steps to reach the attractor, then 16 steps give 4,096 points that fix the
  frame (their bounding box, aspect kept, with a margin) and the acceptance test: the system is kept when its
  points cover at least ``MIN_COVERAGE`` of a 32 x 32 grid, else attempt ``a + 1`` is drawn. This decides which
  systems a bank holds before the image size enters, so a bank at 32 x 32 and one at 224 x 224 show the same
  fractals, and fractal ``i`` does not depend on ``count``;
- rendering: the 4,096 points walk on until the canvas has about one point per pixel; each map has a colour and
  a point's colour moves halfway to the colour of the map that placed it (the fractal-flame rule, so regions show
  which maps made them); a pixel's colour is the mean of its points' colours, its brightness the log of its point
  count (normalised by the 99th percentile), on black, as FractalDB's renderings are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from diffcoremix.errors import ConfigError
from diffcoremix.seeds import derive_seed

MIN_COVERAGE = 0.15
"""Least share of a 32 x 32 grid a system's points must cover to be kept (rejects lines, dots and thin curves)."""
MAX_ATTEMPTS = 200
"""Attempts per fractal before giving up (about four in five random systems pass; 200 failures do not happen)."""

_MAPS = (2, 4)  # fewest and most maps per system
_SINGULAR = (0.25, 0.9)  # the range of each map's singular values: contractive, and not collapsing to a point
_WALKERS = 256
_BURN_IN = 24  # a contraction of 0.9 shrinks the start's distance to the attractor 12-fold in 24 steps
_FRAME_STEPS = 16  # _WALKERS * _FRAME_STEPS points fix the frame and decide acceptance
_GRID = 32  # the acceptance grid's side
_MARGIN = 0.04  # share of the frame left empty on each side (the frame's points are a sample of the attractor)
_POINTS_PER_PIXEL = 1.0


@dataclass
class _System:
    """One candidate IFS and the random stream it goes on drawing from."""

    maps: np.ndarray  # (N, 2, 3): [A | t]
    cumulative: np.ndarray  # (N,) cumulative probabilities, the last 1
    colours: np.ndarray  # (N, 3) in [0, 1]
    rng: np.random.Generator


def _draw_system(seed: int, index: int, attempt: int) -> _System:
    rng = np.random.default_rng(derive_seed(seed, "fractal", index, attempt))
    n = int(rng.integers(_MAPS[0], _MAPS[1] + 1))
    theta, phi = rng.uniform(0.0, 2 * np.pi, (2, n))
    singular = rng.uniform(*_SINGULAR, (n, 2))
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    maps = np.empty((n, 2, 3))
    for k in range(n):
        rotate = [_rotation(theta[k]), _rotation(phi[k])]
        maps[k, :, :2] = rotate[0] @ np.diag([singular[k, 0], flip[k] * singular[k, 1]]) @ rotate[1]
    maps[:, :, 2] = rng.uniform(-1.0, 1.0, (n, 2))
    weight = np.abs(np.linalg.det(maps[:, :, :2]))
    cumulative = np.cumsum(weight / weight.sum())
    cumulative[-1] = 1.0
    colours = rng.uniform(0.15, 1.0, (n, 3))
    return _System(maps, cumulative, colours, rng)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _stack(systems: list[_System]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad the systems to the most maps: ``(S, M, 6)`` map coefficients ``a b e c d f`` of ``[A | t]``, ``(S, M)``
    cumulative probabilities (pads at 1, so never chosen), ``(S, M, 3)`` colours; float32."""
    most = max(len(s.maps) for s in systems)
    maps = np.zeros((len(systems), most, 6), dtype=np.float32)
    cumulative = np.ones((len(systems), most), dtype=np.float32)
    colours = np.zeros((len(systems), most, 3), dtype=np.float32)
    for i, system in enumerate(systems):
        n = len(system.maps)
        maps[i, :n], cumulative[i, :n], colours[i, :n] = system.maps.reshape(n, 6), system.cumulative, system.colours
    return maps, cumulative, colours


def _walk(
    systems: list[_System], points: np.ndarray, colour: np.ndarray, steps: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Run the chaos game ``steps`` steps on every system at once, yielding the points and colours after each step.

    ``points`` is ``(S, P, 2)``, ``colour`` ``(S, P, 3)``; each system draws its map choices from its own stream,
    so a system's walk does not depend on the others in the batch.
    """
    maps, cumulative, colours = _stack(systems)
    walkers = points.shape[1]
    choices = np.stack([s.rng.random((steps, walkers), dtype=np.float32) for s in systems], axis=1)  # (T, S, P)
    x, y = points[..., 0].astype(np.float32), points[..., 1].astype(np.float32)
    tint = colour.astype(np.float32)
    first_map = (np.arange(len(systems)) * maps.shape[1])[:, None]  # rows of the flattened (S * M) tables
    maps, colours = maps.reshape(-1, 6), colours.reshape(-1, 3)
    for step in range(steps):
        chosen = (choices[step][:, :, None] >= cumulative[:, None, :-1]).sum(axis=-1) + first_map  # (S, P)
        a, b, e, c, d, f = np.moveaxis(maps[chosen], -1, 0)
        x, y = a * x + b * y + e, c * x + d * y + f
        tint = 0.5 * (tint + colours[chosen])
        yield np.stack([x, y], axis=-1), tint


def _frame(points: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per system, the offset ``(S, 2)`` and scale ``(S,)`` that fit its points' box into the canvas, aspect kept."""
    low, high = points.min(axis=1), points.max(axis=1)
    span = np.maximum(high - low, 1e-9)
    scale = (1 - 2 * _MARGIN) * np.minimum(width / span[:, 0], height / span[:, 1])
    centre = (low + high) / 2
    offset = np.array([width, height]) / 2 - centre * scale[:, None]
    return offset, scale


def _pixels(points: np.ndarray, offset: np.ndarray, scale: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(S, P)`` flat pixel index ``row * width + col`` of each point, -1 outside the canvas."""
    xy = np.floor(points * scale[:, None, None] + offset[:, None, :]).astype(np.int64)
    inside = (xy[..., 0] >= 0) & (xy[..., 0] < width) & (xy[..., 1] >= 0) & (xy[..., 1] < height)
    return np.where(inside, xy[..., 1] * width + xy[..., 0], -1)


def _coverage(points: np.ndarray) -> np.ndarray:
    """``(S,)`` share of a ``_GRID`` x ``_GRID`` grid that the framed points hit; 0 for a collapsed system."""
    offset, scale = _frame(points, _GRID, _GRID)
    flat = _pixels(points, offset, scale, _GRID, _GRID)
    hit = np.zeros((len(points), _GRID * _GRID), dtype=bool)
    rows = np.broadcast_to(np.arange(len(points))[:, None], flat.shape)
    hit[rows[flat >= 0], flat[flat >= 0]] = True
    spread = np.ptp(points, axis=1).min(axis=1) > 1e-6
    return np.where(spread, hit.mean(axis=1), 0.0)


def _accepted_systems(count: int, seed: int) -> tuple[list[_System], np.ndarray, np.ndarray]:
    """The first acceptable system for each index, with its 4,096 frame points and their colours."""
    systems: list[_System | None] = [None] * count
    frames = np.zeros((count, _WALKERS * _FRAME_STEPS, 2))
    tints = np.zeros((count, _WALKERS * _FRAME_STEPS, 3))
    attempts = np.zeros(count, dtype=np.int64)
    pending = list(range(count))
    while pending:
        if attempts[pending].max() >= MAX_ATTEMPTS:
            raise RuntimeError(f"no acceptable fractal in {MAX_ATTEMPTS} attempts (seed {seed})")
        candidates = [_draw_system(seed, i, int(attempts[i])) for i in pending]
        start = np.stack([c.rng.uniform(-1.0, 1.0, (_WALKERS, 2)) for c in candidates])
        walked = list(_walk(candidates, start, np.zeros((len(pending), _WALKERS, 3)), _BURN_IN + _FRAME_STEPS))
        points = np.concatenate([p for p, _ in walked[_BURN_IN:]], axis=1)
        tint = np.concatenate([t for _, t in walked[_BURN_IN:]], axis=1)
        keep = _coverage(points) >= MIN_COVERAGE
        for j, i in enumerate(pending):
            if keep[j]:
                systems[i], frames[i], tints[i] = candidates[j], points[j], tint[j]
            attempts[i] += 1
        pending = [i for j, i in enumerate(pending) if not keep[j]]
    return [s for s in systems if s is not None], frames, tints


def _render(systems: list[_System], points: np.ndarray, tints: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(S, 3, H, W)`` float32 images: the frame points walked on until about one point per pixel."""
    hits, paint = _rasterise(systems, points, tints, height, width)
    colour = paint / np.maximum(hits, 1)[..., None]  # the mean colour of each pixel's points
    density = np.log1p(hits)
    top = np.array([np.percentile(d[d > 0], 99) if (d > 0).any() else 1.0 for d in density])
    brightness = np.minimum(density / np.maximum(top, 1e-6)[:, None], 1.0)
    images = (colour * brightness[..., None]).reshape(len(systems), height, width, 3)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)


def _rasterise(
    systems: list[_System], points: np.ndarray, tints: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per system and pixel, the number of points ``(S, H * W)`` and the sum of their colours ``(S, H * W, 3)``."""
    count, size = len(systems), height * width
    offset, scale = _frame(points, height, width)
    steps = max(0, int(np.ceil(_POINTS_PER_PIXEL * size / points.shape[1])) - 1)
    hits = np.zeros(count * size)
    paint = np.zeros((3, count * size))
    base = (np.arange(count) * size)[:, None]

    def draw(walk: list[tuple[np.ndarray, np.ndarray]]) -> None:
        flat = np.concatenate([_pixels(p, offset, scale, height, width) + base for p, _ in walk], axis=1)
        tint = np.concatenate([t for _, t in walk], axis=1)
        inside = flat >= base  # _pixels gives -1 outside the canvas
        index = flat[inside]
        hits[:] += np.bincount(index, minlength=count * size)
        for c in range(3):
            paint[c] += np.bincount(index, weights=tint[..., c][inside], minlength=count * size)

    # one bincount per chunk of steps, a chunk holding about as many points as the canvases have pixels: the
    # bincounts cost about what the points do, and the points are never all held at once
    chunk = max(1, -(-size // points.shape[1]))
    walk = [(points, tints)]
    for step in _walk(systems, points, tints, steps):
        if len(walk) == chunk:
            draw(walk)
            walk = []
        walk.append(step)
    draw(walk)
    return hits.reshape(count, size), paint.reshape(3, count, size).transpose(1, 2, 0)


def fractal_bank(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``count`` fractal images ``(count, 3, H, W)``, float32 in [0, 1], rendered from seeded random IFS.

    The same arguments give the same bytes, in any process; another seed gives other fractals. Fractal ``i`` does
    not depend on ``count`` (a bank of 8 is the first 8 of a bank of 64) and its shape does not depend on the size
    (the systems are chosen before the size enters). About 0.2 s for 64 at 32 x 32 and 1 s at 224 x 224, on one core.

    Args:
        count: how many fractals.
        height: image height in pixels.
        width: image width in pixels.
        seed: the bank's seed (every draw comes from ``derive_seed(seed, "fractal", i, attempt)``).

    Raises:
        ConfigError: ``count``, ``height`` or ``width`` < 1.

    Example:
        >>> bank = fractal_bank(4, 16, 16, seed=0)
        >>> bank.shape, bool(torch.equal(bank, fractal_bank(4, 16, 16, seed=0)))
        (torch.Size([4, 3, 16, 16]), True)
    """
    for name, value in (("count", count), ("height", height), ("width", width)):
        if value < 1:
            raise ConfigError(name, value, ">= 1")
    systems, points, tints = _accepted_systems(count, seed)
    return torch.from_numpy(_render(systems, points, tints, height, width))
