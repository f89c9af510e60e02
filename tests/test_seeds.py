"""Per-item seeds: stable across processes, sensitive to every part, valid for torch and NumPy; torch's global
generators kept for the caller."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from diffcoremix.seeds import SEED_BITS, derive_seed, generator_for, global_generators, kept_state, stable_choice


def test_same_parts_same_seed_in_another_process() -> None:
    here = derive_seed(0, "generate", "001.Albatross/a.jpg", 1)
    code = "from diffcoremix.seeds import derive_seed; print(derive_seed(0, 'generate', '001.Albatross/a.jpg', 1))"
    # PYTHONHASHSEED differs per process by default: a salted hash() would change; a real hash does not.
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(there) == here


def test_every_part_matters_and_types_are_tagged() -> None:
    base = derive_seed(0, "generate", "a.jpg", 0)
    assert derive_seed(1, "generate", "a.jpg", 0) != base
    assert derive_seed(0, "context", "a.jpg", 0) != base
    assert derive_seed(0, "generate", "b.jpg", 0) != base
    assert derive_seed(0, "generate", "a.jpg", 1) != base
    assert derive_seed("0", "generate", "a.jpg", 0) != base  # str "0" is not int 0
    assert derive_seed("ab", "c") != derive_seed("a", "bc")  # length prefixes: no concatenation collisions


def test_seed_range_and_spread() -> None:
    seeds = [derive_seed(0, i) for i in range(2000)]
    assert all(0 <= s < 2**SEED_BITS for s in seeds)
    assert len(set(seeds)) == len(seeds)
    # the top bit is used about half the time: seeds spread over the range
    high = sum(s >= 2 ** (SEED_BITS - 1) for s in seeds)
    assert 850 < high < 1150
    np.random.default_rng(seeds[0])  # NumPy accepts every derived seed
    torch.Generator().manual_seed(max(seeds))


def test_generator_for_is_reproducible() -> None:
    a = torch.randn(4, generator=generator_for(3, "x"))
    b = torch.randn(4, generator=generator_for(3, "x"))
    c = torch.randn(4, generator=generator_for(3, "y"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_stable_choice_is_uniform_enough_and_checks_n() -> None:
    counts = np.bincount([stable_choice(4, 0, "pick", i) for i in range(4000)], minlength=4)
    assert counts.min() > 850
    with pytest.raises(ValueError, match="n must be >= 1"):
        stable_choice(0, 1)


def test_bad_part_type_raises() -> None:
    with pytest.raises(TypeError, match="seed parts must be"):
        derive_seed(1.5)  # type: ignore[arg-type]


def test_kept_state_restores_the_global_generators_even_when_the_block_raises() -> None:
    assert global_generators("cpu") == [torch.default_generator]  # CPU work draws from the CPU's alone

    def seed_draw_and_fail() -> None:
        with kept_state(global_generators("cpu")):
            torch.manual_seed(99)
            torch.rand(10)
            raise KeyError("the block fails")

    torch.manual_seed(3)
    untouched = torch.rand(4)
    torch.manual_seed(3)
    with pytest.raises(KeyError):
        seed_draw_and_fail()
    assert torch.equal(torch.rand(4), untouched)
