"""Per-item seeds derived from stable ids through a real hash (METHOD.md §4).

Python's ``hash()`` is salted per process, so it cannot give seeds that survive a restart. Here every part is
encoded with a type tag and a length prefix and hashed with BLAKE2b, so ``derive_seed(0, "a/b.jpg", 1)`` is the
same number on every machine, in every process, whatever else is being generated.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SEED_BITS = 63
"""Derived seeds lie in [0, 2**63): valid for ``torch.Generator.manual_seed`` and NumPy alike."""


def _encode(part: object) -> bytes:
    if isinstance(part, bool):
        tag, body = b"b", b"1" if part else b"0"
    elif isinstance(part, int):
        tag, body = b"i", str(part).encode()
    elif isinstance(part, str):
        tag, body = b"s", part.encode("utf-8")
    elif isinstance(part, bytes):
        tag, body = b"y", part
    else:
        raise TypeError(f"seed parts must be int, str, bytes or bool, got {type(part).__name__}")
    return tag + len(body).to_bytes(8, "little") + body


def derive_seed(*parts: int | str | bytes) -> int:
    """A seed in [0, 2**63) that depends only on ``parts`` (and their order and types).

    Args:
        *parts: stable ids, for example the base seed, a purpose, an image's relative path and an index.

    Returns:
        The derived seed.

    Example:
        >>> derive_seed(0, "generate", "001.Albatross/a.jpg", 0) == derive_seed(0, "generate", "001.Albatross/a.jpg", 0)
        True
    """
    digest = hashlib.blake2b(b"".join(_encode(p) for p in parts), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


def generator_for(*parts: int | str | bytes) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    import torch  # here, so that the CLI's light commands start without loading torch

    generator = torch.Generator(device="cpu")
    generator.manual_seed(derive_seed(*parts))
    return generator


def stable_choice(n: int, *parts: int | str | bytes) -> int:
    """An index in [0, n) drawn from ``derive_seed(*parts)``: the same draw whatever the order of the work.

    Used for discrete choices (a template, a context) that must not depend on which other items were drawn
    before; the bias of the modulo is below 1e-16 for any realistic ``n``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return derive_seed(*parts) % n


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Seed torch's global generator (which module initialisers draw from) and restore the caller's state after.

    Random-weight models (the ``tiny`` presets, the benchmarks' full-size architectures) are built inside it, so
    the same seed gives the same weights and the caller's random stream is left as it was.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def global_generators(device: str) -> list[torch.Generator]:
    """torch's global generators that work on ``device`` draws from: the CPU's, and on CUDA or MPS the device's own.

    Dropout and drop-path take no generator: they draw from these (the CPU's on the CPU, the device's on an
    accelerator). A loop that seeds them from the step before each forward pass makes those draws a function of
    the step, whatever else drew from them before (see :mod:`diffcoremix.train.loop`).
    """
    import torch

    dev = torch.device(device)
    generators = [torch.default_generator]
    if dev.type == "cuda":
        torch.cuda.init()  # type: ignore[no-untyped-call]  # fills torch.cuda.default_generators
        generators.append(
            torch.cuda.default_generators[dev.index if dev.index is not None else torch.cuda.current_device()]
        )
    elif dev.type == "mps":
        generators.append(torch.mps._get_default_mps_generator())  # MPS has one device and no public accessor
    return generators


@contextlib.contextmanager
def kept_state(generators: Sequence[torch.Generator]) -> Iterator[None]:
    """Restore ``generators`` to their states at entry when the block ends, however it ends.

    A library call that seeds torch's global generators (training, see :func:`global_generators`) runs inside it,
    so that the caller's random stream goes on as if the call had not drawn from it.
    """
    states = [generator.get_state() for generator in generators]
    try:
        yield
    finally:
        for generator, state in zip(generators, states, strict=True):
            generator.set_state(state)
