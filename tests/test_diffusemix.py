"""DiffuseMix's pixel operation (halves, then a fractal at 0.2) and the seeded fractal bank it blends in."""

from __future__ import annotations

import pytest
import torch

from diffcoremix.errors import ConfigError
from diffcoremix.mix import (
    KIND_COMBINED,
    HalvesFractal,
    HalvesParams,
    fractal_bank,
    halves,
    halves_weight,
    make_mixer,
)
from diffcoremix.mix.fractals import MIN_COVERAGE
from diffcoremix.mix.mixers import KIND_NONE

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair(batch: int, height: int, width: int, seed: int = 0, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """An edit batch and an original batch, random in [0, 1]."""
    g = gen(seed)
    return torch.rand(batch, channels, height, width, generator=g), torch.rand(
        batch, channels, height, width, generator=g
    )


@pytest.mark.parametrize(("height", "width"), [(32, 32), (256, 256), (9, 14)])
def test_the_original_takes_the_first_half_and_the_edit_the_second_in_both_directions(height: int, width: int) -> None:
    mixer = HalvesFractal(bank_size=8, bank_seed=3)
    edit, original = pair(24, height, width)
    params = mixer.sample(24, gen(1))
    out = mixer.apply_params(edit, torch.arange(24), original, params).images
    fractal = fractal_bank(8, height, width, seed=3)[params.fractal]
    w = 0.2
    first = halves_weight(params.left_right, 20 / 256, height, width).expand_as(edit)
    assert torch.equal(out[first == 1], ((1 - w) * original + w * fractal)[first == 1])
    assert torch.equal(out[first == 0], ((1 - w) * edit + w * fractal)[first == 0])
    for b in range(24):  # the first half is the left one, or the top one, by the draw
        side = width if params.left_right[b] else height
        head = (
            first[b, 0, 0, : side // 2 - side // 10]
            if params.left_right[b]
            else first[b, 0, : side // 2 - side // 10, 0]
        )
        assert (head == 1).all()
    assert 0 < int(params.left_right.sum()) < 24  # both directions occur


def test_the_band_is_20_px_at_256_px_a_linear_ramp_centred_on_the_split() -> None:
    by_cols, by_rows = halves_weight(torch.tensor([True, False]), 20 / 256, 256, 256)
    ramp = by_cols[0, 0]
    assert torch.equal(by_rows[0, :, 0], ramp)  # the same profile, across instead of down
    assert (by_cols[0] == ramp).all()  # constant along the split
    assert ramp[:118].eq(1).all()
    assert ramp[138:].eq(0).all()
    inside = ramp[118:138]
    assert torch.allclose(inside, (138 - (torch.arange(118, 138) + 0.5)) / 20)
    assert torch.allclose(ramp + ramp.flip(0), torch.ones(256))  # symmetric about the split
    hard = halves_weight(torch.tensor([True]), 0.0, 5, 7)[0, 0, 0]
    assert hard.tolist() == [1, 1, 1, 0, 0, 0, 0]  # odd side: the middle pixel goes to the second image


@pytest.mark.parametrize("weight", [0.2, 0.0, 0.35, 1.0])
def test_the_fractal_weight_is_exact(weight: float) -> None:
    # the default mixer for 0.2 (DiffuseMix's weight is the default), small banks for the others
    mixer = make_mixer("diffusemix") if weight == 0.2 else make_mixer("diffusemix", fractal_weight=weight, bank_size=8)
    image, _ = pair(6, 16, 20)
    params = mixer.sample(6, gen(2))
    out = mixer.apply_params(image, torch.arange(6), image.clone(), params).images  # edit == original
    fractal = fractal_bank(64 if weight == 0.2 else 8, 16, 20, seed=0)[params.fractal]
    assert torch.allclose(out - (1 - weight) * image, weight * fractal, atol=1e-6)
    delta, residual = (fractal - image).flatten(), (out - image).flatten()
    recovered = float(delta @ residual / (delta @ delta))  # least squares: out = image + w (fractal - image)
    assert recovered == pytest.approx(weight, abs=1e-6)


@pytest.mark.parametrize(("channels", "mean", "std"), [(3, IMAGENET_MEAN, IMAGENET_STD), (1, (0.5,), (0.25,))])
def test_normalised_images_give_the_normalised_result(
    channels: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    edit, original = pair(8, 12, 10, channels=channels)
    plain = HalvesFractal(bank_size=5)
    normalised = HalvesFractal(bank_size=5, mean=mean, std=std)
    params = plain.sample(8, gen(4))
    m, s = torch.tensor(mean).reshape(-1, 1, 1), torch.tensor(std).reshape(-1, 1, 1)
    expected = (plain.apply_params(edit, torch.arange(8), original, params).images - m) / s
    out = normalised.apply_params((edit - m) / s, torch.arange(8), (original - m) / s, params).images
    assert torch.allclose(out, expected, atol=1e-5)


def test_unpartnered_samples_pass_through_and_labels_are_kept() -> None:
    mixer = HalvesFractal(bank_size=4)
    edit, original = pair(6, 8, 8)
    has = torch.tensor([True, False, True, False, True, True])
    for y in (torch.arange(6), torch.softmax(torch.rand(6, 4, generator=gen()), dim=1)):
        out = mixer(edit, y, partner=original, has_partner=has, generator=gen(5))
        assert torch.equal(out.images[~has], edit[~has])
        assert not torch.isclose(out.images[has], edit[has]).all(dim=(1, 2, 3)).any()
        assert out.targets is y
        assert out.kind.tolist() == [KIND_COMBINED if h else KIND_NONE for h in has.tolist()]
        assert out.lam[~has].eq(1).all()


@pytest.mark.parametrize("band", [20 / 256, 0.0])
@pytest.mark.parametrize("weight", [0.0, 0.2])
def test_lam_is_the_edits_share_of_the_output(weight: float, band: float) -> None:
    mixer = HalvesFractal(fractal_weight=weight, band=band, bank_size=4)
    edit, original = torch.ones(4, 3, 9, 12), torch.zeros(4, 3, 9, 12)
    params = HalvesParams(torch.tensor([True, False, True, False]), torch.zeros(4, dtype=torch.long))
    out = mixer.apply_params(edit, torch.arange(4), original, params)
    hybrid = halves(original, edit, params.left_right, band)
    assert torch.allclose(out.lam, (1 - weight) * hybrid.mean(dim=(1, 2, 3)))
    if weight == 0.0:
        assert torch.allclose(out.lam, out.images.mean(dim=(1, 2, 3)))  # ones from the edit, zeros from the original
    assert out.lam[0].item() == pytest.approx((1 - weight) * 0.5)  # a band splits evenly: the ramp is symmetric
    # a hard edge across 9 rows: 4 rows of the original above, 5 of the edit below (the middle row is the edit's)
    assert out.lam[1].item() == pytest.approx((1 - weight) * (5 / 9 if band == 0 else 0.5))


def test_integer_images_blend_the_fractal_at_255_scale() -> None:
    mixer = HalvesFractal(bank_size=4)
    image = torch.randint(0, 256, (3, 3, 10, 10), generator=gen(), dtype=torch.uint8)
    params = mixer.sample(3, gen(6))
    out = mixer.apply_params(image, torch.arange(3), image.clone(), params).images
    fractal = fractal_bank(4, 10, 10, seed=0)[params.fractal]
    assert out.dtype == torch.uint8
    assert torch.equal(out, (0.8 * image.float() + 0.2 * 255 * fractal).round().to(torch.uint8))
    with pytest.raises(ValueError, match="floating"):
        HalvesFractal(mean=IMAGENET_MEAN, std=IMAGENET_STD)(image, torch.arange(3), partner=image, generator=gen())


def test_the_same_generator_seed_gives_the_same_batch() -> None:
    edit, original = pair(8, 16, 16)
    runs = [HalvesFractal(bank_size=16)(edit, torch.arange(8), partner=original, generator=gen(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0].images, runs[1].images)
    assert not torch.equal(runs[0].images, runs[2].images)


def test_the_bank_is_built_once_per_size() -> None:
    mixer = HalvesFractal(bank_size=3)
    assert mixer.bank(8, 8) is mixer.bank(8, 8)
    assert mixer.bank(8, 6).shape == (3, 3, 8, 6)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (48, 80)])
def test_the_bank_is_seeded_varied_and_fills_its_canvas(height: int, width: int) -> None:
    bank = fractal_bank(16, height, width, seed=11)
    assert bank.shape == (16, 3, height, width)
    assert bank.dtype == torch.float32
    assert bank.numpy().tobytes() == fractal_bank(16, height, width, seed=11).numpy().tobytes()
    assert torch.equal(fractal_bank(4, height, width, seed=11), bank[:4])  # fractal i does not depend on count
    other = fractal_bank(16, height, width, seed=12)
    assert not torch.isclose(bank, other).all(dim=(1, 2, 3)).any()  # another seed: every fractal differs
    assert bank.min() >= 0
    assert bank.max() <= 1
    assert (bank.flatten(1).std(dim=1) > 0.05).all()  # none constant
    covered = (bank.amax(dim=1) > 0).flatten(1).float().mean(dim=1)
    assert (covered >= (MIN_COVERAGE if height == 32 else 0.04)).all()  # the acceptance grid is 32 x 32
    fractals = bank.flatten(1)
    assert torch.cdist(fractals, fractals).add(torch.eye(16) * 1e9).min() > 1.0  # no two alike


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"fractal_weight": -0.1}, "fractal_weight"),
        ({"fractal_weight": 1.5}, "fractal_weight"),
        ({"band": -0.01}, "band"),
        ({"band": 1.0}, "band"),
        ({"bank_size": 0}, "bank_size"),
        ({"mean": IMAGENET_MEAN}, "std"),
        ({"std": IMAGENET_STD}, "mean"),
        ({"mean": IMAGENET_MEAN, "std": (0.2, 0.0, 0.2)}, "std"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field} must be"):
        make_mixer("diffusemix", **kwargs)


def test_bad_sizes_and_bands_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="count"):
        fractal_bank(0, 8, 8)
    with pytest.raises(ConfigError, match="band"):
        halves(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4), torch.tensor([True]), band=1.0)
