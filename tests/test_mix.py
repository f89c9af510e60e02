"""Mixing: hand-derivable expectations, replay, property tests, and torchvision v2's CutMix/MixUp semantics."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffcoremix.errors import ConfigError
from diffcoremix.mix import (
    MIXERS,
    PARTNER_NONE,
    PARTNER_OWN,
    BatchParams,
    CutMix,
    MixOutput,
    MixUp,
    PairBatch,
    PairMix,
    PairParams,
    cells_to_mask,
    collate_pairs,
    cutmix_apply,
    cutmix_box,
    make_mixer,
    patch_lambda,
    patch_mix,
    pixel_mix,
    sample_beta,
    sample_cells,
    upsample_cells,
)
from diffcoremix.mix.mixers import KIND_BATCH, KIND_NONE, KIND_PATCH, KIND_PIXEL


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pixel_mix_of_ones_and_zeros_is_exactly_lambda() -> None:
    lam = torch.tensor([0.0, 0.25, 0.5, 1.0])
    out = pixel_mix(torch.ones(4, 3, 5, 7), torch.zeros(4, 3, 5, 7), lam)
    assert torch.equal(out, lam.reshape(4, 1, 1, 1).expand(4, 3, 5, 7))


def test_patch_mix_of_ones_and_zeros_is_exactly_the_mask() -> None:
    cells = torch.tensor([[[True, False], [False, True]]])
    out = patch_mix(torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), cells)
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.float32)
    assert torch.equal(out[0, 0], expected)
    assert torch.equal(out, (~cells_to_mask(cells, 4, 4)).float().expand(1, 3, 4, 4))
    assert patch_lambda(cells, 4, 4).tolist() == [0.5]


def test_cells_cover_sizes_the_grid_does_not_divide() -> None:
    cells = torch.zeros(1, 4, 4, dtype=torch.bool)
    cells[0, 3, 3] = True  # the last cell
    mask = cells_to_mask(cells, 10, 7)
    # rows i with floor(4 i / 10) == 3: 8, 9; cols j with floor(4 j / 7) == 3: 6
    assert mask[0, 0].nonzero().tolist() == [[8, 6], [9, 6]]
    assert patch_lambda(cells, 10, 7).item() == pytest.approx(1 - 2 / 70)


def test_p_zero_is_the_identity() -> None:
    x = torch.rand(5, 3, 8, 8, generator=gen())
    out = PairMix(p=0.0)(x, torch.arange(5), partner=torch.zeros_like(x), generator=gen(1))
    assert torch.equal(out.images, x)
    assert torch.equal(out.lam, torch.ones(5))
    assert (out.kind == KIND_NONE).all()


def test_samples_without_a_partner_pass_through() -> None:
    x = torch.ones(4, 3, 8, 8)
    has = torch.tensor([True, False, True, False])
    out = PairMix(p=1.0, mode="pixel")(
        x, torch.arange(4), partner=torch.zeros_like(x), has_partner=has, generator=gen()
    )
    assert torch.equal(out.images[~has], x[~has])
    assert (out.kind[~has] == KIND_NONE).all()
    assert (out.kind[has] == KIND_PIXEL).all()


def test_the_same_params_replay_the_same_output_and_the_same_seed_the_same_params() -> None:
    x, z = torch.rand(6, 3, 16, 16, generator=gen(2)), torch.rand(6, 3, 16, 16, generator=gen(3))
    mixer = PairMix(p=0.7)
    params = mixer.sample(6, gen(4))
    again = mixer.sample(6, gen(4))
    assert all(torch.equal(getattr(params, f), getattr(again, f)) for f in ("mix", "patch", "lam", "cells"))
    first = mixer.apply_params(x, torch.arange(6), z, params)
    second = mixer.apply_params(x, torch.arange(6), z, params)
    assert torch.equal(first.images, second.images)
    assert torch.equal(mixer(x, torch.arange(6), partner=z, generator=gen(4)).images, first.images)


def test_hand_made_params() -> None:
    x, z = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    cells = torch.zeros(2, 2, 2, dtype=torch.bool)
    cells[1, 0, 0] = True
    params = PairParams(
        mix=torch.tensor([True, True]), patch=torch.tensor([False, True]), lam=torch.tensor([0.3, 0.9]), cells=cells
    )
    out = PairMix().apply_params(x, torch.tensor([7, 8]), z, params)
    assert torch.allclose(out.images[0], torch.full((1, 4, 4), 0.3))
    assert out.images[1, 0, :2, :2].sum() == 0
    assert out.images[1].sum() == 12
    assert out.lam.tolist() == pytest.approx([0.3, 0.75])
    assert out.kind.tolist() == [KIND_PIXEL, KIND_PATCH]
    assert out.targets.tolist() == [7, 8]


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 7),
    channels=st.sampled_from([1, 3]),
    height=st.integers(1, 19),
    width=st.integers(1, 19),
    grid=st.integers(1, 6),
    dtype=st.sampled_from([torch.uint8, torch.float32, torch.float16, torch.float64]),
    mode=st.sampled_from(["pixel", "patch", "both"]),
    seed=st.integers(0, 2**31),
)
def test_properties(batch: int, channels: int, height: int, width: int, grid: int, dtype: torch.dtype,
                    mode: str, seed: int) -> None:  # fmt: skip
    g = gen(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (batch, channels, height, width), generator=g, dtype=torch.uint8)
        z = torch.randint(0, 256, (batch, channels, height, width), generator=g, dtype=torch.uint8)
    else:
        x = torch.rand(batch, channels, height, width, generator=g).to(dtype)
        z = torch.rand(batch, channels, height, width, generator=g).to(dtype)
    mixer = PairMix(mode=mode, p=1.0, grid=grid)  # type: ignore[arg-type]
    state = g.get_state()
    out = mixer(x, torch.zeros(batch, dtype=torch.long), partner=z, generator=g)
    assert out.images.shape == x.shape
    assert out.images.dtype == dtype
    low, high = torch.minimum(x, z).float(), torch.maximum(x, z).float()
    tolerance = 0.51 if dtype == torch.uint8 else 1e-2  # rounding to the dtype
    assert (out.images.float() >= low - tolerance).all()
    assert (out.images.float() <= high + tolerance).all()
    assert ((out.lam >= 0) & (out.lam <= 1)).all()
    # Replay the same draw: the same images; then apply it to real = 1, partner = 0, where each output pixel is
    # that pixel's share of the real image, so their mean is the realised lambda of each sample.
    params = mixer.sample(batch, torch.Generator().set_state(state))
    replayed = mixer.apply_params(x, torch.zeros(batch, dtype=torch.long), z, params)
    assert torch.equal(replayed.images, out.images)
    ones = torch.ones(batch, 1, height, width, dtype=torch.float64)
    share = mixer.apply_params(ones, torch.zeros(batch), torch.zeros_like(ones), params).images.mean(dim=(1, 2, 3))
    assert torch.allclose(out.lam.double(), share, atol=1e-6)
    assert ((out.kind == KIND_PATCH) | (out.kind == KIND_PIXEL)).all()


def test_soft_targets_weigh_the_labels_by_the_realised_lambda() -> None:
    x = torch.ones(2, 3, 4, 4)
    mixer = PairMix(mode="pixel", p=1.0, soft_targets=True, num_classes=3)
    out = mixer(x, torch.tensor([0, 1]), partner=torch.zeros_like(x), partner_y=torch.tensor([2, 1]), generator=gen())
    lam = out.lam
    assert torch.allclose(out.targets[0], torch.tensor([lam[0], 0, 1 - lam[0]]))
    assert torch.allclose(out.targets[1], torch.tensor([0.0, 1.0, 0.0]))


def test_rho_fixes_the_cell_probability() -> None:
    assert not sample_cells(4, 5, torch.zeros(4), gen()).any()
    assert sample_cells(4, 5, torch.ones(4), gen()).all()


def _torchvision_draw(theirs: torch.nn.Module, seed: int) -> float:
    """The lambda that torchvision's ``make_params`` draws first after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    alpha = torch.tensor([theirs.alpha])
    return float(torch.distributions.Beta(alpha, alpha).sample(()))


@pytest.mark.parametrize(("height", "width"), [(32, 24), (7, 13), (224, 224), (1, 5)])
@pytest.mark.parametrize("seed", range(6))
def test_cutmix_box_is_torchvisions_box_for_the_same_random_state(height: int, width: int, seed: int) -> None:
    from torchvision.transforms import v2

    theirs = v2.CutMix(num_classes=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        expected = theirs.make_params([torch.zeros(2, 3, height, width)])
        lam = _torchvision_draw(theirs, seed)  # leaves torch's generator where make_params draws the centre from
        box = cutmix_box(lam, height, width)
    assert box == expected["box"]
    x1, y1, x2, y2 = box
    assert 1 - (x2 - x1) * (y2 - y1) / (height * width) == pytest.approx(expected["lam_adjusted"])


def test_cutmix_matches_torchvision_v2_on_the_same_draw() -> None:
    from torchvision.transforms import v2

    x = torch.rand(5, 3, 32, 24, generator=gen(5))
    y = torch.tensor([0, 1, 2, 3, 4])
    theirs = v2.CutMix(num_classes=5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        params = {**theirs.make_params([x]), "labels": y, "batch_size": 5}
        lam = _torchvision_draw(theirs, 11)
    out = CutMix(num_classes=5).apply_params(x, y, BatchParams(lam, params["box"]))
    assert torch.equal(out.images, theirs.transform(x, params))
    assert torch.allclose(out.targets, theirs.transform(y, params))
    assert out.lam.tolist() == pytest.approx([params["lam_adjusted"]] * 5)
    assert cutmix_apply(x, params["box"])[1] == pytest.approx(params["lam_adjusted"])


def _after_one_beta_draw(generator: torch.Generator) -> torch.Generator:
    sample_beta(1, 1.0, generator)
    return generator


def test_cutmix_module_draws_lambda_then_the_box_from_the_generator() -> None:
    x, y = torch.rand(4, 3, 16, 12, generator=gen(1)), torch.tensor([0, 1, 2, 0])
    mixer = CutMix(num_classes=3)
    params = mixer.sample(16, 12, gen(9))
    assert params.box == cutmix_box(params.lam, 16, 12, _after_one_beta_draw(gen(9)))
    out = mixer(x, y, generator=gen(9))
    assert torch.equal(out.images, mixer.apply_params(x, y, params).images)
    assert torch.allclose(out.targets.sum(1), torch.ones(4))


def test_mixup_matches_torchvision_v2_for_the_same_lambda() -> None:
    from torchvision.transforms import v2

    x = torch.rand(4, 3, 8, 8, generator=gen(6))
    y = torch.tensor([0, 1, 2, 3])
    ours = MixUp(num_classes=4)
    lam = ours.sample(8, 8, gen(7)).lam  # the lambda our module will draw from the same generator state
    out = ours(x, y, generator=gen(7))
    params = {"lam": lam, "labels": y, "batch_size": 4}
    theirs = v2.MixUp(num_classes=4)
    assert torch.allclose(out.images, theirs.transform(x, params), atol=1e-6)
    assert torch.allclose(out.targets, theirs.transform(y, params), atol=1e-6)
    assert out.lam.tolist() == pytest.approx([lam] * 4)
    assert (out.kind == KIND_BATCH).all()
    assert 0.0 < lam < 1.0
    assert lam != pytest.approx(0.5)  # a draw that tells lambda from 1 - lambda


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_batch_mixers_need_num_classes_when_built(name: str) -> None:
    with pytest.raises(ValueError, match="num_classes") as info:
        make_mixer(name)
    assert isinstance(info.value, ConfigError)
    with pytest.raises(ConfigError, match="num_classes"):
        PairMix(soft_targets=True)


def test_substitute_replaces_with_the_partner_and_keeps_the_label() -> None:
    x, z = torch.ones(6, 3, 4, 4), torch.zeros(6, 3, 4, 4)
    out = make_mixer("substitute", p=1.0)(
        x, torch.arange(6), partner=z, has_partner=torch.tensor([1, 1, 1, 0, 0, 1]).bool()
    )
    assert out.images.sum(dim=(1, 2, 3)).tolist() == [0, 0, 0, 48, 48, 0]
    assert out.targets.tolist() == list(range(6))
    none = make_mixer("substitute", p=0.0)(x, torch.arange(6), partner=z)
    assert torch.equal(none.images, x)


def _collated(batch: int, generator: torch.Generator) -> PairBatch:
    """A collated batch as :func:`collate_pairs` makes it (the last sample has no partner)."""
    samples = []
    for i in range(batch):
        image = torch.randint(0, 256, (3, 9, 11), generator=generator, dtype=torch.uint8)
        partner = torch.randint(0, 256, (3, 9, 11), generator=generator, dtype=torch.uint8)
        has = i < batch - 1 or batch == 1
        samples.append((image, i % 3, partner if has else image, has, PARTNER_OWN if has else PARTNER_NONE))
    return collate_pairs(samples)


@pytest.mark.parametrize("name", MIXERS.names())
def test_every_mixer_takes_the_collated_batch_and_unpacks_like_torchvision(name: str) -> None:
    mixer = make_mixer(name, num_classes=3) if name in ("mixup", "cutmix") else make_mixer(name)
    for batch in (1, 3):
        collated = _collated(batch, gen(batch))
        out = mixer(**collated, generator=gen(batch))
        assert isinstance(out, MixOutput)
        images, targets = out
        assert images is out.images
        assert targets is out.targets
        assert images.shape == collated["x"].shape
        assert images.dtype == torch.uint8
        assert out.lam.shape == out.kind.shape == (batch,)
        assert targets.shape[0] == batch


@pytest.mark.parametrize(("height", "width", "grid"), [(8, 12, 4), (224, 224, 4), (9, 12, 3), (7, 5, 2)])
def test_upsampling_fast_path_equals_the_index_rule(height: int, width: int, grid: int) -> None:
    values = torch.rand(3, grid, grid, generator=gen())
    rows = torch.arange(height) * grid // height
    cols = torch.arange(width) * grid // width
    assert torch.equal(upsample_cells(values, height, width), values[:, rows][:, :, cols].unsqueeze(1))


@pytest.mark.parametrize(("size", "grid"), [(10, 4), (7, 3), (224, 4), (5, 5), (3, 6)])
def test_cell_i_starts_at_ceil_i_size_over_grid_as_documented(size: int, grid: int) -> None:
    values = torch.arange(grid * grid, dtype=torch.float32).reshape(1, grid, grid)
    column = upsample_cells(values, size, size)[0, 0, :, 0] / grid  # the cell row of each pixel row
    for i in range(grid):
        rows = (column == i).nonzero().flatten().tolist()
        assert rows == list(range(-(-i * size // grid), -(-(i + 1) * size // grid)))
    cells = torch.zeros(1, grid, grid, dtype=torch.bool)
    cells[0, 0, :] = True  # the first cell row: ceil(size / grid) pixel rows
    assert patch_lambda(cells, size, size).item() == pytest.approx(1 - -(-size // grid) / size)
